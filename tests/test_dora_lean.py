"""The lean DoRA layer gives peft's numbers and keeps one activation less per adapted layer."""

import weakref

import pytest
import torch
from peft.tuners.lora.dora import DoraLinearLayer

from tests.conftest import DIALOGUES, TINY
from zhilu.adapters import LoRA
from zhilu.adapters.dora import LeanDoraLinearLayer, _DoraScale
from zhilu.data.collate import PaddedCollator
from zhilu.data.encode import ChatEncoder
from zhilu.model import ModelBuilder


def build(tokenizer, lean: bool, dropout: float, bias: bool = False):
    config = dict(TINY, attention_bias=bias, mlp_bias=bias)
    model = ModelBuilder(config=config, seed=0).build(tokenizer)
    torch.manual_seed(0)  # LoRA A init
    model = LoRA(r=4, alpha=8, dropout=dropout, use_dora=True, lean_dora=lean).apply(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would hide any error in the LoRA branch
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name or name.endswith("bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.train()


def batch(tokenizer):
    enc = ChatEncoder(tokenizer, max_length=128)
    return PaddedCollator(tokenizer.pad_token_id)([enc.sft(m) for m in DIALOGUES])


def forward_backward(model, b):
    torch.manual_seed(123)  # the same dropout masks in both models
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.parametrize("dropout, bias", [(0.0, False), (0.1, False), (0.0, True)],
                         ids=["direct", "dropout", "bias"])
def test_lean_dora_matches_peft(tokenizer, dropout, bias):
    b = batch(tokenizer)
    stock, lean = build(tokenizer, False, dropout, bias), build(tokenizer, True, dropout, bias)
    n_lean = sum(isinstance(m, LeanDoraLinearLayer) for m in lean.modules())
    n_layers = TINY["num_hidden_layers"]
    assert n_lean == n_layers * 7 and not any(isinstance(m, LeanDoraLinearLayer) for m in stock.modules())
    assert stock.state_dict().keys() == lean.state_dict().keys()
    assert any(k.endswith("base_layer.bias") for k in lean.state_dict()) == bias
    loss_s, logits_s, grads_s = forward_backward(stock, b)
    loss_l, logits_l, grads_l = forward_backward(lean, b)
    torch.testing.assert_close(loss_l, loss_s, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits_l, logits_s, rtol=1e-5, atol=1e-5)
    assert grads_s.keys() == grads_l.keys() and any("magnitude" in k for k in grads_s)
    for k in grads_s:
        assert grads_s[k].abs().max() > 0, k
        torch.testing.assert_close(grads_l[k], grads_s[k], rtol=1e-4, atol=1e-7, msg=k)


def saved_bytes(model, b) -> int:
    """Bytes of the distinct storages that the autograd graph still holds after one forward."""
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))  # a graph freed during forward (peft's norm) frees its tensors
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    live = [r() for r in saved if r() is not None]
    total = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in live}.values())
    del out
    return total


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lean_dora_saves_one_activation_less_per_layer(tokenizer, dropout):
    b = batch(tokenizer)
    stock, lean = build(tokenizer, False, dropout), build(tokenizer, True, dropout)
    tokens = b["input_ids"].numel()
    out_features = sum(m.base_layer.out_features for m in lean.modules() if hasattr(m, "lora_magnitude_vector"))
    # peft keeps W x' and B A x' (fp32, tokens x out) per adapted layer, the lean layer their sum;
    # peft also keeps g - 1 next to g (a vector of out floats per layer, at most)
    saving = saved_bytes(stock, b) - saved_bytes(lean, b)
    assert 0 <= saving - tokens * out_features * 4 <= out_features * 4


def test_dora_delta_gradients_by_finite_differences():
    torch.manual_seed(0)
    base = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    lora = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    g = torch.rand(1, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, l, m: _DoraScale.apply(b, l, m, 0.7), (base, lora, g))
    expected = g * (base + 0.7 * lora)
    torch.testing.assert_close(_DoraScale.apply(base, lora, g, 0.7), expected)


def test_export_and_merge_unchanged(tokenizer, tmp_path):
    """Merging uses peft's code on the same state; the merged model reproduces the lean model."""
    b = batch(tokenizer)
    lean = build(tokenizer, True, 0.0).eval()
    with torch.no_grad():
        live = lean(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        merged = lean.merge_and_unload()
        assert not any(isinstance(m, DoraLinearLayer) for m in merged.modules())
        out = merged(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(out, live, rtol=1e-4, atol=1e-4)


def test_scale_is_cached_in_eval_without_autograd_until_a_weight_changes(tokenizer, monkeypatch):
    b = batch(tokenizer)
    lean, stock = build(tokenizer, True, 0.0).eval(), build(tokenizer, False, 0.0).eval()
    calls = []
    original = LeanDoraLinearLayer.get_weight_norm

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LeanDoraLinearLayer, "get_weight_norm", counting)
    n_layers = sum(isinstance(m, LeanDoraLinearLayer) for m in lean.modules())

    def logits(model):
        with torch.no_grad():
            return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits

    first = logits(lean)
    assert len(calls) == n_layers
    torch.testing.assert_close(logits(lean), first, rtol=0, atol=0)
    assert len(calls) == n_layers  # the second pass computed no norm
    with torch.no_grad():  # an in-place change (an optimizer step, load_state_dict) invalidates the cache
        for model in (lean, stock):
            for name, p in model.named_parameters():
                if "lora_B" in name or "lora_magnitude_vector" in name:
                    p.mul_(1.5)
    changed = logits(lean)
    assert len(calls) == 2 * n_layers and not torch.allclose(changed, first)
    torch.testing.assert_close(changed, logits(stock), rtol=1e-5, atol=1e-5)
    lean.load_state_dict(stock.state_dict())
    torch.testing.assert_close(logits(lean), logits(stock), rtol=1e-5, atol=1e-5)
    assert len(calls) == 3 * n_layers  # load_state_dict copies in place: recomputed (same values here)
    lean.train().eval()  # back to training clears it (sharding engines swap storage without a version bump)
    logits(lean)
    assert len(calls) == 4 * n_layers
    lean.train()
    with torch.no_grad():  # train mode under no_grad (e.g. a reference pass) never caches
        lean(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        lean(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    assert len(calls) == 6 * n_layers
