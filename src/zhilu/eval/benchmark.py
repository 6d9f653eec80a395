"""A multiple-choice benchmark as configured in ``conf/benchmark/*.yaml``: where, which split, how to prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhilu.errors import ConfigError
from zhilu.eval.loader import CsvLayout, Question
from zhilu.eval.prompts import MCQFormat
from zhilu.eval.subjects import Subject, SubjectTable, groups, load_subjects


@dataclass
class BenchmarkData:
    subjects: list[Subject]
    questions: dict[str, list[Question]]  # per subject, in file order
    shots: dict[str, list[Question]]  # per subject, the first ``shots`` dev rows

    @property
    def num_questions(self) -> int:
        return sum(len(v) for v in self.questions.values())


class Benchmark:
    """Args (``benchmark.*`` on the command line):
        name: ``ceval`` | ``cmmlu`` | ``fineval`` (also the name of the shipped subject metadata).
        data_dir: folder in the official layout.
        split: the split to score (C-Eval ``val``/``test``, CMMLU ``test``, FinEval ``val``/``test_20pct``).
        layout: a :class:`~zhilu.eval.loader.CsvLayout`.
        format: a :class:`~zhilu.eval.prompts.MCQFormat`.
        shots: few-shot examples from ``dev_split`` (0 = zero-shot).
        chat: render prompts with the Llama-3 chat template (instruct models).
        subjects: evaluate only these subjects (default: all).
        limit: evaluate only the first ``limit`` questions of each subject.
        max_length: context budget in tokens (default: the model's ``max_position_embeddings``).
        table: Markdown column header -> group (a category, ``avg``, ``hard``, ``china_specific``).
        weight_by_questions: pool questions in group averages (FinEval) instead of averaging subjects.
        submission: also write ``submission.json`` ``{subject: {id: letter}}`` (C-Eval's format).
    """

    def __init__(
        self,
        name: str,
        data_dir: str,
        layout: CsvLayout,
        format: MCQFormat,
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
    ) -> None:
        if shots < 0:
            raise ConfigError(f"benchmark.shots={shots}: must be >= 0")
        if limit is not None and limit < 1:
            raise ConfigError(f"benchmark.limit={limit}: must be >= 1 (or null for all questions)")
        if max_length is not None and max_length < 16:
            raise ConfigError(f"benchmark.max_length={max_length}: too small")
        self.name = name
        self.data_dir = str(data_dir)
        self.layout = layout
        self.format = format
        self.split = split
        self.dev_split = dev_split
        self.shots = int(shots)
        self.chat = bool(chat)
        self.subject_names = [str(s) for s in subjects] if subjects else None
        self.limit = limit
        self.max_length = max_length
        self.table = dict(table) if table else {}
        self.weight_by_questions = weight_by_questions
        self.submission = submission
        self.meta: SubjectTable = load_subjects(metadata or name)
        self.selected = self.meta.select(self.subject_names)  # validates names early
        unknown = [v for v in self.table.values() if v not in self.groups()]
        if unknown:
            raise ConfigError(f"benchmark.table: unknown group(s) {unknown} (known: {', '.join(self.groups())})")

    def groups(self) -> dict[str, list[str]]:
        return groups(self.selected, self.meta.categories)

    def load(self) -> BenchmarkData:
        """Read every selected subject's questions (and dev shots); bad files/rows raise ``DataError``."""
        questions: dict[str, list[Question]] = {}
        shots: dict[str, list[Question]] = {}
        for subject in self.selected:
            rows = self.layout.read(self.data_dir, self.split, subject.name)
            questions[subject.name] = rows[: self.limit] if self.limit else rows
            if self.shots:
                dev = self.layout.read(self.data_dir, self.dev_split, subject.name)
                if len(dev) < self.shots:
                    path = self.layout.path(self.data_dir, self.dev_split, subject.name)
                    raise ConfigError(f"benchmark.shots={self.shots}: {path} has only {len(dev)} examples")
                if any(q.answer is None for q in dev[: self.shots]):
                    raise ConfigError(f"benchmark.dev_split={self.dev_split}: shots need answers")
                shots[subject.name] = dev[: self.shots]
            else:
                shots[subject.name] = []
        return BenchmarkData(subjects=self.selected, questions=questions, shots=shots)

    def describe(self) -> dict[str, Any]:
        return {"benchmark": self.name, "data_dir": str(Path(self.data_dir).resolve()), "split": self.split,
                "shots": self.shots, "chat": self.chat, "subjects": len(self.selected), "limit": self.limit}
