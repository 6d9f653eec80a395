"""``python eval.py``: compose the benchmark, model and scorer from ``conf/eval.yaml`` and run them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from zhilu.cli import instantiate
from zhilu.errors import ConfigError
from zhilu.eval.runner import evaluate, write_outputs
from zhilu.model.runtime import load_model

log = logging.getLogger(__name__)


def build(node, **kwargs):
    """``instantiate`` (lists and dicts stay plain); a user error from a constructor raises as itself."""
    return instantiate(node, _convert_="partial", **kwargs)


def pick_scorer(cfg: DictConfig):
    """``mode`` names one entry of ``scorers`` (``loglik`` or ``generate``)."""
    scorers = cfg.get("scorers") or {}
    if cfg.mode not in scorers:
        raise ConfigError(f"mode={cfg.mode!r}: expected one of {', '.join(scorers)}")
    return build(scorers[cfg.mode])


def model_display_name(cfg: DictConfig, builder) -> str:
    if cfg.get("model_name"):
        return str(cfg.model_name)
    if builder.path:
        p = Path(builder.path).resolve()
        # a run dir's export/ or export/merged: name it after the run dir
        while p.name in ("merged", "export") and p.parent != p:
            p = p.parent
        return p.name
    return builder.name


def run(cfg: DictConfig) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    benchmark = build(cfg.benchmark)
    if callable(getattr(benchmark, "evaluate_model", None)):  # a benchmark that generates and judges (safety)
        return run_generative(cfg, benchmark)
    scorer = pick_scorer(cfg)
    data = benchmark.load()  # bad data fails before the model is loaded
    builder = build(cfg.model)
    model, tokenizer = load_model(builder)
    name = model_display_name(cfg, builder)
    log.info("%s (%s split, %d-shot%s): %d questions in %d subjects, model %s", benchmark.name, benchmark.split,
             benchmark.shots, ", chat" if benchmark.chat else "", data.num_questions, len(data.subjects), name)
    gen = (cfg.get("scorers") or {}).get("generate")  # answers multi-answer questions in loglik mode
    result = evaluate(benchmark, model, tokenizer, scorer, model_name=name, data=data,
                      multi_scorer=build(gen) if gen is not None else None)
    out = Path(cfg.paths.output_dir)
    extra = {"model_path": builder.path, "mode": cfg.mode, "device": str(next(model.parameters()).device)}
    write_outputs(result, out, extra)
    from zhilu.utils.saved_config import config_for_saving

    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(config_for_saving(cfg)), encoding="utf-8")
    s = result.stats
    print(result.table, end="")
    print(f"{s['num_questions']} questions, {s['questions_per_s'] or 0:.1f} questions/s; "
          f"{s['dropped_shots']} shots dropped to fit {s['max_length']} tokens; outputs in {out}")
    return result.summary()


def run_generative(cfg: DictConfig, benchmark) -> dict[str, Any]:
    """A benchmark that answers its own prompts and scores them (``evaluate_model``), e.g. ``safety``."""
    benchmark.load()  # bad prompt files fail before the model is loaded
    builder = build(cfg.model)
    model, tokenizer = load_model(builder)
    out = Path(cfg.paths.output_dir)
    summary = benchmark.evaluate_model(model, tokenizer, out, model_name=model_display_name(cfg, builder))
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    print((out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"{summary['prompts']} prompts, {summary['judge_errors']} without a verdict; generation "
          f"{summary['generation_s']:.1f} s, judge {summary['judge_s']:.1f} s; outputs in {out}")
    return summary
