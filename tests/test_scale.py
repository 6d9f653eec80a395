"""Scale-out: MFU arithmetic, refused combinations, engine configs, DDP on two CPU processes."""

import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import ROOT, TINY, compose_train
from zhilu.errors import ConfigError
from zhilu.train import compat, flops


def test_flops_per_token_and_mfu_by_hand():
    # 1e9 matmul params, 16 layers, attention width 2048, 2048-token sequences:
    # 6 * 1e9 + 12 * 16 * 2048 * 2048 = 6e9 + 805,306,368 = 6,805,306,368 FLOPs per token
    assert flops.flops_per_token(10**9, 16, 2048, 2048) == 6_805_306_368
    # LoRA: frozen weights get no weight gradients: 4e9 + 2 * 1e7 + 805,306,368
    assert flops.flops_per_token(10**9, 16, 2048, 2048, n_trainable=10**7) == 4_825_306_368
    # 40,000 tokens/s on an H100 SXM (989 TFLOP/s): 2.7221225472e14 / 9.89e14 = 27.52%
    assert flops.mfu(40_000, 6_805_306_368, 989e12) == pytest.approx(0.275240, abs=1e-6)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA H100 PCIe", 756e12), ("Tesla T4", None)])
def test_peak_flops_table(name, peak):
    assert flops.peak_flops(name) == peak


def test_matmul_params_excludes_the_embedding_table(tokenizer):
    from zhilu.model import ModelBuilder

    m = ModelBuilder(config=TINY).build(tokenizer)
    total = sum(p.numel() for p in m.parameters())
    assert flops.matmul_params(m) == total - len(tokenizer) * TINY["hidden_size"]


def test_refusals_are_one_line(tmp_path):
    from zhilu.adapters import BAdam, FullFineTune, LoRA
    from zhilu.objectives import DPO

    cfg = compose_train(["trainer=ddp", "trainer.devices=2"], tmp_path)
    with pytest.raises(ConfigError, match=r"adapter=badam with trainer=ddp on 2 devices is not supported"):
        compat.check(cfg, BAdam(), object())
    compat.check(cfg, LoRA(), object())  # fine
    cfg = compose_train(["trainer=deepspeed_zero3", "trainer.devices=4"], tmp_path)
    with pytest.raises(ConfigError, match=r"objective=dpo with adapter=full needs a frozen copy"):
        compat.check(cfg, FullFineTune(), DPO())
    compat.check(cfg, LoRA(), DPO())
    compat.check(cfg, FullFineTune(), DPO(loss_type="simpo"))  # reference-free: no copy
    cfg = compose_train(["trainer=deepspeed_zero2", "trainer.devices=4"], tmp_path)
    compat.check(cfg, FullFineTune(), DPO())
    cfg = compose_train(["trainer=ddp", "trainer.devices=1"], tmp_path)
    compat.check(cfg, BAdam(), object())  # one device: fine
    cfg = compose_train(["trainer=cpu", "model.attn_implementation=flex_attention"], tmp_path)
    with pytest.raises(ConfigError, match=r"flex_attention cannot train on CPU: torch's FlexAttention has no CPU "
                                          r"backward"):
        compat.check(cfg, LoRA(), object())
    compat.check(compose_train(["trainer=cpu", "model.attn_implementation=sdpa_varlen"], tmp_path), LoRA(), object())


@pytest.mark.parametrize("option", ["deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"])
def test_deepspeed_configs_pass_the_engine_schema(option, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed not installed (pip install -r requirements-gpu.txt)")
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = compose_train([f"trainer={option}"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    ds_cfg = dict(strategy.config, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                  bf16={"enabled": True})
    parsed = DeepSpeedConfig(ds_cfg)  # pydantic: unknown or ill-typed keys raise
    assert parsed.zero_optimization_stage == cfg.trainer.strategy.stage
    assert (parsed.zero_config.offload_param is not None) == ("offload" in option)


def test_fsdp_config_wraps_llama_decoder_layers(tmp_path):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    cfg = compose_train(["trainer=fsdp"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    no_ckpt = instantiate(cfg.trainer.strategy, activation_checkpointing=False)
    assert not no_ckpt._activation_checkpointing_kwargs
    from zhilu.train.strategies import fsdp

    with pytest.raises(ConfigError, match="sharding_strategy='HALF'"):
        fsdp(sharding_strategy="HALF")


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path, sft_dir):
    model = [f"model.config.{k}={v}" for k, v in TINY.items()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))  # this checkout's source
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.precision=32-true", "adapter=full", "trainer.max_steps=3", "debug=fast",
         "callbacks.model_checkpoint=null", f"paths.data_dir={sft_dir}", f"hydra.run.dir={tmp_path}/run",
         "trainer.enable_progress_bar=false", "+callbacks.dump._target_=tests.helpers.dump_weights.DumpWeights",
         f"+callbacks.dump.out_dir={tmp_path}/dump", *model],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(tmp_path / "dump" / "rank0.pt"), torch.load(tmp_path / "dump" / "rank1.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
