"""FSDP on two CPU processes (gloo): parity with DDP, sharded checkpoints and resume, gathered export.

Each run is a real ``python train.py trainer=fsdp|ddp trainer.accelerator=cpu trainer.devices=2``
(fp32) on the small model. The data gives each rank 8 samples, so with batch 4 an epoch is 2
optimizer steps and every run trains ``STEPS`` = 4 steps (2 epochs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from tests.conftest import DIALOGUES, ROOT, TINY, compose_train, write_jsonl
from zhilu.errors import ConfigError

STEPS = 4
STOP = 2  # the interrupted run stops after the sharded checkpoint of step 2 (the end of epoch 0)
# fp32 on CPU: FSDP reduce-scatters the same per-rank gradients DDP all-reduces (both divide by the
# world size first) and AdamW updates each element alike; only the clipping norm is summed in
# another order. Updates are ~lr = 2e-4 per step, so 1e-5 would catch a missing or stale shard.
PARITY_ATOL = 1e-5
RESUME_ATOL = 1e-6
# the FSDP-vs-DDP parity runs use no LoRA dropout (the two strategies need not draw the same masks);
# the resume test keeps it: checkpoints hold every rank's RNG state, so the masks must come out the same
NO_DROPOUT = ("adapter.dropout=0",)
DROPOUT = ("adapter.dropout=0.1",)

slow = pytest.mark.slow  # ten 2-process runs, ~15 s each on 2 cores (~2.5 min in all)


def _train(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    model = [f"model.config.{k}={v}" for k, v in TINY.items()]
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "debug=fast", f"trainer.max_steps={STEPS}", f"paths.data_dir={data_dir}",
           f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *model, *overrides]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))  # this checkout's source
    r = subprocess.run(cmd, cwd=run_dir.parent, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fsdp") / "data"
    write_jsonl(d / "finance_sft" / "train.jsonl", [{"messages": m} for m in DIALOGUES * 4])
    write_jsonl(d / "finance_sft" / "val.jsonl", [{"messages": m} for m in DIALOGUES])
    return d


@pytest.fixture(scope="module")
def ddp_full(data_dir) -> Path:
    run = data_dir.parent / "ddp_full"
    _train(run, data_dir, "trainer=ddp", "adapter=full", "callbacks.model_checkpoint=null",
           "+callbacks.dump._target_=tests.helpers.dump_weights.DumpWeights", f"+callbacks.dump.out_dir={run}/dump")
    return run


@pytest.fixture(scope="module")
def fsdp_full(data_dir) -> Path:
    run = data_dir.parent / "fsdp_full"
    _train(run, data_dir, "trainer=fsdp", "adapter=full", f"callbacks.model_checkpoint.every_n_train_steps={STOP}")
    return run


def _interrupted_and_resumed(data_dir: Path, *adapter: str) -> tuple[Path, dict, dict]:
    """An FSDP run stopped after the sharded checkpoint of step ``STOP``, then resumed with ``ckpt_path=last``."""
    run = data_dir.parent / f"fsdp_{adapter[0].removeprefix('adapter=')}_resumed"
    same = ["trainer=fsdp", *adapter, f"callbacks.model_checkpoint.every_n_train_steps={STOP}"]
    first = _train(run, data_dir, *same, "+callbacks.stop._target_=tests.helpers.stop_at.StopAt",
                   f"+callbacks.stop.step={STOP}")
    second = _train(run, data_dir, *same, "ckpt_path=last")
    return run, first, second


@pytest.fixture(scope="module")
def fsdp_full_resumed(data_dir) -> tuple[Path, dict, dict]:
    return _interrupted_and_resumed(data_dir, "adapter=full")


@pytest.fixture(scope="module")
def fsdp_lora_resumed(data_dir) -> tuple[Path, dict, dict]:
    return _interrupted_and_resumed(data_dir, "adapter=lora", *DROPOUT)


@pytest.fixture(scope="module")
def fsdp_lora_dropout(data_dir) -> Path:
    run = data_dir.parent / "fsdp_lora_dropout"
    _train(run, data_dir, "trainer=fsdp", "adapter=lora", *DROPOUT, f"callbacks.model_checkpoint.every_n_train_steps={STOP}")
    return run


@pytest.fixture(scope="module")
def peft_run(data_dir):
    """``peft_run(trainer, adapter)``: the run dir of a LoRA/DoRA run, each run once per module."""
    runs: dict[tuple[str, str], Path] = {}

    def get(trainer: str, adapter: str) -> Path:
        if (trainer, adapter) not in runs:
            run = data_dir.parent / f"{trainer}_{adapter}"
            ckpt = (f"callbacks.model_checkpoint.every_n_train_steps={STOP}" if trainer == "fsdp"
                    else "callbacks.model_checkpoint=null")
            _train(run, data_dir, f"trainer={trainer}", f"adapter={adapter}", *NO_DROPOUT, ckpt)
            runs[trainer, adapter] = run
        return runs[trainer, adapter]

    return get


def _initial_model(data_dir: Path, tmp_path: Path):
    """The model every run starts from (the same config and seed), built here."""
    cfg = compose_train([f"paths.data_dir={data_dir}", *[f"model.config.{k}={v}" for k, v in TINY.items()]],
                        tmp_path)
    builder = instantiate(cfg.model)
    return builder.build(builder.load_tokenizer(), device_type="cpu")


def _assert_close(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        assert a[k].shape == b[k].shape, k
        diff = (a[k].float() - b[k].float()).abs().max().item()
        assert diff <= atol, f"{k}: max |diff| {diff:.3g} > {atol}"
        worst = max(worst, diff)
    return worst


@slow
def test_fsdp_and_ddp_end_with_the_same_weights(ddp_full, fsdp_full, data_dir, tmp_path):
    fsdp = load_file(fsdp_full / "export" / "model.safetensors")
    ddp = load_file(ddp_full / "export" / "model.safetensors")
    init = _initial_model(data_dir, tmp_path).state_dict()
    assert fsdp.keys() == init.keys()  # the gathered export is complete, under the HF names
    for k in fsdp:
        assert not torch.equal(fsdp[k], init[k]), f"{k} did not train"
    worst = _assert_close(fsdp, ddp, PARITY_ATOL)
    live = torch.load(ddp_full / "dump" / "rank0.pt")  # DDP's in-memory weights, not its export
    _assert_close(fsdp, {k: live[k] for k in fsdp}, PARITY_ATOL)
    print(f"FSDP vs DDP, {len(fsdp)} tensors after {STEPS} steps: max |diff| {worst:.3g}")

    m_fsdp = json.loads((fsdp_full / "metrics.json").read_text())
    m_ddp = json.loads((ddp_full / "metrics.json").read_text())
    assert m_fsdp["status"] == "finished" and m_fsdp["global_step"] == m_ddp["global_step"] == STEPS
    # counted as built, not per-rank shards
    assert (m_fsdp["trainable_params"], m_fsdp["total_params"]) == (m_ddp["trainable_params"], m_ddp["total_params"])
    assert m_fsdp["val_loss_final"] == pytest.approx(m_ddp["val_loss_final"], abs=1e-4)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fsdp_full / "export")
    assert torch.equal(model.lm_head.weight, fsdp["lm_head.weight"])


def _check_resumed(resumed: tuple[Path, dict, dict], straight: Path, weights: str) -> float:
    run, first, second = resumed
    straight_metrics = json.loads((straight / "metrics.json").read_text())
    assert first["global_step"] == STOP and second["global_step"] == STEPS
    # the resumed process trained steps STOP+1..STEPS only (a fresh start would also reach STEPS): metrics.json
    # counts the whole run's tokens (issue 15), which equal the uninterrupted run's only without retraining
    assert 0 < first["train_tokens"] < second["train_tokens"] == straight_metrics["train_tokens"]
    assert second["resumed_from"] == [str(run / "checkpoints" / "last.ckpt")]
    assert second["val_loss_final"] == pytest.approx(straight_metrics["val_loss_final"], abs=1e-5)
    return _assert_close(load_file(run / "export" / weights), load_file(straight / "export" / weights), RESUME_ATOL)


@slow
def test_fsdp_resumes_from_a_sharded_checkpoint(fsdp_full, fsdp_full_resumed):
    ckpt = fsdp_full / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir(), "FSDP state_dict_type=sharded writes a directory"
    shards = sorted(p.name for p in ckpt.glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"], shards  # one shard file per rank
    assert torch.load(ckpt / "meta.pt", weights_only=False)["global_step"] == STEPS
    worst = _check_resumed(fsdp_full_resumed, fsdp_full, "model.safetensors")
    print(f"FSDP full, resumed at step {STOP} vs uninterrupted, {STEPS} steps: max |diff| {worst:.3g}")


@slow
def test_lora_under_fsdp_resumes_from_a_sharded_checkpoint(fsdp_lora_dropout, fsdp_lora_resumed):
    straight = fsdp_lora_dropout
    meta = torch.load(straight / "checkpoints" / "last.ckpt" / "meta.pt", weights_only=False)
    assert len(meta["rng_states"]) == 2  # both ranks' states, gathered
    assert (straight / "checkpoints" / "last.ckpt" / "meta.pt").is_file()
    worst = _check_resumed(fsdp_lora_resumed, straight, "adapter/adapter_model.safetensors")
    print(f"FSDP LoRA, resumed at step {STOP} vs uninterrupted, {STEPS} steps: max |diff| {worst:.3g}")


@slow
@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_peft_under_fsdp_exports_adapter_and_merged_model(peft_run, adapter, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fsdp, ddp = peft_run("fsdp", adapter), peft_run("ddp", adapter)
    weights = load_file(fsdp / "export" / "adapter" / "adapter_model.safetensors")
    assert weights and not any("_fsdp_wrapped_module" in k or "_checkpoint_wrapped" in k for k in weights)
    worst = _assert_close(weights, load_file(ddp / "export" / "adapter" / "adapter_model.safetensors"), PARITY_ATOL)
    assert all(weights[k].abs().max() > 0 for k in weights if "lora_B" in k)  # B starts at zero: it trained

    merged = load_file(fsdp / "export" / "merged" / "model.safetensors")
    init = _initial_model(data_dir, tmp_path)
    assert merged.keys() == init.state_dict().keys()
    worst = max(worst, _assert_close(merged, load_file(ddp / "export" / "merged" / "model.safetensors"), PARITY_ATOL))
    print(f"{adapter} FSDP vs DDP (adapter + merged): max |diff| {worst:.3g}")

    # the merged export computes what the base + the saved adapter computes
    peft_model = PeftModel.from_pretrained(init, fsdp / "export" / "adapter").eval()
    model = AutoModelForCausalLM.from_pretrained(fsdp / "export").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids).logits, peft_model(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_resolve_ckpt_path_accepts_sharded_directories(tmp_path):
    from zhilu.train.run import resolve_ckpt_path

    assert resolve_ckpt_path("last_if_any", str(tmp_path)) is None  # nothing yet: start fresh
    with pytest.raises(ConfigError, match=r"^ckpt_path=last: no checkpoint to resume from at "):
        resolve_ckpt_path("last", str(tmp_path))  # asked to resume, with nothing to resume from
    sharded = tmp_path / "checkpoints" / "last.ckpt"
    sharded.mkdir(parents=True)
    (sharded / "meta.pt").write_bytes(b"")  # Lightning's metadata file beside the shards
    assert resolve_ckpt_path("last", str(tmp_path)) == str(sharded)
    assert resolve_ckpt_path(str(sharded), str(tmp_path)) == str(sharded)
    with pytest.raises(ConfigError, match=r"^ckpt_path=\S+/nowhere.ckpt: no such checkpoint file or directory$"):
        resolve_ckpt_path(str(tmp_path / "nowhere.ckpt"), str(tmp_path))


def test_badam_is_refused_under_fsdp_on_any_device_count(tmp_path):
    from zhilu.adapters import BAdam, LoRA
    from zhilu.train import compat

    for devices in (1, 2):
        cfg = compose_train(["trainer=fsdp", "trainer.accelerator=cpu", f"trainer.devices={devices}"], tmp_path)
        with pytest.raises(ConfigError, match=r"^adapter=badam with trainer=fsdp is not supported: [^\n]+$"):
            compat.check(cfg, BAdam(), object())
        compat.check(cfg, LoRA(), object())


def test_full_state_dict_checkpoints_are_refused_under_fsdp_on_cpu(tmp_path):
    from zhilu.adapters import LoRA
    from zhilu.train import compat

    cfg = compose_train(["trainer=fsdp", "trainer.accelerator=cpu", "trainer.strategy.state_dict_type=full"], tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.strategy.state_dict_type=full with trainer=fsdp on CPU [^\n]+$"):
        compat.check(cfg, LoRA(), object())
