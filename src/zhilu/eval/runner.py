"""Evaluate a model on a benchmark and write the run dir's outputs.

Outputs (``write_outputs``): ``predictions.jsonl`` (one line per question), ``subjects.csv``
(accuracy per subject), ``results.json`` (everything, figures in percent), ``table.md`` (the
model card's layout) and, when the benchmark asks for it, ``submission.json`` (C-Eval's
``{subject: {id: letter}}`` upload format, e.g. for the answer-less C-Eval test split).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zhilu.eval.benchmark import Benchmark, BenchmarkData
from zhilu.eval.metrics import SubjectScore, group_scores, render_table
from zhilu.eval.prompts import Prompt, PromptBuilder
from zhilu.eval.scoring import Scored
from zhilu.utils.io import write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    benchmark: Benchmark
    model_name: str
    records: list[dict[str, Any]]
    per_subject: dict[str, SubjectScore]
    groups: dict[str, float | None]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return render_table([(self.model_name, self.groups)], self.benchmark.table)

    def summary(self) -> dict[str, Any]:
        subjects = {s.name: s for s in self.benchmark.selected}
        return {
            **self.benchmark.describe(),
            "model": self.model_name,
            "accuracy": {k: v for k, v in self.groups.items()},
            "table_columns": self.benchmark.table,
            "weight_by_questions": self.benchmark.weight_by_questions,
            "per_subject": {name: {"name_zh": subjects[name].name_zh, "category": subjects[name].category,
                                   "n": sc.n, "scored": sc.scored, "correct": sc.correct,
                                   "accuracy": sc.accuracy}
                            for name, sc in self.per_subject.items()},
            **self.stats,
        }


def context_length(model, benchmark: Benchmark) -> int:
    if benchmark.max_length:
        return int(benchmark.max_length)
    return int(getattr(model.config, "max_position_embeddings", 2048))


def build_prompts(benchmark: Benchmark, data: BenchmarkData, tokenizer, max_length: int) -> list[tuple[Any, Prompt]]:
    builder = PromptBuilder(benchmark.format, tokenizer, max_length, chat=benchmark.chat)
    out = []
    for subject in data.subjects:
        for q in data.questions[subject.name]:
            out.append((q, builder.build(subject, data.shots[subject.name], q)))
    return out


def evaluate(benchmark: Benchmark, model, tokenizer, scorer, model_name: str = "model",
             data: BenchmarkData | None = None, log_every_s: float = 30.0) -> EvalResult:
    """Score every selected question; ``data`` may be passed in to skip re-reading the files."""
    data = data or benchmark.load()
    max_length = context_length(model, benchmark) - getattr(scorer, "reserve_tokens", 0)
    t0 = time.perf_counter()
    pairs = build_prompts(benchmark, data, tokenizer, max_length)
    t_prompts = time.perf_counter() - t0
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] >= log_every_s:
            last[0] = time.perf_counter()
            log.info("%s: %d/%d questions scored", benchmark.name, done, total)

    was_training = model.training
    model.eval()
    t1 = time.perf_counter()
    try:
        scored: list[Scored] = scorer(model, tokenizer, [p.ids for _, p in pairs], [q for q, _ in pairs],
                                      progress=progress)
    finally:
        model.train(was_training)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t_score = time.perf_counter() - t1

    records: list[dict[str, Any]] = []
    per_subject = {s.name: SubjectScore() for s in data.subjects}
    for (q, p), s in zip(pairs, scored):
        sc = per_subject[q.subject]
        sc.n += 1
        correct = None
        if q.answer is not None:
            correct = s.pred == q.answer
            sc.scored += 1
            sc.correct += int(correct)
        rec = {"subject": q.subject, "id": q.qid, "answer": q.answer, "pred": s.pred, "correct": correct,
               "shots": p.shots, "dropped_shots": p.dropped_shots, "prompt_tokens": len(p.ids)}
        if p.dropped_header:
            rec["dropped_header"] = True
        if p.truncated:
            rec["truncated_tokens"] = p.truncated
        if s.letter_logprobs is not None:
            rec["letter_logprobs"] = [round(x, 5) for x in s.letter_logprobs]
        if s.text is not None:
            rec["output"] = s.text
        records.append(rec)

    n = len(records)
    stats = {
        "scorer": type(scorer).__name__,
        "num_questions": n,
        "num_scored": sum(sc.scored for sc in per_subject.values()),
        "num_correct": sum(sc.correct for sc in per_subject.values()),
        "max_length": max_length,
        "prompt_tokens_mean": sum(len(p.ids) for _, p in pairs) / max(n, 1),
        "prompt_tokens_max": max((len(p.ids) for _, p in pairs), default=0),
        "dropped_shots": sum(p.dropped_shots for _, p in pairs),
        "prompts_with_dropped_shots": sum(1 for _, p in pairs if p.dropped_shots),
        "prompts_without_header": sum(1 for _, p in pairs if p.dropped_header),
        "truncated_prompts": sum(1 for _, p in pairs if p.truncated),
        "unparsed_answers": sum(1 for s in scored if s.pred is None),
        "prompt_build_s": round(t_prompts, 3),
        "score_s": round(t_score, 3),
        "questions_per_s": n / t_score if t_score > 0 else None,
    }
    if stats["dropped_shots"]:
        log.warning("%s: %d shots dropped from %d prompts to fit %d tokens", benchmark.name,
                    stats["dropped_shots"], stats["prompts_with_dropped_shots"], max_length)
    groups = group_scores(per_subject, benchmark.groups(), benchmark.weight_by_questions)
    return EvalResult(benchmark=benchmark, model_name=model_name, records=records, per_subject=per_subject,
                      groups=groups, stats=stats)


def write_outputs(result: EvalResult, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for rec in result.records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    subjects = {s.name: s for s in result.benchmark.selected}
    with (out / "subjects.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "name_zh", "category", "questions", "scored", "correct", "accuracy"])
        for name, sc in result.per_subject.items():
            acc = "" if sc.accuracy is None else f"{sc.accuracy:.2f}"
            w.writerow([name, subjects[name].name_zh, subjects[name].category, sc.n, sc.scored, sc.correct, acc])
    write_json_atomic(out / "results.json", {**result.summary(), **(extra or {})})
    (out / "table.md").write_text(result.table, encoding="utf-8")
    if result.benchmark.submission:
        sub: dict[str, dict[str, str | None]] = {}
        for rec in result.records:
            sub.setdefault(rec["subject"], {})[str(rec["id"])] = rec["pred"]
        write_json_atomic(out / "submission.json", sub)
    return out
