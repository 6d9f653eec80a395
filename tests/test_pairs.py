"""Every adapter x objective pair: it trains a step against a correct reference, or it is refused at config time."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import ROOT, compose_train, fast_overrides
from tests.test_dpo import dpo_dir
from zhilu.cli import user_error
from zhilu.errors import ConfigError
from zhilu.train.run import build

ADAPTERS = sorted(p.stem for p in (ROOT / "conf" / "adapter").glob("*.yaml"))
OBJECTIVES = sorted(p.stem for p in (ROOT / "conf" / "objective").glob("*.yaml"))
REFERENCES = ("disabled", "copy", "precomputed")


def test_the_matrix_covers_every_option():
    assert {"full", "lora", "dora", "loraplus", "badam", "pissa", "olora"} <= set(ADAPTERS)
    assert {"sft", "dpo"} <= set(OBJECTIVES)


def overrides(data: Path, adapter: str, objective: str, *extra: str) -> list[str]:
    return fast_overrides(data, f"adapter={adapter}", f"objective={objective}", *extra)


def one_step(objs) -> tuple[float, dict]:
    """The first training step by hand (no Trainer): step-0 loss and logs, then one optimizer step."""
    module, dm = objs["module"], objs["datamodule"]
    module.configure_model()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module.train()
    loss, logs = module.objective.loss(module, batch, "train")
    opt = module.adapter.build_optimizer(module.model, module.optimizer_factory, 1e-2, 0.0)
    loss.backward()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    opt.step()
    moved = [n for n, p in module.model.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert moved, "the step changed nothing"
    return loss.item(), logs


def step0_loss(objective) -> float:
    """The loss when the policy is its own reference (every log-ratio 0), worked by hand per objective."""
    if objective.name == "kto":  # lambda (1 - sigmoid(beta (0 - z0))), z0 = 0: 0.5 per row at weights 1
        assert objective.desirable_weight == objective.undesirable_weight == 1.0
        return 0.5
    if objective.name == "ipo":  # (0 - 1 / (2 tau))^2
        return (1 / (2 * objective.beta)) ** 2
    if objective.name == "hinge":  # max(0, 1 - 0)
        return 1.0
    assert objective.name == "dpo" and objective.label_smoothing == 0
    return math.log(2)  # -log sigmoid(0)


@pytest.mark.slow  # 14 pairs, 3-12 s each on a loaded 2-core machine
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_pair_trains_a_step_with_its_stated_reference(tmp_path, sft_dir, adapter, objective):
    L.seed_everything(0)
    data = sft_dir if objective == "sft" else dpo_dir(tmp_path)
    objs = build(compose_train(overrides(data, adapter, objective), tmp_path / "run"))
    loss, logs = one_step(objs)
    if objs["module"].objective.needs_reference:
        ref = objs["module"].objective.reference
        assert ref.kind == objs["module"].adapter.reference
        assert loss == pytest.approx(step0_loss(objs["module"].objective), abs=1e-5)  # step 0: its own reference
        assert all(abs(logs[k].item()) < 1e-5 for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")
                   if k in logs)
        assert "rewards/chosen" in logs
    else:
        assert math.isfinite(loss)


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_stated_reference_is_accepted_or_refused_in_one_line(tmp_path, adapter, reference):
    """What each adapter may state; a precomputed-only reference is refused without precompute_ref."""
    for precompute in (False, True):
        cfg = compose_train(overrides(dpo_dir(tmp_path), adapter, "dpo", f"adapter.reference={reference}",
                                      f"objective.precompute_ref={str(precompute).lower()}"), tmp_path / "run")
        try:
            objs = build(cfg)
        except Exception as exc:  # Hydra wraps errors raised in constructors; the entry points unwrap them
            err = user_error(exc)
            assert isinstance(err, ConfigError), exc
            msg = str(err)
            assert "\n" not in msg and msg.startswith(("adapter.reference=", "objective=dpo with adapter=")), msg
            assert (reference == "disabled") or (reference == "precomputed" and not precompute), msg
            continue
        adapter_obj = objs["module"].adapter
        assert adapter_obj.reference == reference
        assert reference != "precomputed" or precompute
        if reference == "disabled":  # only adapters whose base is untouched may state it
            assert adapter_obj.adapter_on_base is True


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["full", "badam", "pissa", "lora"])
def test_precomputed_references_give_log2_at_step_0(tmp_path, adapter):
    from tests.test_dpo_train import fit

    cfg = compose_train(overrides(dpo_dir(tmp_path), adapter, "dpo", "adapter.reference=precomputed",
                                  "objective.precompute_ref=true"), tmp_path / "run")
    objs, losses, _ = fit(cfg, tmp_path / "run", steps=1)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert objs["module"].objective.ref_model is None
