"""Shared helpers of the evaluation tests (no tests here): the real ``conf/eval.yaml`` composed, tiny data dirs."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from tests.conftest import ROOT, TINY
from zhilu.eval.run import build

CEVAL_TINY = ROOT / "tests" / "data" / "ceval_tiny"
CMMLU_TINY = ROOT / "tests" / "data" / "cmmlu_tiny"
CEVAL_SUBJECTS = ["computer_network", "college_physics", "marxism", "law", "accountant"]
CMMLU_SUBJECTS = ["agronomy", "anatomy", "ancient_chinese", "arts"]
TINY_DIRS = {"ceval": (CEVAL_TINY, CEVAL_SUBJECTS), "cmmlu": (CMMLU_TINY, CMMLU_SUBJECTS)}


def tiny_model_overrides() -> list[str]:
    return [f"model.config.{k}={v}" for k, v in TINY.items()]


def compose_eval(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or ROOT / "logs" / "eval_test")
    return cfg


def tiny_benchmark(name: str = "ceval", *overrides: str):
    """The real ``conf/benchmark/<name>.yaml`` on the tiny test folders."""
    data_dir, subjects = TINY_DIRS[name]
    base = [f"benchmark={name}", f"benchmark.data_dir={data_dir}", f"benchmark.subjects=[{','.join(subjects)}]"]
    cfg = compose_eval(base + list(overrides))
    return build(cfg.benchmark)
