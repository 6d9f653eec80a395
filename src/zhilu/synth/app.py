"""The two Hydra apps: build the objects of ``conf/synth/{evol,self_evolve}.yaml`` and run them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _save_config(cfg: DictConfig, out_dir: Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    from zhilu.utils.saved_config import config_for_saving

    (out_dir / name).write_text(OmegaConf.to_yaml(config_for_saving(cfg)), encoding="utf-8")


def run_evol(cfg: DictConfig) -> dict[str, Any]:
    from zhilu.utils.rundir import run_dir_lock

    with run_dir_lock(cfg.out_dir):  # two runs appending to one resumable store would interleave it
        return _run_evol(cfg)


def _run_evol(cfg: DictConfig) -> dict[str, Any]:
    from zhilu.synth.evol import Evolver, format_report

    out_dir = Path(cfg.out_dir)
    _save_config(cfg, out_dir, "evol_config.yaml")
    seeds = instantiate(cfg.seeds)
    generator = instantiate(cfg.generator)
    evolver: Evolver = instantiate(cfg.evol, generator=generator, out_dir=str(out_dir))
    report = evolver.run(seeds)
    print(format_report(report))
    print(f"outputs: {out_dir}/evol.jsonl (chat rows + provenance), rejected.jsonl, report.json")
    return report


def run_self_evolve(cfg: DictConfig) -> dict[str, Any]:
    from zhilu.utils.rundir import run_dir_lock

    with run_dir_lock(cfg.out_dir):
        return _run_self_evolve(cfg)


def _run_self_evolve(cfg: DictConfig) -> dict[str, Any]:
    from zhilu.synth.self_evolve import format_report

    out_dir = Path(cfg.out_dir)
    _save_config(cfg, out_dir, "self_evolve_config.yaml")
    questions = instantiate(cfg.questions)
    generator = instantiate(cfg.generator)
    scorer = instantiate(cfg.scorer) if cfg.get("scorer") else generator
    retriever = instantiate(cfg.retriever)
    evolver = instantiate(cfg.self_evolve, scorer=scorer, generator=generator, retriever=retriever,
                          out_dir=str(out_dir))
    report = evolver.run(questions)
    print(format_report(report))
    print(f"outputs: {out_dir}/knowledge.jsonl (format: text), {out_dir}/instructions.jsonl (format: chat), "
          f"cases.jsonl, report.json")
    return report
