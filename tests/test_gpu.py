"""GPU paths (run on a CUDA machine: `pytest -m gpu tests/test_gpu.py`): bf16 training,
packed attention backends, fused loss, DeepSpeed on one device."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _train(tmp_path, *args, timeout=600):
    model = [f"model.config.{k}={v}" for k, v in TINY.items()]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "logger=csv", "trainer.enable_progress_bar=false",
                        f"hydra.run.dir={tmp_path}", *model, *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("adapter", ["full", "lora", "dora", "loraplus", "badam"])
def test_bf16_training_on_gpu(tmp_path, adapter):
    m = _train(tmp_path, "trainer=gpu", f"adapter={adapter}", "trainer.max_steps=6")
    assert m["status"] == "finished" and m["global_step"] == 6
    assert "peak_cuda_allocated_mb" in m


def test_packed_training_with_flex_attention(tmp_path):
    m = _train(tmp_path, "trainer=gpu", "data.packing=true", "model.attn_implementation=flex_attention",
               "trainer.max_steps=6")
    assert m["global_step"] == 6 and m["data"]["packing/efficiency"] > 0.5  # small sample set: few rows


def _packed_vs_padded(attn: str, dtype):
    from zhilu.data.collate import PackedCollator, PaddedCollator
    from zhilu.data.encode import ChatEncoder
    from zhilu.model import ModelBuilder
    from zhilu.objectives.logps import label_logps
    from tests.conftest import DIALOGUES

    if attn == "flex_attention":  # as on CPU: a fresh static-shape compile for this test's two layouts
        torch._dynamo.reset()
    b = ModelBuilder(config=TINY, dtype=dtype, attn_implementation=attn)
    tok = b.load_tokenizer()
    model = b.build(tok).cuda().eval()
    enc = ChatEncoder(tok, max_length=256)
    exs = [enc.sft(m) for m in DIALOGUES]
    padded = PaddedCollator(tok.pad_token_id)(exs)
    packed = PackedCollator(tok.pad_token_id)([exs])
    cuda = lambda batch: {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items()}  # noqa: E731
    with torch.no_grad():
        a = label_logps(model, cuda(padded), "torch").seq_logps
        p = label_logps(model, cuda(packed), "torch").seq_logps
    return a, p


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention", "eager"])
def test_packed_equals_padded_on_gpu_fp32(attn):
    a, p = _packed_vs_padded(attn, "float32")
    torch.testing.assert_close(p, a, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_packed_equals_padded_on_gpu_bf16(attn):
    a, p = _packed_vs_padded(attn, "bfloat16")
    # bf16 rounding differs between the two layouts' kernels; sums over ~20 tokens
    torch.testing.assert_close(p, a, atol=0.5, rtol=2e-2)


def test_liger_fused_loss_matches_torch():
    pytest.importorskip("liger_kernel")
    from zhilu.objectives.logps import label_logps
    from zhilu.data.collate import PaddedCollator
    from zhilu.data.encode import ChatEncoder
    from zhilu.model import ModelBuilder
    from tests.conftest import DIALOGUES

    b = ModelBuilder(config=TINY, dtype="float32", attn_implementation="sdpa")
    tok = b.load_tokenizer()
    model = b.build(tok).cuda()
    enc = ChatEncoder(tok, max_length=256)
    batch = {k: (v.cuda() if torch.is_tensor(v) else v)
             for k, v in PaddedCollator(tok.pad_token_id)([enc.sft(m) for m in DIALOGUES]).items()}
    ref = label_logps(model, batch, "torch").token_logps
    fused = label_logps(model, batch, "liger").token_logps
    torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("trainer", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_single_gpu(tmp_path, trainer):
    pytest.importorskip("deepspeed")
    m = _train(tmp_path, f"trainer={trainer}", "trainer.devices=1", "adapter=lora", "trainer.max_steps=4",
               "callbacks.model_checkpoint.every_n_train_steps=2")
    assert m["global_step"] == 4
    assert (tmp_path / "export" / "model.safetensors").is_file()
