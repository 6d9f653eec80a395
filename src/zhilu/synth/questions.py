"""Question sets for self-evolution: multiple choice (C-Eval/CMMLU/FinEval CSV, or JSONL) or open.

- ``.csv``: C-Eval / CMMLU / FinEval columns ``question``/``Question``, ``A``..``D``, ``answer``/``Answer``.
- ``.jsonl``: ``{"id"?, "question", "choices": {"A": ...} | [...] | A/B/C/D fields, "answer"?, "subject"?}``
  (multiple choice when there are choices, else open), or chat rows ``{"messages": [...]}`` whose
  first user turn is an open question (the first assistant turn is kept as the reference answer).
- a folder: every ``.csv`` / ``.jsonl`` file in it, sorted by name.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from zhilu.data.formats import numbered_rows
from zhilu.errors import DataError
from zhilu.utils.jsonl import read_text

LETTERS = "ABCDEFGHIJ"


@dataclass
class Question:
    id: str
    text: str
    choices: dict[str, str] | None = None  # letter -> option text (multiple choice)
    answer: str | None = None  # the gold letter, or a reference answer for open questions
    subject: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def is_mcq(self) -> bool:
        return bool(self.choices)

    def query(self) -> str:
        """The search query: the question, and the options for multiple choice."""
        if not self.choices:
            return self.text
        return self.text + "\n" + " ".join(self.choices.values())

    def display(self) -> str:
        """The question as a user would ask it (options on their own lines)."""
        if not self.choices:
            return self.text
        return self.text + "\n" + "\n".join(f"{k}. {v}" for k, v in self.choices.items())


def _from_csv(path: Path) -> list[Question]:
    out = []
    with io.StringIO(read_text(path), newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.lower(): c for c in reader.fieldnames or [] if c}
        if "question" not in cols:
            raise DataError(f"{path}: no 'question' column (expected C-Eval/CMMLU columns)")
        letters = [L for L in LETTERS if L in (reader.fieldnames or [])]
        if len(letters) < 2:
            raise DataError(f"{path}: needs option columns A, B, ...")
        for n, row in enumerate(reader, start=2):
            text = (row.get(cols["question"]) or "").strip()
            if not text:
                raise DataError(f"{path}:{n}: empty question")
            ans = (row.get(cols.get("answer", ""), "") or "").strip().upper() or None
            rid = row.get(cols.get("id", ""), "") or row.get("", "") or str(n - 2)
            out.append(Question(f"{path.stem}:{rid}", text, {L: (row.get(L) or "").strip() for L in letters},
                                ans if ans in letters else None, path.stem.removesuffix("_val").removesuffix("_dev")
                                .removesuffix("_test")))
    return out


def _from_jsonl(path: Path) -> list[Question]:
    out = []
    for n, row, err in numbered_rows(path)[0]:
        if err is not None:
            raise DataError(f"{path}:{n}: {err}")
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: row is not a JSON object")
        qid = str(row.get("id", f"{path.stem}:{n}"))
        if isinstance(row.get("messages"), list):
            turns = [m for m in row["messages"] if isinstance(m, dict)]
            user = next((m.get("content") for m in turns if m.get("role") == "user"), None)
            ref = next((m.get("content") for m in turns if m.get("role") == "assistant"), None)
            if not isinstance(user, str) or not user.strip():
                raise DataError(f"{path}:{n}: a chat row without a user turn")
            out.append(Question(qid, user.strip(), None, ref, str(row.get("subject", ""))))
            continue
        text = row.get("question")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{n}: expected a 'question' string (or chat 'messages')")
        choices = row.get("choices")
        if isinstance(choices, list):
            choices = {LETTERS[i]: str(c) for i, c in enumerate(choices)}
        elif choices is None and all(L in row for L in "AB"):
            choices = {L: str(row[L]) for L in LETTERS if L in row}
        if choices is not None and (not isinstance(choices, dict) or len(choices) < 2):
            raise DataError(f"{path}:{n}: 'choices' must be a list or a {{letter: option}} object of 2+ options")
        ans = row.get("answer")
        if choices and ans is not None and str(ans).strip().upper() not in choices:
            raise DataError(f"{path}:{n}: answer {ans!r} is not one of the choices {list(choices)}")
        out.append(Question(qid, text.strip(), {str(k): str(v) for k, v in choices.items()} if choices else None,
                            str(ans).strip().upper() if choices and ans is not None else ans,
                            str(row.get("subject", ""))))
    return out


def load_questions(path: str | Path, limit: int | None = None, shuffle: bool = False, seed: int = 0) -> list[Question]:
    """Questions from a file or folder (see the module docstring); ``limit`` after an optional shuffle."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"questions path {p}: not found")
    files = sorted(f for f in p.rglob("*") if f.suffix in (".csv", ".jsonl")) if p.is_dir() else [p]
    questions: list[Question] = []
    for f in files:
        if f.suffix == ".csv":
            questions += _from_csv(f)
        elif f.suffix in (".jsonl", ".json"):
            questions += _from_jsonl(f)
        else:
            raise DataError(f"questions file {f}: expected .csv or .jsonl")
    if not questions:
        raise DataError(f"questions path {p}: no questions")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"questions path {p}: duplicate question id {dup!r}")
    if shuffle:
        random.Random(seed).shuffle(questions)
    return questions[:limit] if limit else questions
