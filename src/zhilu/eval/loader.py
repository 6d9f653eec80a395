"""Read multiple-choice benchmark files, validating every row.

Official layouts:

- C-Eval (https://github.com/hkust-nlp/ceval, data ``ceval-exam.zip``): ``{split}/{subject}_{split}.csv``
  with header ``id,question,A,B,C,D,answer[,explanation]``; ``test/`` has no ``answer`` column.
- CMMLU (https://github.com/haonan-li/CMMLU, ``data/``): ``{split}/{subject}.csv`` with header
  ``,Question,A,B,C,D,Answer`` (the first, unnamed column is the row index; the official loader
  reads it with ``pd.read_csv(path, header=0, index_col=0)``).
- FinEval (https://github.com/SUFE-AIFLM-Lab/FinEval): the C-Eval layout; its 20% test subset is
  ``test_20pct/{subject}_test_selected.csv``.

Any folder (``benchmark=mcq``): the same CSV layouts with 2 to 26 option columns ``A, B, ...``
(:class:`CsvLayout` with ``min_options: 2``), or JSON / JSON Lines questions with a configurable
field mapping (:class:`JsonLayout`), e.g. CFLUE's knowledge set, whose ``choices`` is a string
holding a Python dict literal and whose ``task`` says 单项选择题 / 多项选择题 / 判断题.

A question has 2..N options (letters ``A``..), one answer letter (``single``), several
(``multi``, stored sorted: ``"ABD"``) or is a true/false question (``tf``: two options such as
对/错). Errors name the file and the line (JSON arrays: the item) where the bad row starts;
duplicate question ids and option columns a benchmark does not have are errors, never ignored.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from zhilu.errors import ConfigError, DataError
from zhilu.utils.jsonl import read_text

LETTERS = ("A", "B", "C", "D")  # the four letters of C-Eval / CMMLU / FinEval
ALL_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
SINGLE, MULTI, TRUE_FALSE = "single", "multi", "tf"
QTYPES = (SINGLE, MULTI, TRUE_FALSE)
# two-option questions whose options are these (in either order) are true/false questions
TRUE_FALSE_OPTIONS = ({"对", "错"}, {"正确", "错误"}, {"是", "否"}, {"√", "×"}, {"True", "False"}, {"true", "false"})
_ANSWER_SEPARATORS = re.compile(r"[\s,，、;；/|和]+")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question. ``answer`` is ``None`` on splits released without answers;
    for a multi-answer question it holds every correct letter, sorted (``"ABD"``)."""

    subject: str
    qid: str
    question: str
    options: tuple[str, ...]
    answer: str | None
    source: str = ""  # "file:line"
    qtype: str = SINGLE  # single | multi | tf

    @property
    def letters(self) -> tuple[str, ...]:
        return ALL_LETTERS[: len(self.options)]

    @property
    def multi(self) -> bool:
        return self.qtype == MULTI

    def option(self, letter: str) -> str:
        return self.options[ALL_LETTERS.index(letter)]


def question_type(options: tuple[str, ...], answer: str | None, declared: str | None = None) -> str:
    """``declared`` if given, else ``multi`` for several answer letters, ``tf`` for two options that
    read true/false (对/错, 正确/错误, ...), else ``single``."""
    if declared:
        return declared
    if answer is not None and len(answer) > 1:
        return MULTI
    if len(options) == 2 and {o.strip() for o in options} in TRUE_FALSE_OPTIONS:
        return TRUE_FALSE
    return SINGLE


def parse_answer(raw: Any, letters: tuple[str, ...], where: str, multi_ok: bool) -> str:
    """Answer letters from ``"B"``, ``"ABD"``, ``"A、C"``, ``["A", "C"]`` or a 0-based index, validated
    against the question's own letters; returned sorted and without duplicates."""
    if isinstance(raw, bool) or raw is None:
        raise DataError(f"{where}: answer {raw!r} is not one of {', '.join(letters)}")
    if isinstance(raw, int):
        if not 0 <= raw < len(letters):
            raise DataError(f"{where}: answer index {raw} is outside the {len(letters)} options")
        return letters[raw]
    if isinstance(raw, (list, tuple)):
        parts = [str(x).strip() for x in raw]
    else:
        text = str(raw).strip()
        parts = [text] if len(text) <= 1 or not multi_ok else list(_ANSWER_SEPARATORS.sub("", text))
    if not parts or any(p not in letters for p in parts):
        raise DataError(f"{where}: answer {raw!r} is not one of {', '.join(letters)}")
    got = sorted(set(parts))
    if len(got) > 1 and not multi_ok:
        raise DataError(f"{where}: answer {raw!r} has several letters (this benchmark has single-answer questions)")
    return "".join(got)


def _read_text(path: Path) -> str:
    """The file as text (UTF-8, BOM allowed); a decoding error names the line and byte offset with
    some context (:func:`zhilu.utils.jsonl.read_text`, the project's one reader)."""
    return read_text(path)


class _Ids:
    """Question ids seen in one file: a repeated id is an error naming both lines."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    def check(self, qid: str, where: str) -> None:
        if qid in self.first:
            raise DataError(f"{where}: duplicate question id {qid!r} (first at {self.first[qid]})")
        self.first[qid] = where.rsplit(":", 1)[-1]


def _pattern_regex(pattern: str, split: str) -> tuple[str, re.Pattern]:
    """A glob and a regex that recover ``{subject}`` from a file path matching ``pattern``."""
    filled = pattern.replace("{split}", split)
    glob = filled.replace("{subject}", "*")
    regex = re.compile("^" + re.escape(filled).replace(re.escape("{subject}"), "(?P<subject>.+)") + "$")
    return glob, regex


def discover_subjects(data_dir: str | Path, pattern: str, split: str) -> list[str]:
    """Subject names (file stems, any script) of the files matching ``pattern``, sorted (as CMMLU's
    ``run_eval`` lists ``test/``)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"benchmark.data_dir={data_dir}: no such directory")
    glob, regex = _pattern_regex(pattern, split)
    names = set()
    for p in root.glob(glob):
        m = regex.match(p.relative_to(root).as_posix())
        if m and p.is_file():
            names.add(m.group("subject"))
    if not names:
        raise DataError(f"{root}: no subject files matching {pattern.replace('{split}', split)!r}")
    return sorted(names)


@dataclass
class CsvLayout:
    """Where a subject's CSV lives and which columns hold what.

    Args:
        pattern: file path under the data dir, with ``{split}`` and ``{subject}``.
        split_patterns: per-split exceptions to ``pattern`` (e.g. FinEval's ``test_20pct``).
        id_column: column of the question id (CMMLU: ``""``, its unnamed index column).
        question_column, answer_column: column names (C-Eval lower case, CMMLU capitalised).
        min_options, max_options: option columns ``A, B, ...`` the benchmark has (C-Eval / CMMLU /
            FinEval: exactly 4; ``benchmark=mcq``: 2 to 26, and a row may leave its last options empty).
        multi_answer: accept several answer letters (``AC``, ``A,C``, ``A、C``).
        type_column: optional column naming the question type; ``type_values`` maps its values to
            ``single`` / ``multi`` / ``tf`` (default: inferred from the answer and options).
        require_answer: a file without the answer column is an error (else: an answer-less split,
            like C-Eval's ``test/``).
    """

    pattern: str = "{split}/{subject}_{split}.csv"
    split_patterns: dict[str, str] = field(default_factory=dict)
    id_column: str = "id"
    question_column: str = "question"
    answer_column: str = "answer"
    min_options: int = 4
    max_options: int = 4
    multi_answer: bool = False
    type_column: str | None = None
    type_values: dict[str, str] = field(default_factory=dict)
    require_answer: bool = False
    #: splits released without answers (C-Eval's test); on any other split a file without the answer
    #: column is refused even without require_answer, since every question would score as unanswered
    unanswered_splits: tuple[str, ...] = ("test",)

    def __post_init__(self) -> None:
        if not 2 <= self.min_options <= self.max_options <= len(ALL_LETTERS):
            raise ConfigError(f"layout: need 2 <= min_options ({self.min_options}) <= max_options "
                              f"({self.max_options}) <= {len(ALL_LETTERS)}")

    def path(self, data_dir: str | Path, split: str, subject: str) -> Path:
        pattern = (self.split_patterns or {}).get(split, self.pattern)
        return Path(data_dir) / pattern.format(split=split, subject=subject)

    def subjects(self, data_dir: str | Path, split: str) -> list[str]:
        return discover_subjects(data_dir, (self.split_patterns or {}).get(split, self.pattern), split)

    def has_split(self, split: str) -> bool:
        return "{split}" in (self.split_patterns or {}).get(split, self.pattern) or split in (self.split_patterns or {})

    def read(self, data_dir: str | Path, split: str, subject: str) -> list[Question]:
        path = self.path(data_dir, split, subject)
        if not path.is_file():
            where = Path(data_dir)
            hint = "" if where.is_dir() else f" (data dir {where} does not exist)"
            raise DataError(f"{path}: missing {split} file for subject {subject!r}{hint}")
        text = _read_text(path)
        try:
            return self._rows(csv.reader(io.StringIO(text, newline="")), path, subject, split)
        except csv.Error as exc:
            raise DataError(f"{path}: malformed CSV ({exc})") from None

    def _option_columns(self, header: list[str], path: Path) -> list[str]:
        present = [x for x in ALL_LETTERS if x in header]
        run = list(ALL_LETTERS[: len(present)])
        if present != run:  # a gap: A, B, D
            missing = [x for x in ALL_LETTERS[: ALL_LETTERS.index(present[-1])] if x not in header]
            raise DataError(f"{path}:1: header {','.join(header)} lacks column(s) {', '.join(missing)}")
        if len(run) > self.max_options:
            extra = ", ".join(run[self.max_options:])
            raise DataError(f"{path}:1: option column(s) {extra} beyond this benchmark's "
                            f"{ALL_LETTERS[0]}-{ALL_LETTERS[self.max_options - 1]} (benchmark=mcq reads any number)")
        return run

    def _rows(self, reader, path: Path, subject: str, split: str | None = None) -> list[Question]:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (expected a header row)")
        header = [h.strip() for h in header]
        options = self._option_columns(header, path)
        need = [self.id_column, self.question_column, *ALL_LETTERS[: max(self.min_options, len(options))]]
        missing = [c or "(unnamed index)" for c in need if c not in header]
        if missing:
            raise DataError(f"{path}:1: header {','.join(header)} lacks column(s) {', '.join(missing)}")
        col = {name: header.index(name) for name in need}
        answer_col = header.index(self.answer_column) if self.answer_column in header else None
        if answer_col is None and self.require_answer:
            raise DataError(f"{path}:1: header {','.join(header)} lacks the answer column {self.answer_column!r}")
        if answer_col is None and split is not None and split not in tuple(self.unanswered_splits or ()):
            raise DataError(f"{path}:1: header {','.join(header)} lacks the answer column {self.answer_column!r} "
                            f"(the {split} split is scored against its answers)")
        type_col = header.index(self.type_column) if self.type_column and self.type_column in header else None
        out: list[Question] = []
        ids = _Ids()
        line = reader.line_num + 1  # the line where the next record starts
        for row in reader:
            where = f"{path}:{line}"
            line = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
            qid = row[col[self.id_column]].strip()
            opts = [row[col[x]] for x in options]
            if self.min_options < self.max_options:  # a question with fewer options than the file has columns
                while opts and not opts[-1].strip():
                    opts.pop()
                if len(opts) < 2:
                    raise DataError(f"{where}: fewer than two options (question id {qid})")
            for letter, text in zip(ALL_LETTERS, opts):
                if not text.strip():
                    raise DataError(f"{where}: option {letter} is empty (question id {qid})")
            if len(opts) < self.min_options:
                raise DataError(f"{where}: option {ALL_LETTERS[len(opts)]} is empty (question id {qid})")
            if not row[col[self.question_column]].strip():
                raise DataError(f"{where}: the question text is empty")
            ids.check(qid, where)
            letters = ALL_LETTERS[: len(opts)]
            answer = None
            if answer_col is not None:  # FinEval has one "D " in val/
                answer = parse_answer(row[answer_col], letters, where, self.multi_answer)
            declared = None
            if type_col is not None:
                declared = _declared_type(row[type_col], self.type_values, where)
            out.append(Question(subject=subject, qid=qid, question=row[col[self.question_column]],
                                options=tuple(opts), answer=answer, source=where,
                                qtype=question_type(tuple(opts), answer, declared)))
        if not out:
            raise DataError(f"{path}: no questions")
        return out


def _declared_type(value: Any, type_values: dict[str, str], where: str) -> str | None:
    value = str(value).strip() if value is not None else ""
    if not value:
        return None
    mapped = (type_values or {}).get(value, value)
    if mapped not in QTYPES:
        known = ", ".join(sorted(type_values or {})) or ", ".join(QTYPES)
        raise DataError(f"{where}: question type {value!r} is not one of {known}")
    return mapped


def parse_choices(raw: Any, where: str) -> tuple[str, ...]:
    """Options from a list, a ``{"A": ..., "B": ...}`` dict, or a string holding either as JSON or as
    a Python literal (CFLUE: ``"{'A': '对', 'B': '错'}"``; read with ``ast.literal_eval``, never ``eval``)."""
    value = raw
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text)
        except ValueError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise DataError(f"{where}: choices {raw!r} is neither a list nor a dict literal") from None
    if isinstance(value, dict):
        keys = [str(k).strip() for k in value]
        if keys != list(ALL_LETTERS[: len(keys)]):
            raise DataError(f"{where}: choice keys {', '.join(keys)} are not A, B, ... in order")
        value = list(value.values())
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: choices must be a list or a dict, got {type(value).__name__}")
    opts = tuple("" if v is None else str(v) for v in value)
    for letter, text in zip(ALL_LETTERS, opts):
        if not text.strip():
            raise DataError(f"{where}: option {letter} is empty")
    if len(opts) < 2:
        raise DataError(f"{where}: fewer than two options")
    if len(opts) > len(ALL_LETTERS):
        raise DataError(f"{where}: {len(opts)} options (at most {len(ALL_LETTERS)})")
    return opts


@dataclass
class JsonLayout:
    """Questions in JSON Lines (one object per line) or JSON (an array of objects) files.

    Args:
        pattern: file path under the data dir with ``{split}`` and ``{subject}`` (the subject is the
            file stem), or, with ``subject_field``, a path or glob (``knowledge.json``) whose rows
            name their subject.
        subject_field: row field holding the subject (CFLUE: ``名称``); default: the file stem.
        id_field: row field holding the question id (default: the row's line in a JSON Lines file,
            its index in a JSON array).
        question_field, answer_field: field names.
        choices_field: a list, a dict ``{"A": ...}`` or a string holding either (CFLUE); or
        option_fields: one field per option (``[A, B, C, D, E]``; empty or missing trailing ones dropped).
        type_field, type_values: the question type and how its values map to single / multi / tf
            (CFLUE: ``task`` with 单项选择题 / 多项选择题 / 判断题); default: inferred.
        require_answer: a row without an answer is an error.
    """

    pattern: str = "{split}/{subject}.jsonl"
    split_patterns: dict[str, str] = field(default_factory=dict)
    subject_field: str | None = None
    id_field: str | None = None
    question_field: str = "question"
    choices_field: str | None = "choices"
    option_fields: list[str] | None = None
    answer_field: str = "answer"
    type_field: str | None = None
    type_values: dict[str, str] = field(default_factory=dict)
    require_answer: bool = False

    def __post_init__(self) -> None:
        self._cache: dict[Path, list[tuple[str, dict]]] = {}
        if not self.choices_field and not self.option_fields:
            raise ConfigError("layout: set choices_field or option_fields")

    def _pattern(self, split: str) -> str:
        return (self.split_patterns or {}).get(split, self.pattern)

    def has_split(self, split: str) -> bool:
        return "{split}" in self._pattern(split) or split in (self.split_patterns or {})

    def path(self, data_dir: str | Path, split: str, subject: str) -> Path:
        return Path(data_dir) / self._pattern(split).format(split=split, subject=subject)

    def _files(self, data_dir: str | Path, split: str) -> list[Path]:
        root = Path(data_dir)
        if not root.is_dir():
            raise ConfigError(f"benchmark.data_dir={data_dir}: no such directory")
        glob = self._pattern(split).replace("{split}", split)
        files = sorted(p for p in root.glob(glob) if p.is_file())
        if not files:
            raise DataError(f"{root}: no files matching {glob!r}")
        return files

    def subjects(self, data_dir: str | Path, split: str) -> list[str]:
        if not self.subject_field:
            return discover_subjects(data_dir, self._pattern(split), split)
        seen: dict[str, None] = {}
        for path in self._files(data_dir, split):
            for where, row in self._records(path):
                seen.setdefault(self._subject_of(row, where), None)
        return list(seen)

    def _subject_of(self, row: dict, where: str) -> str:
        value = row.get(self.subject_field)
        if value is None or not str(value).strip():
            raise DataError(f"{where}: no subject in field {self.subject_field!r}")
        return str(value).strip()

    def _records(self, path: Path) -> list[tuple[str, dict]]:
        if path in self._cache:
            return self._cache[path]
        text = _read_text(path)
        out: list[tuple[str, dict]] = []
        stripped = text.lstrip()
        if stripped.startswith("["):  # a JSON array (CFLUE's knowledge.json)
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise DataError(f"{path}:{getattr(exc, 'lineno', 1)}: malformed JSON ({exc})") from None
            for i, item in enumerate(items):
                out.append((f"{path}:[{i}]", item))
        else:
            for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 etc. stay inside a row
                line = line.removesuffix("\r")
                if not line.strip():
                    continue
                try:
                    out.append((f"{path}:{n}", json.loads(line)))
                except ValueError as exc:
                    raise DataError(f"{path}:{n}: malformed JSON ({exc})") from None
        for where, row in out:
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        self._cache[path] = out
        return out

    def _rows(self, data_dir, split: str, subject: str) -> Iterator[tuple[str, dict]]:
        if not self.subject_field:
            path = self.path(data_dir, split, subject)
            if not path.is_file():
                raise DataError(f"{path}: missing {split} file for subject {subject!r}")
            yield from self._records(path)
            return
        for path in self._files(data_dir, split):
            for where, row in self._records(path):
                if self._subject_of(row, where) == subject:
                    yield where, row

    def read(self, data_dir: str | Path, split: str, subject: str) -> list[Question]:
        out: list[Question] = []
        ids = _Ids()
        for where, row in self._rows(data_dir, split, subject):
            question = row.get(self.question_field)
            if question is None or not str(question).strip():
                raise DataError(f"{where}: the question text is empty (field {self.question_field!r})")
            if self.option_fields:
                opts = [row.get(f) for f in self.option_fields]
                while opts and (opts[-1] is None or not str(opts[-1]).strip()):
                    opts.pop()
                options = parse_choices(list(opts), where)
            else:
                if self.choices_field not in row:
                    raise DataError(f"{where}: no {self.choices_field!r} field")
                options = parse_choices(row[self.choices_field], where)
            if self.id_field:
                if row.get(self.id_field) is None or not str(row[self.id_field]).strip():
                    raise DataError(f"{where}: no question id (field {self.id_field!r})")
                qid = str(row[self.id_field]).strip()
            else:  # the row's place in its file: the JSON Lines line, the JSON array item
                qid = where.rsplit(":", 1)[-1].strip("[]")
            ids.check(qid, where)
            declared = _declared_type(row.get(self.type_field), self.type_values, where) if self.type_field else None
            letters = ALL_LETTERS[: len(options)]
            answer = None
            if self.answer_field in row and row[self.answer_field] is not None:
                answer = parse_answer(row[self.answer_field], letters, where, multi_ok=True)
            elif self.require_answer:
                raise DataError(f"{where}: no answer (field {self.answer_field!r})")
            qtype = question_type(options, answer, declared)
            if qtype == TRUE_FALSE and len(options) != 2:
                raise DataError(f"{where}: a true/false question needs two options, got {len(options)}")
            if qtype != MULTI and answer is not None and len(answer) > 1:
                raise DataError(f"{where}: answer {answer!r} has several letters but the question type is {qtype}")
            out.append(Question(subject=subject, qid=qid, question=str(question), options=options, answer=answer,
                                source=where, qtype=qtype))
        if not out:
            raise DataError(f"{self.path(data_dir, split, subject)}: no questions for subject {subject!r}")
        return out
