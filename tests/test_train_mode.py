"""Issue 21: a model loaded from ``model.path`` trains in training mode (dropout on, gradient checkpointing on).

``from_pretrained`` returns a model in eval mode and Lightning does not switch it back, so before the fix
LoRA dropout was off and transformers skipped gradient checkpointing for every ``model.path`` run. Each
run here is a real ``trainer.fit`` from a saved copy of the small model, probed inside ``training_step``
(tests/helpers/mode_probe.py). With 8 samples and batch 4, an epoch is 2 steps: the validation after
step 2 must hand steps 3 and 4 back in training mode.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, compose_train, fast_overrides
from zhilu.train.run import train

STEPS = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The small model saved as a Hugging Face folder (what ``model.path`` points at)."""
    from zhilu.model import ModelBuilder

    out = tmp_path_factory.mktemp("saved") / "tiny"
    builder = ModelBuilder(config=TINY)
    tok = builder.load_tokenizer()
    builder.build(tok, device_type="cpu").save_pretrained(out)
    tok.save_pretrained(out)
    return out


def probed_run(sft_dir: Path, model_dir: Path, run: Path, *overrides: str) -> dict:
    out = run / "probe"
    train(compose_train(fast_overrides(
        sft_dir, f"model.path={model_dir}", "data.limit_train_samples=8", f"trainer.max_steps={STEPS}",
        "objective._target_=tests.helpers.mode_probe.ProbeSFT", f"+objective.out_dir={out}",
        "+callbacks.probe._target_=tests.helpers.mode_probe.ProbeCounts", f"+callbacks.probe.out_dir={out}",
        "callbacks.export.enabled=false", "callbacks.model_checkpoint=null", "validate_after_fit=false",
        *overrides,
    ), run))
    return json.loads((out / "rank0.json").read_text())


def assert_training_in_every_step(probe: dict) -> None:
    assert len(probe["steps"]) == STEPS
    for i, step in enumerate(probe["steps"]):
        assert step["n_not_training"] == 0, f"step {i + 1}: modules in eval mode, e.g. {step['not_training']}"
    assert probe["val"], "no validation ran between the steps"
    assert all(v["training"] == [] for v in probe["val"]), "validation ran in training mode"


@pytest.mark.parametrize("adapter", ["full", "lora", "dora"])
def test_loaded_model_trains_in_training_mode_with_gradient_checkpointing(sft_dir, model_dir, tmp_path, adapter):
    probe = probed_run(sft_dir, model_dir, tmp_path, f"adapter={adapter}", "model.gradient_checkpointing=true")
    assert_training_in_every_step(probe)
    # every decoder layer runs forward twice per step: once in the forward pass, once recomputed in backward
    assert probe["layer_calls"] == [[2] * TINY["num_hidden_layers"]] * STEPS


def test_gradient_checkpointing_of_a_loaded_model_saves_fewer_activations(sft_dir, model_dir, tmp_path):
    off = probed_run(sft_dir, model_dir, tmp_path / "off", "adapter=full", "model.gradient_checkpointing=false")
    on = probed_run(sft_dir, model_dir, tmp_path / "on", "adapter=full", "model.gradient_checkpointing=true")
    assert off["layer_calls"] == [[1] * TINY["num_hidden_layers"]] * STEPS  # no recomputation without it
    h, i, n = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"]
    for a, b in zip(off["steps"], on["steps"]):  # the same batches, step by step
        assert a["tokens"] == b["tokens"]
        # Without checkpointing each layer keeps at least 4 [tokens, hidden] tensors (the inputs of its two
        # norms, of q/k/v and of o_proj) and 3 [tokens, intermediate] ones (gate and up outputs, the input
        # of down_proj), fp32; with it, none of them (only what lies outside the layers stays saved).
        floor = n * a["tokens"] * (4 * h + 3 * i) * 4
        assert a["saved_bytes"] - b["saved_bytes"] >= floor, (a["saved_bytes"], b["saved_bytes"], floor)


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_adapter_dropout_is_on_for_a_loaded_model(sft_dir, model_dir, tmp_path, adapter):
    # random B (init_lora_weights=false): with B = 0 the adapter's output, and so its dropout, is invisible
    probe = probed_run(sft_dir, model_dir, tmp_path, f"adapter={adapter}", "adapter.dropout=0.1",
                       "+adapter.init_lora_weights=false")
    assert_training_in_every_step(probe)
    assert all(step["forwards_differ"] for step in probe["steps"])


def test_without_dropout_two_forwards_agree(sft_dir, model_dir, tmp_path):
    """The probe's control: with dropout 0 the two forward passes in a training step are equal."""
    probe = probed_run(sft_dir, model_dir, tmp_path, "adapter=lora", "adapter.dropout=0",
                       "+adapter.init_lora_weights=false")
    assert not any(step["forwards_differ"] for step in probe["steps"])


@pytest.mark.slow  # four 2-process runs on CPU (gloo), ~20-60 s each on 2 cores
@pytest.mark.parametrize(("trainer", "adapter", "extra"), [
    ("fsdp", "lora", ()), ("fsdp", "dora", ()), ("ddp", "lora", ("model.gradient_checkpointing=true",)),
    # both FSDP's and transformers' checkpointing on (model=llama3_8b* with trainer=fsdp): the nested
    # (non-reentrant) checkpoints still recompute each layer once
    ("fsdp", "lora", ("model.gradient_checkpointing=true",))])
def test_loaded_model_trains_in_training_mode_on_two_processes(model_dir, tmp_path, trainer, adapter, extra):
    """``trainer=fsdp|ddp`` on two CPU processes: every rank trains the loaded model in training mode, with
    adapter dropout on and each decoder layer recomputed (FSDP: its activation checkpointing of each layer;
    DDP: ``model.gradient_checkpointing``)."""
    from tests.conftest import DIALOGUES, ROOT, write_jsonl

    data = tmp_path / "data"
    write_jsonl(data / "finance_sft" / "train.jsonl", [{"messages": m} for m in DIALOGUES * 4])
    write_jsonl(data / "finance_sft" / "val.jsonl", [{"messages": m} for m in DIALOGUES])
    run, out = tmp_path / "run", tmp_path / "probe"
    # 16 samples, 8 per rank, batch 4: 2 steps an epoch, validation after steps 2 and 4
    cmd = [sys.executable, str(ROOT / "train.py"), f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "debug=fast", f"trainer.max_steps={STEPS}", f"paths.data_dir={data}",
           f"hydra.run.dir={run}", "trainer.enable_progress_bar=false", f"model.path={model_dir}",
           f"adapter={adapter}", "adapter.dropout=0.1", "+adapter.init_lora_weights=false", *extra,
           "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.export.enabled=false",
           "objective._target_=tests.helpers.mode_probe.ProbeSFT", f"+objective.out_dir={out}",
           "+callbacks.probe._target_=tests.helpers.mode_probe.ProbeCounts", f"+callbacks.probe.out_dir={out}"]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=path))
    assert r.returncode == 0, r.stderr[-4000:]
    for rank in (0, 1):
        probe = json.loads((out / f"rank{rank}.json").read_text())
        assert len(probe["steps"]) == STEPS
        for i, step in enumerate(probe["steps"]):
            assert step["n_not_training"] == 0, f"rank {rank} step {i + 1}: eval-mode modules {step['not_training']}"
            assert step["forwards_differ"], f"rank {rank} step {i + 1}: adapter dropout is off"
        assert probe["val"] and all(v["training"] == [] for v in probe["val"])
        assert probe["layer_calls"] == [[2] * TINY["num_hidden_layers"]] * STEPS
