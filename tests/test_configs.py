"""Every option of every config group composes and instantiates (nothing is run)."""

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import ROOT, compose_train
from zhilu.train.run import build, instantiate_dict

CONF = ROOT / "conf"
# groups of train.yaml whose options are checked one by one
GROUPS = ["model", "adapter", "objective", "data", "trainer", "logger", "callbacks", "experiment", "debug"]
NEEDS_PATH = {"llama3_8b", "llama3_8b_instruct"}  # real weights: composed, and built only from a path


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_group_option_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "model" and option in NEEDS_PATH:
        overrides.append(f"model.path={tmp_path}")
    cfg = compose_train(overrides, tmp_path)
    pairs_with = {"preference": "dpo", "unpaired": "kto"}  # preference data goes with DPO, unpaired with KTO
    if group == "data" and cfg.data.get("kind") in pairs_with:
        cfg = compose_train(overrides + [f"objective={pairs_with[cfg.data.kind]}"], tmp_path)
    if group == "model" and option in NEEDS_PATH:
        builder = instantiate(cfg.model)
        assert builder.path == str(tmp_path)
        return
    objs = build(cfg)
    assert objs["datamodule"].kind == objs["module"].objective.data_kind
    instantiate_dict(cfg.get("callbacks"))
    instantiate_dict(cfg.get("logger"))
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.precision == "bf16-mixed"  # composed; a Trainer needs the GPU
        return
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.max_steps == cfg.trainer.max_steps


def test_every_group_is_listed():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    other_apps = {"hydra", "paths", "benchmark", "merge", "synth", "hparams_search", "judge"}
    assert set(GROUPS) | other_apps >= groups, groups - set(GROUPS) - other_apps
