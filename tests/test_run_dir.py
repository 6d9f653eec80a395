"""A run dir across resumes: the whole history kept, one run at a time, ``ckpt_path=last`` only with a checkpoint."""

import json

import pandas as pd
import pytest
import torch

from tests.conftest import compose_train, fast_overrides
from tests.helpers.crash_at import Crash
from zhilu.errors import ConfigError
from zhilu.train.run import train
from zhilu.utils.rundir import run_dir_lock


def train_losses(run):
    log = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["train/loss"])
    return log["step"].tolist(), log["train/loss"].tolist()


def test_a_resumed_run_keeps_the_whole_history(sft_dir, tmp_path):
    """Crashed in step 4 (checkpoint after step 2; step 3 logged as step index 2), resumed with
    ckpt_path=last: metrics.csv holds every step once (step 3 redone) with the losses of an uninterrupted
    run, metrics.json counts the tokens of the whole run."""
    base = fast_overrides(sft_dir, "adapter=lora", "adapter.dropout=0", "data.limit_train_samples=8",
                          "trainer.max_steps=5", "callbacks.model_checkpoint.every_n_train_steps=2",
                          "callbacks.export.enabled=false", "validate_after_fit=false")
    straight = train(compose_train(base, tmp_path / "straight"))
    run = tmp_path / "resumed"
    with pytest.raises(Crash):
        train(compose_train(base + ["+callbacks.crash._target_=tests.helpers.crash_at.CrashAt",
                                    "+callbacks.crash.step=4"], run))
    steps_before, _ = train_losses(run)
    assert steps_before == [0, 1, 2] and torch.load(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    resumed = train(compose_train(base + ["ckpt_path=last"], run))
    steps, losses = train_losses(run)
    want_steps, want_losses = train_losses(tmp_path / "straight")
    assert steps == want_steps and len(steps) == len(set(steps)) == 5  # the redone step appears once
    assert losses == pytest.approx(want_losses, abs=1e-6)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["resumed_from"] == [str(run / "checkpoints" / "last.ckpt")] and saved["status"] == "finished"
    assert saved["train_tokens"] == straight["train_tokens"] == resumed["train_tokens"] > 0
    assert saved["global_step"] == 5 and saved["train_time_s"] > 0


def test_ckpt_path_last_needs_a_checkpoint_and_last_if_any_starts_fresh(sft_dir, tmp_path):
    base = fast_overrides(sft_dir, "adapter=lora", "trainer.max_steps=1", "callbacks.export.enabled=false",
                          "validate_after_fit=false")
    with pytest.raises(ConfigError, match=r"^ckpt_path=last: no checkpoint to resume from at .*last_if_any"):
        train(compose_train(base + ["ckpt_path=last"], tmp_path / "a"))
    assert not (tmp_path / "a" / "metrics.json").exists() or "failed" in (tmp_path / "a" / "metrics.json").read_text()
    assert train(compose_train(base + ["ckpt_path=last_if_any"], tmp_path / "b"))["global_step"] == 1
    not_a_ckpt = tmp_path / "notes.ckpt"
    not_a_ckpt.write_text("hello")
    with pytest.raises(ConfigError, match=rf"^ckpt_path={not_a_ckpt}: {not_a_ckpt} is not a checkpoint \(5 bytes"):
        train(compose_train(base + [f"ckpt_path={not_a_ckpt}"], tmp_path / "c"))


def test_a_second_run_in_a_locked_run_dir_is_refused_and_writes_nothing(sft_dir, tmp_path):
    run = tmp_path / "run"
    with run_dir_lock(run):
        with pytest.raises(ConfigError, match=rf"^run dir {run} is in use by another run \(pid \d+ on "):
            with run_dir_lock(run):
                pass
        cfg = compose_train(fast_overrides(sft_dir, "adapter=lora", "trainer.max_steps=1"), run)
        with pytest.raises(ConfigError, match="is in use by another run"):
            train(cfg)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no metrics.json, csv/ or checkpoints/
    with run_dir_lock(run):  # released with its holder
        pass
