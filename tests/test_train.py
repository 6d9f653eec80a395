"""End-to-end training on the small model: overfitting, resume, export, CLI errors."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, compose_train, fast_overrides, write_jsonl
from zhilu.train.run import train


def test_tiny_model_overfits_a_handful_of_samples(sft_dir, tmp_path):
    cfg = compose_train(fast_overrides(
        sft_dir, "adapter=full", "trainer.max_steps=30", "optimizer.lr=3e-3", "optimizer.weight_decay=0",
        "data.limit_train_samples=4", "data.batch_size=4", "callbacks.export.enabled=false",
        "callbacks.model_checkpoint=null", "scheduler.warmup_ratio=0",
    ), tmp_path)
    train(cfg)
    log = pd.read_csv(tmp_path / "csv" / "metrics.csv").dropna(subset=["train/loss"])
    first, last = log["train/loss"].iloc[0], log["train/loss"].iloc[-1]
    assert last < first / 2, (first, last)


def test_resume_continues_the_step_count(sft_dir, tmp_path):
    base = fast_overrides(sft_dir, "adapter=lora", "callbacks.model_checkpoint.every_n_train_steps=2",
                          "callbacks.export.enabled=false", "validate_after_fit=false")
    train(compose_train(base + ["trainer.max_steps=4"], tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 4
    # the LoRA checkpoint holds the adapter weights only
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])
    metrics = train(compose_train(base + ["trainer.max_steps=6", f"ckpt_path={ckpt}"], tmp_path / "b"))
    assert metrics["global_step"] == 6
    log = pd.read_csv(tmp_path / "b" / "csv" / "metrics.csv").dropna(subset=["train/loss"])
    assert log["step"].min() >= 4  # nothing re-trained from step 0
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    for k, v in state["state_dict"].items():
        assert not torch.equal(v, resumed["state_dict"][k]), f"{k} did not train after resume"


@pytest.mark.parametrize("stop", [2, 3], ids=["epoch_end", "mid_epoch"])
def test_resume_trains_exactly_like_an_uninterrupted_run(sft_dir, tmp_path, stop):
    """Checkpoints hold the RNG state and the data order: LoRA with dropout, interrupted after step
    ``stop`` (2 batches an epoch) and resumed, ends with the weights of 5 uninterrupted steps."""
    base = fast_overrides(sft_dir, "adapter=lora", "adapter.dropout=0.3", "optimizer.lr=1e-2",
                          "data.limit_train_samples=8", "trainer.max_steps=5",
                          f"callbacks.model_checkpoint.every_n_train_steps={stop}", "validate_after_fit=false")
    train(compose_train(base, tmp_path / "straight"))
    run = tmp_path / "resumed"
    train(compose_train(base + ["+callbacks.stop._target_=tests.helpers.stop_at.StopAt",
                                f"+callbacks.stop.step={stop}"], run))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == stop and len(ckpt["rng_states"]) == 1  # one entry per rank
    assert ckpt["ChatDataModule"]["train_order"]["epoch_complete"] == (stop == 2)
    metrics = train(compose_train(base + ["ckpt_path=last"], run))
    assert metrics["global_step"] == 5
    adapter = Path("export") / "adapter" / "adapter_model.safetensors"  # written at the end of fit
    straight, resumed = load_file(tmp_path / "straight" / adapter), load_file(run / adapter)
    assert straight.keys() == resumed.keys() and straight
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-7, msg=k)


def test_resume_mid_epoch_on_the_store_packed_trains_exactly_like_an_uninterrupted_run(sft_dir, tmp_path):
    """The same, on packed rows of the tokenized store (re-packed every epoch): the resumed run maps the
    store its first part built (nothing re-tokenized) and ends with the uninterrupted run's weights."""
    base = fast_overrides(sft_dir, "adapter=lora", "adapter.dropout=0.3", "optimizer.lr=1e-2", "data.packing=true",
                          "data.pack_length=64", "data.batch_size=1", "data.limit_train_samples=8",
                          "trainer.max_steps=8", "callbacks.model_checkpoint.every_n_train_steps=3",
                          "validate_after_fit=false")
    train(compose_train(base, tmp_path / "straight"))
    run = tmp_path / "resumed"
    train(compose_train(base + ["+callbacks.stop._target_=tests.helpers.stop_at.StopAt", "+callbacks.stop.step=3"], run))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 and not ckpt["ChatDataModule"]["train_order"]["epoch_complete"]
    stores = sorted((run / "logs" / "cache" / "data").glob("*/meta.json"))
    assert [p.parent.name.split("-")[0] for p in stores] == ["train", "val"]
    built = [p.stat().st_mtime_ns for p in stores]
    metrics = train(compose_train(base + ["ckpt_path=last"], run))
    assert metrics["global_step"] == 8  # 6 rows an epoch: the resumed run also re-packs epoch 1
    assert [p.stat().st_mtime_ns for p in sorted((run / "logs" / "cache" / "data").glob("*/meta.json"))] == built
    adapter = Path("export") / "adapter" / "adapter_model.safetensors"
    straight, resumed = load_file(tmp_path / "straight" / adapter), load_file(run / adapter)
    assert straight.keys() == resumed.keys() and straight
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-7, msg=k)


def test_run_dir_has_metrics_config_and_loadable_export(sft_dir, tmp_path):
    metrics = train(compose_train(fast_overrides(sft_dir, "adapter=lora", "trainer.max_steps=3"), tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train_loss", "val_loss_final", "tokens_per_s", "wall_time_s", "peak_memory_mb",
                "trainable_params", "total_params"):
        assert key in saved and key in metrics, key
    assert saved["status"] == "finished" and saved["trainable_params"] < saved["total_params"]
    assert (tmp_path / "config_resolved.yaml").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for folder in (tmp_path / "export", tmp_path / "export" / "merged"):
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.config.vocab_size == len(tok)
    assert (tmp_path / "export" / "adapter" / "adapter_model.safetensors").is_file()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_path_and_bad_row_are_one_line_errors(tmp_path):
    r = _cli(f"model.path={tmp_path}/nowhere", "logger=csv", f"hydra.run.dir={tmp_path}/r1", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: model.path={tmp_path}/nowhere: no such directory"
    bad = tmp_path / "data" / "finance_sft"
    write_jsonl(bad / "val.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}]}])
    (bad / "train.jsonl").write_text('{"messages": [{"role": "robot", "content": "x"}]}\n', encoding="utf-8")
    r = _cli(f"paths.data_dir={tmp_path}/data", "logger=csv", f"hydra.run.dir={tmp_path}/r2", cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}/train.jsonl:1: message 0: unknown role 'robot'"), last
    r = _cli("adapter.switch_mode=sideways", "adapter=badam", "logger=csv", f"hydra.run.dir={tmp_path}/r3", cwd=tmp_path)
    assert r.returncode == 2 and "adapter.switch_mode='sideways'" in r.stderr.strip().splitlines()[-1]
