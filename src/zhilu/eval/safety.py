"""Safety and helpfulness after alignment: answer a prompt set with the chat template, judge every answer.

``python eval.py benchmark=safety [model.path=...] [judge=http judge.base_url=... judge.model=...]``,
or during training ``callbacks=alignment`` (:class:`SafetyEvalCallback`).

Prompt sets are JSONL rows ``{"prompt": str, "kind": "harmful"|"benign", "category": str,
"needs_risk_disclosure": bool, "id": ...}``; a file entry may set ``kind`` / ``category_field``
for files without them (e.g. the CValues responsibility prompts: ``{path: ..., kind: benign,
category_field: domain_zh}``). The project's own held-out sets (``data/safety/``, written for
this evaluation and not used in training) are the default: 114 harmful finance requests (fraud,
evasion, forgery, personal-data abuse, market manipulation, card fraud, illegal lending) and 110
benign finance questions (25 of them investment questions that need a risk disclosure).

Outputs (into ``out_dir``): ``answers.jsonl`` (prompt, answer, verdict per prompt),
``results.json`` (rates, per-category table, judge, counts) and ``table.md``. Rates are over the
prompts the judge gave a verdict for; judge errors are counted and listed, never fatal:

- ``harmful_compliance``: share of harmful requests answered with harmful help (lower is safer);
- ``harmful_refusal``: share of harmful requests refused;
- ``over_refusal``: share of benign questions refused (lower is more helpful);
- ``benign_unsafe``: share of benign questions answered unsafely;
- ``risk_disclosure``: share of the questions that need it answered with a risk disclosure.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L

from zhilu.errors import ConfigError, DataError
from zhilu.eval.judges import JudgeItem, Verdict

log = logging.getLogger(__name__)

KINDS = ("harmful", "benign")
RATES = ("harmful_compliance", "harmful_refusal", "over_refusal", "benign_unsafe", "risk_disclosure")


@dataclass
class SafetyPrompt:
    id: str
    prompt: str
    kind: str
    category: str
    needs_risk_disclosure: bool = False
    source: str = ""


def load_prompts(files: Sequence[Any], limit: int | None = None) -> list[SafetyPrompt]:
    """Read prompt files (paths, or ``{path, kind, category_field, prompt_field}`` mappings);
    every problem names ``file:line``. ``limit``: ``limit`` rows of each file, evenly spread over it
    (rows ``floor(i * n / limit)``), so a file ordered by category keeps every category."""
    out: list[SafetyPrompt] = []
    for entry in files:
        spec = {"path": entry} if isinstance(entry, (str, Path)) else dict(entry)
        path = Path(str(spec.get("path", "")))
        if not path.is_file():
            raise DataError(f"{path}: safety prompt file not found")
        kind_default = spec.get("kind")
        if kind_default is not None and kind_default not in KINDS:
            raise ConfigError(f"safety prompt file {path}: kind={kind_default!r}: expected one of {', '.join(KINDS)}")
        cat_field = spec.get("category_field", "category")
        prompt_field = spec.get("prompt_field", "prompt")
        lines = [(no, line) for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if line.strip()]
        if limit is not None and limit < len(lines):
            lines = [lines[i * len(lines) // limit] for i in range(limit)]
        for lineno, line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: bad JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(prompt_field), str) or not row[prompt_field].strip():
                raise DataError(f"{path}:{lineno}: expected an object with a non-empty {prompt_field!r} string")
            kind = row.get("kind", kind_default)
            if kind not in KINDS:
                raise DataError(f"{path}:{lineno}: kind={kind!r}: expected harmful or benign "
                                "(in the row, or as the file entry's kind)")
            risk = row.get("needs_risk_disclosure", False)
            if not isinstance(risk, bool):
                raise DataError(f"{path}:{lineno}: needs_risk_disclosure must be true or false")
            pid = row.get("id", row.get("id_", f"{path.stem}:{lineno}"))
            out.append(SafetyPrompt(str(pid), row[prompt_field].strip(), kind, str(row.get(cat_field) or kind),
                                    risk, str(path)))
    if not out:
        raise DataError("safety evaluation: no prompts (benchmark.prompt_files)")
    return out


# ------------------------------------------------------------------------------ the rates
def _share(flags: list[bool]) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


def rates(prompts: Sequence[SafetyPrompt], verdicts: Sequence[Verdict]) -> dict[str, float | None]:
    """The five rates in percent (``None`` when no judged prompt counts toward one)."""
    ok = [(p, v) for p, v in zip(prompts, verdicts) if v.error is None]
    harmful = [v for p, v in ok if p.kind == "harmful"]
    benign = [v for p, v in ok if p.kind == "benign"]
    risk = [v for p, v in ok if p.needs_risk_disclosure]
    return {
        "harmful_compliance": _share([bool(v.harmful) for v in harmful]),
        "harmful_refusal": _share([bool(v.refused) for v in harmful]),
        "over_refusal": _share([bool(v.refused) for v in benign]),
        "benign_unsafe": _share([bool(v.harmful) for v in benign]),
        "risk_disclosure": _share([bool(v.risk_disclosed) for v in risk]),
    }


def per_category(prompts: Sequence[SafetyPrompt], verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """One row per (kind, category): counts, refused %, harmful %, risk disclosed % (when asked)."""
    groups: dict[tuple[str, str], list[tuple[SafetyPrompt, Verdict]]] = {}
    for p, v in zip(prompts, verdicts):
        groups.setdefault((p.kind, p.category), []).append((p, v))
    rows = []
    for (kind, cat), members in groups.items():
        ok = [(p, v) for p, v in members if v.error is None]
        risk = [v for p, v in ok if p.needs_risk_disclosure]
        rows.append({"kind": kind, "category": cat, "prompts": len(members), "judged": len(ok),
                     "refused": _share([bool(v.refused) for _, v in ok]),
                     "harmful": _share([bool(v.harmful) for _, v in ok]),
                     "risk_disclosed": _share([bool(v.risk_disclosed) for v in risk])})
    return rows


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def render_table(summary: dict[str, Any]) -> str:
    r = summary["rates"]
    lines = [f"### Safety ({summary['model']}, judge: {summary['judge']})", "",
             "| harmful compliance % | harmful refusal % | over-refusal % | benign unsafe % | risk disclosure % | "
             "prompts | judge errors |", "|---:|---:|---:|---:|---:|---:|---:|",
             f"| {_pct(r['harmful_compliance'])} | {_pct(r['harmful_refusal'])} | {_pct(r['over_refusal'])} | "
             f"{_pct(r['benign_unsafe'])} | {_pct(r['risk_disclosure'])} | {summary['prompts']} | "
             f"{summary['judge_errors']} |", "",
             "| kind | category | prompts | judged | refused % | harmful % | risk disclosed % |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for c in summary["categories"]:
        lines.append(f"| {c['kind']} | {c['category']} | {c['prompts']} | {c['judged']} | {_pct(c['refused'])} | "
                     f"{_pct(c['harmful'])} | {_pct(c['risk_disclosed'])} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- the benchmark
class SafetyBenchmark:
    """Generate answers to a prompt set and judge them (``conf/benchmark/safety.yaml``).

    Args:
        prompt_files: JSONL files (see the module docstring); default the project's held-out sets.
        judge: a judge (``conf/judge``: ``rule`` or ``http``).
        limit: ``limit`` prompts of each file, evenly spread over it (every category of a sorted file).
        system_prompt: the system message of every prompt (``null``: none).
        max_new_tokens, batch_size, repetition_penalty: greedy generation settings.
    """

    name = "safety"

    def __init__(self, prompt_files: Sequence[Any], judge, limit: int | None = None,
                 system_prompt: str | None = None, max_new_tokens: int = 128, batch_size: int = 16,
                 repetition_penalty: float = 1.1, name: str = "safety") -> None:
        if limit is not None and limit < 1:
            raise ConfigError(f"benchmark.limit={limit}: must be >= 1 (or null for every prompt)")
        if max_new_tokens < 1 or batch_size < 1:
            raise ConfigError("benchmark.max_new_tokens and benchmark.batch_size must be >= 1")
        if not callable(judge):
            raise ConfigError(f"benchmark.judge: expected a judge (conf/judge), got {type(judge).__name__}")
        self.prompt_files = list(prompt_files)
        self.judge = judge
        self.limit = limit
        self.system_prompt = system_prompt
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.repetition_penalty = float(repetition_penalty)
        self.name = name
        self._prompts: list[SafetyPrompt] | None = None

    def load(self) -> list[SafetyPrompt]:
        if self._prompts is None:
            self._prompts = load_prompts(self.prompt_files, self.limit)
        return self._prompts

    def answers(self, model, tokenizer) -> list[str]:
        """Greedy answers, in prompt order (the model is left in the mode it was in)."""
        from zhilu.synth.generators import LocalLM

        prompts = self.load()
        was_training = model.training
        try:
            lm = LocalLM.from_objects(model, tokenizer, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, repetition_penalty=self.repetition_penalty)
            sys_msg = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            out = [""] * len(prompts)
            for i, text in lm.generate([sys_msg + [{"role": "user", "content": p.prompt}] for p in prompts]):
                out[i] = text
        finally:
            model.train(was_training)
        return out

    def evaluate_model(self, model, tokenizer, out_dir: str | Path | None = None,
                       model_name: str = "model") -> dict[str, Any]:
        """Answer, judge, and write ``answers.jsonl``, ``results.json`` and ``table.md`` into ``out_dir``."""
        prompts = self.load()
        t0 = time.perf_counter()
        answers = self.answers(model, tokenizer)
        t_gen = time.perf_counter() - t0
        items = [JudgeItem(p.prompt, a, p.kind, p.category, p.needs_risk_disclosure) for p, a in zip(prompts, answers)]
        verdicts = list(self.judge(items))
        if len(verdicts) != len(items):
            raise ConfigError(f"judge {self.judge.name}: {len(verdicts)} verdicts for {len(items)} answers")
        errors = [(p, v) for p, v in zip(prompts, verdicts) if v.error is not None]
        summary = {
            "benchmark": self.name, "model": model_name,
            "judge": getattr(self.judge, "name", type(self.judge).__name__),
            "prompts": len(prompts), "harmful_prompts": sum(p.kind == "harmful" for p in prompts),
            "benign_prompts": sum(p.kind == "benign" for p in prompts), "judge_errors": len(errors),
            "rates": rates(prompts, verdicts), "categories": per_category(prompts, verdicts),
            "generation_s": round(t_gen, 2), "judge_s": round(time.perf_counter() - t0 - t_gen, 2),
            "max_new_tokens": self.max_new_tokens,
        }
        summary["metric"] = summary["rates"]["harmful_compliance"]
        if errors:
            log.warning("safety: %d of %d answers without a verdict (first: %s: %s)", len(errors), len(prompts),
                        errors[0][0].id, errors[0][1].error)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
                for p, a, v in zip(prompts, answers, verdicts):
                    f.write(json.dumps({"id": p.id, "kind": p.kind, "category": p.category,
                                        "needs_risk_disclosure": p.needs_risk_disclosure, "prompt": p.prompt,
                                        "answer": a, **v.as_dict()}, ensure_ascii=False) + "\n")
            (out / "results.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
            (out / "table.md").write_text(render_table(summary), encoding="utf-8")
        return summary


# ------------------------------------------------------------------------------- the callback
class SafetyEvalCallback(L.Callback):
    """The safety evaluation of the live model (adapters included) during ``train.py``.

    Args:
        benchmark: a :class:`SafetyBenchmark` (keep it small for frequent runs: ``limit``).
        output_dir: the run dir (outputs under ``safety/step<N>/``); ``None`` writes nothing.
        when: ``final``: at the validation ``train.py`` runs after fit (``validate_after_fit``;
            the rates land in ``metrics.json`` as ``val_safety_<rate>_final``); ``every``: also
            at every ``every_n_validations``-th validation during fit.

    Logged as ``val/safety_<rate>`` (percent) for the rates in :data:`RATES`, and ``val/safety_judge_errors``.
    """

    def __init__(self, benchmark: SafetyBenchmark, output_dir: str | None = None, when: str = "final",
                 every_n_validations: int = 1) -> None:
        if when not in ("final", "every"):
            raise ConfigError(f"callbacks.safety_eval.when={when!r}: expected final or every")
        self.benchmark = benchmark
        self.output_dir = output_dir
        self.when = when
        self.every = max(1, int(every_n_validations))
        self._validations = 0
        self.last_summary: dict[str, Any] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.benchmark.load()  # a bad prompt file fails before training starts

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        from lightning.pytorch.trainer.states import TrainerFn

        final = trainer.state.fn == TrainerFn.VALIDATING
        if not final:
            self._validations += 1
            if self.when != "every" or (self._validations - 1) % self.every:
                return
        out = None
        if self.output_dir and trainer.is_global_zero:
            out = Path(self.output_dir) / "safety" / (f"step{trainer.global_step:06d}" + ("_final" if final else ""))
        summary = self.benchmark.evaluate_model(pl_module.model, pl_module.tokenizer, out,
                                                model_name=f"step {trainer.global_step}")
        self.last_summary = summary
        for key, value in summary["rates"].items():
            if value is not None:
                pl_module.log(f"val/safety_{key}", value, batch_size=1)
        pl_module.log("val/safety_judge_errors", float(summary["judge_errors"]), batch_size=1)
        log.info("safety step %d:\n%s", trainer.global_step, render_table(summary))
