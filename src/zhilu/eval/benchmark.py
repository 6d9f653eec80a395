"""A multiple-choice benchmark as configured in ``conf/benchmark/*.yaml``: where, which split, how to prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhilu.errors import ConfigError
from zhilu.eval.loader import MULTI, QTYPES, SINGLE, TRUE_FALSE, CsvLayout, JsonLayout, Question
from zhilu.eval.prompts import MCQFormat
from zhilu.eval.subjects import (
    AVG,
    HARD,
    Subject,
    SubjectTable,
    folder_subjects,
    groups,
    load_subjects,
    read_categories,
)

def _plain(value):
    """An object as built by ``hydra.utils.instantiate`` without ``_convert_`` (a callback config):
    dataclass instances inside dict parameters arrive as structured ``DictConfig`` nodes."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        return value
    return OmegaConf.to_object(value) if isinstance(value, DictConfig) else value


FOLDER = "folder"  # ``metadata: folder``: subjects from the data folder's files (benchmark=mcq)
TYPE_COLUMNS = {SINGLE: "Single", MULTI: "Multi", TRUE_FALSE: "True/False"}
TYPE_GROUP = "type:{}"  # per-type accuracy, pooled over questions
PARTIAL_GROUP = "type:multi_partial"  # per-option partial credit of the multi-answer questions


@dataclass
class BenchmarkData:
    subjects: list[Subject]
    questions: dict[str, list[Question]]  # per subject, in file order
    shots: dict[str, list[Question]]  # per subject, the first ``shots`` dev rows
    type_shots: dict[str, dict[str, list[Question]]] | None = None  # per subject and question type

    @property
    def num_questions(self) -> int:
        return sum(len(v) for v in self.questions.values())

    def shots_for(self, q: Question) -> list[Question]:
        """The shots of ``q``'s prompt: the first dev rows of its own type when the dev split has
        enough of them (a multi-answer question gets multi-answer examples), else the first rows."""
        by_type = (self.type_shots or {}).get(q.subject, {})
        return by_type.get(q.qtype) or self.shots[q.subject]

    def types(self) -> list[str]:
        present = {q.qtype for qs in self.questions.values() for q in qs}
        return [t for t in QTYPES if t in present]


class Benchmark:
    """Args (``benchmark.*`` on the command line):
        name: ``ceval`` | ``cmmlu`` | ``fineval`` (also the name of the shipped subject metadata), or
            any name for a folder benchmark.
        data_dir: folder in the official layout.
        split: the split to score (C-Eval ``val``/``test``, CMMLU ``test``, FinEval ``val``/``test_20pct``).
        layout: a :class:`~zhilu.eval.loader.CsvLayout` / :class:`~zhilu.eval.loader.JsonLayout`, or
            the name of one of ``layouts`` (``benchmark=mcq``: ``ceval`` | ``cmmlu`` | ``jsonl``).
        prompt_style: the name of one of ``formats`` (``official`` | ``opencompass`` | ``lm_eval``).
        formats: prompt style -> :class:`~zhilu.eval.prompts.MCQFormat`; ``format``: a single one.
        shots: few-shot examples from ``dev_split`` (0 = zero-shot).
        chat: render prompts with the Llama-3 chat template (instruct models).
        subjects: evaluate only these subjects (default: all).
        limit: evaluate only the first ``limit`` questions of each subject.
        max_length: context budget in tokens (default: the model's ``max_position_embeddings``).
        table: Markdown column header -> group (a category, ``avg``, ``hard``, ``china_specific``);
            folder benchmarks build it: categories + Avg (+ Avg(Hard)), or every subject + Average,
            then the accuracy per question type when the data has several.
        weight_by_questions: pool questions in group averages (FinEval) instead of averaging subjects.
        submission: also write ``submission.json`` ``{subject: {id: letter}}`` (C-Eval's format).
        metadata: shipped subject metadata to use (default: ``name``); ``folder``: the subjects are the
            data folder's files (or the layout's ``subject_field`` values), with categories from a
            ``categories.json``/``.yaml`` in the folder or from ``categories``.
        categories: folder benchmarks: ``{categories: {name: [subjects]}, hard: [...], names: {...}}``.
    """

    def __init__(
        self,
        name: str,
        data_dir: str,
        layout: CsvLayout | JsonLayout | str,
        format: MCQFormat | None = None,
        split: str = "val",
        dev_split: str = "dev",
        shots: int = 0,
        chat: bool = False,
        subjects: list[str] | None = None,
        limit: int | None = None,
        max_length: int | None = None,
        table: dict[str, str] | None = None,
        weight_by_questions: bool = False,
        submission: bool = False,
        metadata: str | None = None,
        prompt_style: str = "official",
        formats: dict[str, MCQFormat] | None = None,
        layouts: dict[str, CsvLayout | JsonLayout] | None = None,
        categories: dict[str, Any] | None = None,
    ) -> None:
        if shots < 0:
            raise ConfigError(f"benchmark.shots={shots}: must be >= 0")
        if limit is not None and limit < 1:
            raise ConfigError(f"benchmark.limit={limit}: must be >= 1 (or null for all questions)")
        if max_length is not None and max_length < 16:
            raise ConfigError(f"benchmark.max_length={max_length}: too small")
        self.name = name
        self.data_dir = str(data_dir)
        if isinstance(layout, str):
            if layout not in (layouts or {}):
                known = ", ".join(layouts or {}) or "(none)"
                raise ConfigError(f"benchmark.layout={layout!r}: expected one of {known}")
            layout = layouts[layout]
        self.layout = _plain(layout)
        self.prompt_style = prompt_style
        if formats:
            if prompt_style not in formats:
                raise ConfigError(f"benchmark.prompt_style={prompt_style!r}: {name} has {', '.join(formats)}")
            format = _plain(formats[prompt_style])
        elif prompt_style != "official":
            raise ConfigError(f"benchmark.prompt_style={prompt_style!r}: {name} has official only")
        if format is None:
            raise ConfigError("benchmark.format: missing (or set benchmark.formats)")
        self.format = _plain(format)
        self.split = split
        self.dev_split = dev_split
        self.shots = int(shots)
        self.chat = bool(chat)
        self.subject_names = [str(s) for s in subjects] if subjects else None
        self.limit = limit
        self.max_length = max_length
        self.weight_by_questions = weight_by_questions
        self.submission = submission
        self.folder = (metadata or name) == FOLDER
        if self.folder:
            meta, source = (_plain(categories), "benchmark.categories") if categories else read_categories(data_dir)
            self.meta: SubjectTable = folder_subjects(name, self.layout.subjects(data_dir, split), meta, source)
        else:
            self.meta = load_subjects(metadata or name)
        self.selected = self.meta.select(self.subject_names)  # validates names early
        self.table = dict(table) if table else (self._folder_table() if self.folder else {})
        unknown = [v for v in self.table.values() if v not in self.groups()]
        if unknown:
            raise ConfigError(f"benchmark.table: unknown group(s) {unknown} (known: {', '.join(self.groups())})")
        if self.shots and not self.layout.has_split(dev_split):
            raise ConfigError(f"benchmark.shots={self.shots}: the layout's pattern has no {{split}}, so no "
                              f"{dev_split!r} split to take shots from")

    def _folder_table(self) -> dict[str, str]:
        cats = [c for c, members in self.groups().items() if c in self.meta.categories and members]
        if cats:
            table = {c: c for c in cats}
            table["Avg"] = AVG
            if any(s.hard for s in self.selected):
                table["Avg(Hard)"] = HARD
            return table
        table = {s.name: f"subject:{s.name}" for s in self.selected}
        table["Average"] = AVG
        return table

    def groups(self) -> dict[str, list[str]]:
        out = groups(self.selected, self.meta.categories, self.meta.members)
        if self.folder:
            out.update({f"subject:{s.name}": [s.name] for s in self.selected})
        return out

    def add_type_columns(self, types: list[str]) -> None:
        """Per-type accuracy columns (and the multi-answer partial credit) when the data has
        questions of more than one type or any multi-answer question."""
        if len(types) < 2 and MULTI not in types:
            return
        for t in types:
            self.table[TYPE_COLUMNS[t]] = TYPE_GROUP.format(t)
        if MULTI in types:
            self.table["Multi (per-option)"] = PARTIAL_GROUP

    def load(self) -> BenchmarkData:
        """Read every selected subject's questions (and dev shots); bad files/rows raise ``DataError``."""
        questions: dict[str, list[Question]] = {}
        shots: dict[str, list[Question]] = {}
        type_shots: dict[str, dict[str, list[Question]]] = {}
        for subject in self.selected:
            rows = self.layout.read(self.data_dir, self.split, subject.name)
            questions[subject.name] = rows[: self.limit] if self.limit else rows
            shots[subject.name], type_shots[subject.name] = [], {}
            if self.shots:
                dev = self.layout.read(self.data_dir, self.dev_split, subject.name)
                if len(dev) < self.shots:
                    path = self.layout.path(self.data_dir, self.dev_split, subject.name)
                    raise ConfigError(f"benchmark.shots={self.shots}: {path} has only {len(dev)} examples")
                if any(q.answer is None for q in dev[: self.shots]):
                    raise ConfigError(f"benchmark.dev_split={self.dev_split}: shots need answers")
                shots[subject.name] = dev[: self.shots]
                for t in QTYPES:
                    same = [q for q in dev if q.qtype == t and q.answer is not None]
                    if len(same) >= self.shots:
                        type_shots[subject.name][t] = same[: self.shots]
        data = BenchmarkData(subjects=self.selected, questions=questions, shots=shots, type_shots=type_shots)
        if self.folder:
            self.add_type_columns(data.types())
        return data

    def describe(self) -> dict[str, Any]:
        return {"benchmark": self.name, "data_dir": str(Path(self.data_dir).resolve()), "split": self.split,
                "shots": self.shots, "chat": self.chat, "prompt_style": self.prompt_style,
                "subjects": len(self.selected), "limit": self.limit}
