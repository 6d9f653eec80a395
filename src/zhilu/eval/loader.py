"""Read multiple-choice benchmark CSVs in their official layouts, validating every row.

- C-Eval (https://github.com/hkust-nlp/ceval, data ``ceval-exam.zip``): ``{split}/{subject}_{split}.csv``
  with header ``id,question,A,B,C,D,answer[,explanation]``; ``test/`` has no ``answer`` column.
- CMMLU (https://github.com/haonan-li/CMMLU, ``data/``): ``{split}/{subject}.csv`` with header
  ``,Question,A,B,C,D,Answer`` (the first, unnamed column is the row index; the official loader
  reads it with ``pd.read_csv(path, header=0, index_col=0)``).
- FinEval (https://github.com/SUFE-AIFLM-Lab/FinEval): the C-Eval layout; its 20% test subset is
  ``test_20pct/{subject}_test_selected.csv``.

Errors name the file and the line where the bad row starts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from zhilu.errors import DataError

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question. ``answer`` is ``None`` on splits released without answers."""

    subject: str
    qid: str
    question: str
    options: tuple[str, str, str, str]
    answer: str | None
    source: str = ""  # "file:line"

    def option(self, letter: str) -> str:
        return self.options[LETTERS.index(letter)]


@dataclass
class CsvLayout:
    """Where a subject's CSV lives and which columns hold what.

    Args:
        pattern: file path under the data dir, with ``{split}`` and ``{subject}``.
        split_patterns: per-split exceptions to ``pattern`` (e.g. FinEval's ``test_20pct``).
        id_column: column of the question id (CMMLU: ``""``, its unnamed index column).
        question_column, answer_column: column names (C-Eval lower case, CMMLU capitalised).
    """

    pattern: str = "{split}/{subject}_{split}.csv"
    split_patterns: dict[str, str] = field(default_factory=dict)
    id_column: str = "id"
    question_column: str = "question"
    answer_column: str = "answer"

    def path(self, data_dir: str | Path, split: str, subject: str) -> Path:
        pattern = (self.split_patterns or {}).get(split, self.pattern)
        return Path(data_dir) / pattern.format(split=split, subject=subject)

    def read(self, data_dir: str | Path, split: str, subject: str) -> list[Question]:
        path = self.path(data_dir, split, subject)
        if not path.is_file():
            where = Path(data_dir)
            hint = "" if where.is_dir() else f" (data dir {where} does not exist)"
            raise DataError(f"{path}: missing {split} file for subject {subject!r}{hint}")
        try:
            with path.open(encoding="utf-8-sig", newline="") as f:
                return self._rows(csv.reader(f), path, subject)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise DataError(f"{path}: malformed CSV ({exc})") from None

    def _rows(self, reader, path: Path, subject: str) -> list[Question]:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (expected a header row)")
        header = [h.strip() for h in header]
        need = [self.id_column, self.question_column, *LETTERS]
        missing = [c or "(unnamed index)" for c in need if c not in header]
        if missing:
            raise DataError(f"{path}:1: header {','.join(header)} lacks column(s) {', '.join(missing)}")
        col = {name: header.index(name) for name in need}
        answer_col = header.index(self.answer_column) if self.answer_column in header else None
        out: list[Question] = []
        line = reader.line_num + 1  # the line where the next record starts
        for row in reader:
            where = f"{path}:{line}"
            line = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
            for letter in LETTERS:
                if not row[col[letter]].strip():
                    raise DataError(f"{where}: option {letter} is empty (question id {row[col[self.id_column]]})")
            if not row[col[self.question_column]].strip():
                raise DataError(f"{where}: the question text is empty")
            answer = None
            if answer_col is not None:
                answer = row[answer_col].strip()  # FinEval has one "D " in val/
                if answer not in LETTERS:
                    raise DataError(f"{where}: answer {row[answer_col]!r} is not one of A, B, C, D")
            out.append(Question(subject=subject, qid=row[col[self.id_column]].strip(),
                                question=row[col[self.question_column]],
                                options=tuple(row[col[x]] for x in LETTERS), answer=answer, source=where))
        if not out:
            raise DataError(f"{path}: no questions")
        return out
