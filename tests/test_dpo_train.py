"""DPO training end to end on the small model: overfitting, precomputed vs online reference, SFT start."""

from __future__ import annotations

import lightning as L
import pandas as pd
import pytest
import torch

from tests.conftest import compose_train, fast_overrides
from tests.test_dpo import PAIRS, dpo_dir
from zhilu.objectives.dpo import CACHE_NAME
from zhilu.train.run import build, train


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(cfg, root, steps: int = 3):
    """Build a run from ``cfg`` and fit it for ``steps`` steps in ``root``; the objects and losses."""
    L.seed_everything(0)
    objs = build(cfg)
    rec = LossRecorder()
    trainer = L.Trainer(max_steps=steps, default_root_dir=str(root), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu", devices=1, callbacks=[rec])
    trainer.fit(objs["module"], datamodule=objs["datamodule"])
    val = trainer.validate(objs["module"], datamodule=objs["datamodule"], verbose=False)[0]
    return objs, rec.losses, val


def test_overfit_a_few_pairs_wins_every_pair(tmp_path):
    d = dpo_dir(tmp_path)
    cfg = compose_train(fast_overrides(
        d, "objective=dpo", "adapter=full", "objective.beta=0.5", "trainer.max_steps=25", "optimizer.lr=3e-3",
        "optimizer.weight_decay=0", "scheduler.warmup_ratio=0", "callbacks.export.enabled=false",
        "callbacks.model_checkpoint=null", "validate_after_fit=false",
        "trainer.check_val_every_n_epoch=25",  # one step per epoch: validate once, at the end
    ), tmp_path / "run")
    train(cfg)
    log = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    steps = log.dropna(subset=["train/loss"])
    first, last = steps.iloc[0], steps.iloc[-1]
    assert first["train/loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at step 0
    assert last["train/rewards/accuracies"] == 1.0
    assert last["train/rewards/margins"] > 0
    assert last["train/rewards/chosen"] > last["train/rewards/rejected"]
    assert last["train/loss"] < first["train/loss"] / 2
    val = log.dropna(subset=["val/loss"])
    assert {"val/rewards/accuracies", "val/rewards/margins", "val/logps/chosen", "val/logps/rejected"} <= set(val)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_precomputed_reference_gives_the_online_loss(tmp_path, adapter):
    d = dpo_dir(tmp_path, train=PAIRS, val=PAIRS[:2])
    base = fast_overrides(d, "objective=dpo", f"adapter={adapter}", "data.batch_size=2", "optimizer.lr=1e-2")
    online, online_losses, online_val = fit(compose_train(base, tmp_path / "on"), tmp_path / "on")
    pre, pre_losses, pre_val = fit(compose_train(base + ["objective.precompute_ref=true"], tmp_path / "pre"),
                                   tmp_path / "pre")
    assert len(online_losses) == 3 and online_losses[0] == pytest.approx(0.6931, abs=1e-4)
    assert pre_losses == pytest.approx(online_losses, rel=1e-4)
    assert online_losses[-1] != pytest.approx(online_losses[0], rel=1e-3)  # it trained, so the reference mattered
    assert pre_val["val/loss"] == pytest.approx(online_val["val/loss"], rel=1e-4)
    assert pre_val["val/rewards/margins"] == pytest.approx(online_val["val/rewards/margins"], rel=1e-3, abs=1e-5)
    obj = pre["module"].objective
    assert obj.ref_model is None and obj.precompute_s is not None  # computed here, copy released
    assert (online["module"].objective.ref_model is None) == (adapter == "lora")
    cache = torch.load(tmp_path / "pre" / CACHE_NAME, weights_only=True)
    assert cache["splits"]["train"]["sums"].shape == (len(PAIRS), 2)
    assert cache["splits"]["val"]["sums"].shape == (2, 2)
    # a second fit in the same run dir reuses the cache; other data recomputes it
    again, again_losses, _ = fit(compose_train(base + ["objective.precompute_ref=true"], tmp_path / "pre"),
                                 tmp_path / "pre", steps=1)
    assert again["module"].objective.precompute_s is None and again_losses == pytest.approx(pre_losses[:1], rel=1e-6)
    fewer, _, _ = fit(compose_train(base + ["objective.precompute_ref=true", "data.limit_train_samples=4"],
                                    tmp_path / "pre"), tmp_path / "pre", steps=1)
    assert fewer["module"].objective.precompute_s is not None
    assert torch.load(tmp_path / "pre" / CACHE_NAME, weights_only=True)["splits"]["train"]["sums"].shape == (4, 2)


def test_dpo_starts_from_an_sft_export(tmp_path, sft_dir):
    sft = tmp_path / "sft"
    train(compose_train(fast_overrides(sft_dir, "adapter=lora", "trainer.max_steps=1", "optimizer.lr=1e-2",
                                       "callbacks.model_checkpoint=null", "validate_after_fit=false"), sft))
    d = dpo_dir(tmp_path)
    cfg = compose_train(fast_overrides(d, "objective=dpo", "adapter=lora", "trainer.max_steps=2",
                                       f"model.path={sft}/export/merged", "objective.precompute_ref=true",
                                       "callbacks.model_checkpoint=null"), tmp_path / "dpo")
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and metrics["objective"] == "dpo"
    assert "val_rewards_accuracies_final" in metrics
    assert (tmp_path / "dpo" / CACHE_NAME).is_file() and (tmp_path / "dpo" / "export" / "merged").is_dir()
    log = pd.read_csv(tmp_path / "dpo" / "csv" / "metrics.csv").dropna(subset=["train/loss"])
    assert log["train/loss"].iloc[0] == pytest.approx(0.6931, abs=1e-3)  # the SFT export is the reference
