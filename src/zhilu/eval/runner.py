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

from zhilu.eval.benchmark import PARTIAL_GROUP, TYPE_GROUP, Benchmark, BenchmarkData
from zhilu.eval.loader import QTYPES
from zhilu.eval.metrics import SubjectScore, group_scores, render_table
from zhilu.eval.prompts import Prompt, PromptBuilder
from zhilu.eval.scoring import GenerateScorer, Scored, option_credit
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


def build_prompts(benchmark: Benchmark, data: BenchmarkData, tokenizer, max_length: int,
                  multi_max_length: int | None = None) -> list[tuple[Any, Prompt]]:
    """Every question's prompt; multi-answer questions (answered by generation) fit into
    ``multi_max_length`` tokens, the others carry the token ids of their own answer letters."""
    builder = PromptBuilder(benchmark.format, tokenizer, max_length, chat=benchmark.chat)
    multi = PromptBuilder(benchmark.format, tokenizer, multi_max_length or max_length, chat=benchmark.chat)
    out = []
    for subject in data.subjects:
        for q in data.questions[subject.name]:
            if q.multi:
                out.append((q, multi.build(subject, data.shots_for(q), q)))
            else:
                p = builder.build(subject, data.shots_for(q), q)
                p.choices = builder.choice_ids(q)
                out.append((q, p))
    return out


def evaluate(benchmark: Benchmark, model, tokenizer, scorer, model_name: str = "model",
             data: BenchmarkData | None = None, log_every_s: float = 30.0, multi_scorer=None) -> EvalResult:
    """Score every selected question; ``data`` may be passed in to skip re-reading the files.

    Multi-answer questions go to a generating scorer: ``scorer`` itself when it generates, else
    ``multi_scorer`` (default: :class:`~zhilu.eval.scoring.GenerateScorer`)."""
    data = data or benchmark.load()
    context = context_length(model, benchmark)
    max_length = context - getattr(scorer, "reserve_tokens", 0)
    gen_scorer = scorer if getattr(scorer, "generates", False) else (multi_scorer or GenerateScorer())
    t0 = time.perf_counter()
    pairs = build_prompts(benchmark, data, tokenizer, max_length, context - gen_scorer.reserve_tokens)
    t_prompts = time.perf_counter() - t0
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] >= log_every_s:
            last[0] = time.perf_counter()
            log.info("%s: %d/%d questions scored", benchmark.name, done, total)

    was_training = model.training
    model.eval()
    t1 = time.perf_counter()
    parts = [[i for i, (q, _) in enumerate(pairs) if q.multi == m] for m in (False, True)]
    scored: list[Scored] = [None] * len(pairs)  # type: ignore[list-item]
    try:
        for idx, sc in zip(parts, (scorer, gen_scorer)):
            if idx:
                got = sc(model, tokenizer, [pairs[i][1].ids for i in idx], [pairs[i][0] for i in idx],
                         progress=progress, choices=[pairs[i][1].choices for i in idx])
                for i, s in zip(idx, got):
                    scored[i] = s
    finally:
        model.train(was_training)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t_score = time.perf_counter() - t1

    records: list[dict[str, Any]] = []
    per_subject = {s.name: SubjectScore() for s in data.subjects}
    per_type = {t: [0, 0] for t in QTYPES}  # scored, correct
    partial: list[float] = []
    for (q, p), s in zip(pairs, scored):
        sc = per_subject[q.subject]
        sc.n += 1
        correct = None
        rec_extra: dict[str, Any] = {}
        if q.answer is not None:
            correct = s.pred == q.answer
            sc.scored += 1
            sc.correct += int(correct)
            per_type[q.qtype][0] += 1
            per_type[q.qtype][1] += int(correct)
            if q.multi:
                rec_extra["option_credit"] = round(option_credit(s.pred, q.answer, len(q.options)), 5)
                partial.append(rec_extra["option_credit"])
        rec = {"subject": q.subject, "id": q.qid, "type": q.qtype, "options": len(q.options), "answer": q.answer,
               "pred": s.pred, "correct": correct, **rec_extra,
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
    stats["questions_by_type"] = {t: n for t, (n, _) in per_type.items() if n}
    groups = group_scores(per_subject, benchmark.groups(), benchmark.weight_by_questions)
    for t, (n, c) in per_type.items():  # pooled over questions
        if n:
            groups[TYPE_GROUP.format(t)] = 100.0 * c / n
    if partial:
        groups[PARTIAL_GROUP] = 100.0 * sum(partial) / len(partial)
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
