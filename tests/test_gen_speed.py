"""Ablation callbacks: generation speed (the merged copy computes the live model's function; exact
token counts) and training cost (per-job memory peaks, CPU time)."""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY
from zhilu.adapters import BAdam, FullFineTune, LoRA
from zhilu.errors import ConfigError
from zhilu.model import ModelBuilder
from zhilu.objectives import SFT
from zhilu.train.cost import TrainCost, peak_rss_mb, reset_peak_rss
from zhilu.train.gen_speed import GenerationSpeed, merged_copy, token_agreement
from zhilu.train.module import ZhiluModule

ADAPTERS = {
    "full": lambda: FullFineTune(),
    "badam": lambda: BAdam(switch_interval=1),
    # random B (init_lora_weights=False): the merge is not a no-op
    "lora": lambda: LoRA(r=4, alpha=8, dropout=0.0, init_lora_weights=False),
    "dora": lambda: LoRA(r=4, alpha=8, dropout=0.0, use_dora=True, init_lora_weights=False),
}


def make_module(tokenizer, adapter):
    module = ZhiluModule(ModelBuilder(config=TINY, seed=0), adapter, SFT(),
                         optimizer=partial(torch.optim.AdamW, lr=1e-3), scheduler=None, tokenizer=tokenizer)
    module.configure_model()
    return module


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_merged_copy_computes_the_live_model(tokenizer, name):
    module = make_module(tokenizer, ADAPTERS[name]())
    ids = torch.tensor([tokenizer.encode("信用卡的免息期 APR", add_special_tokens=False)])
    module.model.eval()
    with torch.no_grad():
        live = module.model(input_ids=ids).logits
        merged = merged_copy(module.adapter, module.model)
        copied = merged(input_ids=ids).logits
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(copied, live, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the live model is left as it was (adapters unmerged)
        torch.testing.assert_close(module.model(input_ids=ids).logits, live)


def test_merged_copy_keeps_the_training_dtype(tokenizer):
    module = ZhiluModule(ModelBuilder(config=TINY, seed=0, dtype="bfloat16"), ADAPTERS["lora"](), SFT(),
                         tokenizer=tokenizer)
    module.configure_model()
    merged = merged_copy(module.adapter, module.model)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}


def test_measure_counts_exact_tokens_and_restores_train_mode(tokenizer):
    module = make_module(tokenizer, ADAPTERS["lora"]())
    module.model.train()
    cb = GenerationSpeed(prompts=["什么是年化利率？", "What is APR?"], max_new_tokens=3, warmup=1, repeats=2)
    out = cb.measure(module)
    assert out["gen_prompts"] == 2 and out["gen_new_tokens"] == 6  # counted: EOS cannot stop a prompt early
    assert out["gen_repeats"] == 2
    assert out["gen_tokens_per_s_unmerged"] > 0 and out["gen_tokens_per_s_merged"] > 0
    assert out["gen_speedup_merged"] == pytest.approx(out["gen_tokens_per_s_merged"] / out["gen_tokens_per_s_unmerged"])
    assert out["gen_merged_agreement"] == 1.0  # greedy decoding: merged and live pick the same tokens
    assert module.model.training


def test_without_merged_only_the_live_model_is_timed(tokenizer):
    module = make_module(tokenizer, FullFineTune())
    out = GenerationSpeed(prompts=["x"], max_new_tokens=2, warmup=0, merged=False).measure(module)
    assert "gen_tokens_per_s_unmerged" in out and "gen_tokens_per_s_merged" not in out


def test_token_agreement_hand_worked():
    # prompt 1: 2 of 3 positions agree; prompt 2: 1 of max(2, 3) = 3
    assert token_agreement([[1, 2, 3], [4, 5]], [[1, 2, 4], [4, 6, 7]]) == pytest.approx(3 / 6)
    assert token_agreement([], []) == 1.0


@pytest.mark.parametrize("kw, culprit", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"warmup": -1}, "warmup"), ({"repeats": 0}, "repeats"),
    ({"prompts": []}, "prompts"), ({"prompts": ["ok", " "]}, "prompts")])
def test_bad_settings_name_the_culprit(kw, culprit):
    with pytest.raises(ConfigError, match=culprit):
        GenerationSpeed(**kw)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs is Linux only")
def test_peak_rss_resets_between_jobs_of_one_process():
    if not reset_peak_rss():
        pytest.skip("clear_refs not writable here")
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB resident
    block.add_(1)
    high = peak_rss_mb()
    del block
    assert reset_peak_rss()
    assert peak_rss_mb() < high - 48  # the 64 MiB peak of the earlier "job" is forgotten


def fake_trainer(optimizers=()):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), callbacks=[],
                           is_global_zero=True, optimizers=list(optimizers))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs is Linux only")
def test_train_cost_counts_step_cpu_time_tokens_and_memory_over_start(tmp_path):
    module = torch.nn.Linear(4, 3)  # 15 fp32 weights (60 B), all trained; no optimizer state
    cost, trainer = TrainCost(output_dir=str(tmp_path)), fake_trainer()
    cost.on_fit_start(trainer, module)
    kept = []
    for i in range(2):
        cost.on_train_batch_start(trainer, module, {}, i)
        t = time.process_time()
        while time.process_time() - t < 0.05:  # 50 ms of CPU work per step
            pass
        kept.append(torch.ones(32 * 2**20 // 4).add_(1))  # 32 MiB per step, resident until the end
        cost.on_train_batch_end(trainer, module, None, {"num_tokens": 100}, i)
    time.sleep(0.2)  # wall time outside the steps is not counted
    cost.on_train_end(trainer, module)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.1 <= m["train_cpu_time_s"] < 0.5
    assert m["train_tokens_per_cpu_s"] == pytest.approx(200 / m["train_cpu_time_s"])
    assert 60 <= m["train_memory_over_start_mb"] < 200  # the 64 MiB kept, not the process baseline
    assert m["train_peak_memory_mb"] >= m["train_memory_over_start_mb"]
    assert m["train_state_mb"] * 2**20 == 60 + 60  # weights + one gradient buffer each


def test_training_state_counts_weights_grads_and_adam_state_by_hand():
    from zhilu.utils.memory import training_state_mb

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2, bias=False))
    model[1].weight.requires_grad_(False)  # frozen: weights only
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    mb = training_state_mb(model, [opt])
    # weights: (12 + 3 + 6) fp32 = 84 B; grads: the 15 trainable = 60 B;
    # AdamW: exp_avg + exp_avg_sq (2 x 60 B) + one fp32 scalar step per parameter tensor (2 x 4 B) = 128 B
    assert mb["train_state_weights_mb"] * 2**20 == 84
    assert mb["train_state_grads_mb"] * 2**20 == 60
    assert mb["train_state_optimizer_mb"] * 2**20 == 128
    assert mb["train_state_mb"] * 2**20 == 84 + 60 + 128
