"""Each adapter trains exactly what it should; exports reproduce the trained model's logits."""

import subprocess
import sys
from functools import partial

import pytest
import torch

from tests.conftest import DIALOGUES, ROOT, TINY
from zhilu.adapters import BAdam, FullFineTune, LoRA, LoRAPlus
from zhilu.adapters.badam import BlockOrder
from zhilu.data.collate import PaddedCollator
from zhilu.data.encode import ChatEncoder
from zhilu.model import ModelBuilder
from zhilu.objectives import SFT
from zhilu.train.module import ZhiluModule


def make_module(tokenizer, adapter, lr=1e-2, weight_decay=0.0):
    module = ZhiluModule(ModelBuilder(config=TINY, seed=0), adapter, SFT(),
                         optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay),
                         scheduler=None, tokenizer=tokenizer)
    module.configure_model()
    return module


def batch(tokenizer):
    enc = ChatEncoder(tokenizer, max_length=128)
    return PaddedCollator(tokenizer.pad_token_id)([enc.sft(m) for m in DIALOGUES])


def steps(module, tokenizer, n):
    opt = module.adapter.build_optimizer(module.model, module.optimizer_factory, 1e-2, 0.0)
    b = batch(tokenizer)
    for _ in range(n):
        loss, _ = module.objective.loss(module, b, "train")
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def changed(before, model):
    return {k for k, v in model.named_parameters() if not torch.equal(before[k], v.detach())}


@pytest.mark.parametrize("adapter, expected", [
    (LoRA(r=4), ("lora_A", "lora_B")),
    (LoRA(r=4, use_dora=True), ("lora_A", "lora_B", "lora_magnitude_vector")),
    (LoRAPlus(r=4, lr_ratio=16), ("lora_A", "lora_B")),
    (LoRAPlus(r=4, use_dora=True), ("lora_A", "lora_B", "lora_magnitude_vector")),
], ids=["lora", "dora", "loraplus", "loraplus_dora"])
def test_peft_adapters_change_exactly_their_parameters(tokenizer, adapter, expected):
    module = make_module(tokenizer, adapter)
    before = snapshot(module.model)
    steps(module, tokenizer, 2)  # B starts at 0, so A moves from the second step on
    want = {k for k in before if any(tag in k for tag in expected)}
    assert want and changed(before, module.model) == want
    # all-linear: every projection of every decoder layer, not lm_head
    targets = {k.split(".lora_A")[0] for k in before if "lora_A" in k}
    assert len(targets) == TINY["num_hidden_layers"] * 7 and not any("lm_head" in t for t in targets)


def test_full_changes_everything_not_frozen(tokenizer):
    module = make_module(tokenizer, FullFineTune(freeze=["model.embed_tokens.*"]))
    before = snapshot(module.model)
    steps(module, tokenizer, 1)
    assert changed(before, module.model) == {k for k in before if not k.startswith("model.embed_tokens")}


def test_loraplus_groups_carry_their_learning_rates_and_decay(tokenizer):
    module = make_module(tokenizer, LoRAPlus(r=4, lr_ratio=16, use_dora=True))
    groups = {g["name"]: g for g in module.adapter.param_groups(module.model, lr=1e-4, weight_decay=0.05)}
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert groups["A"]["lr"] == 1e-4 and groups["A"]["weight_decay"] == 0.05
    assert groups["B"]["lr"] == pytest.approx(1.6e-3) and groups["B"]["weight_decay"] == 0.05
    assert groups["no_decay"]["lr"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    assert all("lora_B" in names[id(p)] for p in groups["B"]["params"])
    assert all("lora_A" in names[id(p)] for p in groups["A"]["params"])
    assert all("magnitude" in names[id(p)] for p in groups["no_decay"]["params"])
    n_trainable = sum(1 for p in module.model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable


@pytest.mark.parametrize("mode, start, expected", [
    ("ascending", None, [0, 1, 0, 1, 0]),
    ("descending", None, [1, 0, 1, 0, 1]),
    ("fixed", 1, [1, 1, 1, 1, 1]),
])
def test_badam_block_order(mode, start, expected):
    order = BlockOrder(2, mode, start, seed=0)
    assert [order.current] + [order.next() for _ in range(4)] == expected


def test_badam_random_order_visits_every_block_each_sweep():
    order = BlockOrder(5, "random", None, seed=7)
    seq = [order.current] + [order.next() for _ in range(14)]
    for sweep in range(3):
        assert sorted(seq[5 * sweep: 5 * sweep + 5]) == [0, 1, 2, 3, 4]
    assert BlockOrder(5, "random", None, seed=7).current == seq[0]


def test_badam_trains_only_the_active_block_and_switches(tokenizer):
    module = make_module(tokenizer, BAdam(switch_interval=2, switch_mode="ascending"))
    block = lambda i: {k for k in snapshot(module.model) if f"layers.{i}." in k}  # noqa: E731
    before = snapshot(module.model)
    opt = module.adapter.build_optimizer(module.model, module.optimizer_factory, 1e-2, 0.0)
    b = batch(tokenizer)

    def step():
        loss, _ = module.objective.loss(module, b, "train")
        loss.backward()
        grads = {n for n, p in module.model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad()
        return grads

    assert step() == block(0)
    # optimizer state only for the active block
    state_names = {n for n, p in module.model.named_parameters() if p in opt.state}
    assert state_names == block(0)
    assert changed(before, module.model) == block(0)
    assert step() == block(0)
    assert opt.active_block == 1 and len(opt.state) == 0  # switched; old state dropped
    assert {n for n, p in module.model.named_parameters() if p.requires_grad} == block(1)
    assert step() == block(1)
    assert changed(before, module.model) == block(0) | block(1)


@pytest.mark.parametrize("adapter", [LoRA(r=4), LoRA(r=4, use_dora=True)], ids=["lora", "dora"])
def test_peft_export_round_trips_reproduce_logits(tokenizer, tmp_path, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module = make_module(tokenizer, adapter)
    steps(module, tokenizer, 3)
    model = module.model.eval()
    ids = batch(tokenizer)["input_ids"][:1]
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with adapter.disabled(model):
            base_logits = model(input_ids=ids).logits
    assert not torch.allclose(want, base_logits, atol=1e-4)  # the adapter matters
    adapter.export(model, tokenizer, tmp_path / "export")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    base = ModelBuilder(config=TINY, seed=0).build(tokenizer)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "export" / "adapter").eval()
    with torch.no_grad():
        # fp32; merging reorders the sums, so agreement is to rounding (1e-5 absolute)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reloaded(input_ids=ids).logits, want, atol=1e-6, rtol=1e-6)
        # exporting left the live model as it was
        torch.testing.assert_close(model(input_ids=ids).logits, want, atol=1e-6, rtol=1e-6)


def test_multirun_over_every_adapter(tmp_path, sft_dir):
    model = [f"model.config.{k}={v}" for k, v in TINY.items()]
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "adapter=full,lora,loraplus,dora,badam",
         "trainer.max_steps=3", "debug=fast", "callbacks.model_checkpoint=null", f"paths.data_dir={sft_dir}",
         f"hydra.sweep.dir={tmp_path}/sweep", "trainer.enable_progress_bar=false", *model],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    adapters = [json.loads(p.read_text())["adapter"] for p in runs]
    assert adapters == ["full", "lora", "loraplus", "dora", "badam"]
    assert all(json.loads(p.read_text())["global_step"] == 3 for p in runs)
