"""Label log-probs: hand-worked values, the chunked (fused) LM head, sdpa_varlen == sdpa, errors."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import DIALOGUES, TINY
from zhilu.data.collate import PackedCollator, PaddedCollator
from zhilu.data.encode import ChatEncoder
from zhilu.errors import ConfigError
from zhilu.objectives.logps import base_causal_lm, label_logps, rows_forward

LSE = math.log(math.exp(2) + 2)  # log-sum-exp of the stub's logits (2, 0, 0)


class Stub(torch.nn.Module):
    """hidden = one-hot(token), lm_head = 2 I: log p(y | x) = 2 [x == y] - log(e^2 + 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(_attn_implementation="sdpa")
        self.lm_head = torch.nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(2 * torch.eye(3))

    def model(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(last_hidden_state=F.one_hot(input_ids, 3).float())


def test_hand_worked_padded():
    batch = {"input_ids": torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]]),
             "labels": torch.tensor([[-100, 1, 1, 2], [-100, 2, -100, -100]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
             "position_ids": torch.arange(4).expand(2, 4),
             "sequence_index": torch.tensor([[0, 0, 0, 0], [1, 1, -1, -1]]), "num_sequences": 2}
    lp = label_logps(Stub(), batch)
    # 1 after 0: miss; 1 after 1: hit; 2 after 1: miss | 2 after 2: hit
    expected = torch.tensor([-LSE, 2 - LSE, -LSE, 2 - LSE])
    torch.testing.assert_close(lp.token_logps, expected)
    assert lp.token_seq.tolist() == [0, 0, 0, 1]
    torch.testing.assert_close(lp.seq_logps, torch.tensor([2 - 3 * LSE, 2 - LSE]))
    torch.testing.assert_close(lp.seq_counts, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(lp.seq_mean_logps, torch.tensor([(2 - 3 * LSE) / 3, 2 - LSE]))


def test_hand_worked_packed_skips_the_boundary():
    # the two sequences above in one row; a label forged on sequence 1's first token (2 after 2: a "hit")
    batch = {"input_ids": torch.tensor([[0, 1, 1, 2, 2, 2]]),
             "labels": torch.tensor([[-100, 1, 1, 2, 2, 2]]),
             "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1]]),
             "sequence_index": torch.tensor([[0, 0, 0, 0, 1, 1]]), "num_sequences": 2}
    lp = label_logps(Stub(), batch)
    torch.testing.assert_close(lp.seq_logps, torch.tensor([2 - 3 * LSE, 2 - LSE]))
    torch.testing.assert_close(lp.seq_counts, torch.tensor([3.0, 1.0]))


@pytest.fixture(scope="module")
def model_and_batch(tokenizer):
    from zhilu.model import ModelBuilder

    model = ModelBuilder(config=TINY, dtype="float32", attn_implementation="sdpa", seed=2).build(tokenizer)
    enc = ChatEncoder(tokenizer, 256)
    return model, PaddedCollator(tokenizer.pad_token_id)([enc.sft(m) for m in DIALOGUES])


def test_chunked_equals_plain_values_and_gradients(model_and_batch):
    model, batch = model_and_batch
    params = [p for p in model.parameters() if p.requires_grad]
    plain = label_logps(model, batch, "torch", chunk_size=7)
    chunked = label_logps(model, batch, "chunked", chunk_size=7)
    assert plain.token_logps.numel() > 5 * 7  # several chunks, the last one partial
    torch.testing.assert_close(chunked.token_logps, plain.token_logps, atol=1e-6, rtol=1e-6)
    weights = torch.linspace(-1, 2, plain.seq_logps.numel())  # non-uniform per-sequence weights, as in DPO
    g_plain = torch.autograd.grad((plain.seq_logps * weights).sum(), params)
    g_chunk = torch.autograd.grad((chunked.seq_logps * weights).sum(), params)
    for a, b in zip(g_plain, g_chunk):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)  # fp32 summation order differs
    with torch.no_grad():  # inference path (no checkpointing)
        torch.testing.assert_close(label_logps(model, batch, "chunked", chunk_size=7).token_logps,
                                   plain.token_logps.detach(), atol=1e-6, rtol=1e-6)


def test_auto_is_plain_on_cpu(model_and_batch):
    model, batch = model_and_batch
    with torch.no_grad():
        torch.testing.assert_close(label_logps(model, batch, "auto").token_logps,
                                   label_logps(model, batch, "torch").token_logps)


def test_bad_loss_impl_and_liger_on_cpu(model_and_batch):
    model, batch = model_and_batch
    with pytest.raises(ConfigError, match="objective.loss_impl='fused'"):
        label_logps(model, batch, "fused")
    with pytest.raises(ConfigError, match="loss_impl=liger"):  # not installed, or CUDA only
        label_logps(model, batch, "liger")


# ----------------------------------------------------------------------- sdpa_varlen backend


def test_auto_attention_on_cpu_is_sdpa_varlen():
    from zhilu.model.builder import pick_attn_implementation

    assert pick_attn_implementation("auto", "cpu") == "sdpa_varlen"
    assert pick_attn_implementation("sdpa", "cpu") == "sdpa"


def test_sdpa_varlen_is_sdpa_outside_packed_batches(tokenizer, model_and_batch):
    """Padded batches and cached generation take transformers' own sdpa path: identical results."""
    from zhilu.model import ModelBuilder

    sdpa, batch = model_and_batch
    varlen = ModelBuilder(config=TINY, dtype="float32", attn_implementation="sdpa_varlen", seed=2).build(tokenizer)
    assert varlen.config._attn_implementation == "sdpa_varlen"
    with torch.no_grad():
        a = sdpa(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = varlen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(a, b)
        prompt = batch["input_ids"][:2, :12]
        gen = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
        assert torch.equal(sdpa.generate(prompt, **gen), varlen.generate(prompt, **gen))


def test_sdpa_varlen_splits_one_row_by_position_ids(tokenizer, model_and_batch):
    """A single packed row fed as is (no cu_seqlens): documents still found from position_ids."""
    from zhilu.model import ModelBuilder

    _, padded = model_and_batch
    varlen = ModelBuilder(config=TINY, dtype="float32", attn_implementation="sdpa_varlen", seed=2).build(tokenizer)
    enc = ChatEncoder(tokenizer, 256)
    packed = PackedCollator(tokenizer.pad_token_id)([[enc.sft(m) for m in DIALOGUES]])
    with torch.no_grad():
        h = rows_forward(varlen, packed).hidden
        head = varlen.lm_head(h[0]).log_softmax(-1)
        ref = varlen(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits.log_softmax(-1)
    for s in range(len(DIALOGUES)):
        n = int((padded["sequence_index"][s] == s).sum())
        torch.testing.assert_close(head[packed["sequence_index"][0] == s], ref[s, :n], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ chunked by a memory budget (issue 16)
def saved_activations(fn, params) -> list[torch.Tensor]:
    """Every tensor autograd saves for backward while ``fn`` runs, parameters left out."""
    params = {p.data_ptr() for p in params}
    saved: list[torch.Tensor] = []

    def pack(t):
        if t.data_ptr() not in params:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def nbytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen[(t.untyped_storage().data_ptr())] = t.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("n_tokens", [300, 10], ids=["several_chunks", "less_than_a_chunk"])
@pytest.mark.parametrize("head_trains", [False, True], ids=["frozen_head", "trained_head"])
def test_chunked_saves_less_than_the_budget_and_nothing_vocabulary_sized(n_tokens, head_trains):
    from zhilu.objectives.logps import budget_chunk, chunked_logps, torch_logps

    vocab, hidden, budget_mb = 2048, 64, 0.25
    chunk = budget_chunk(vocab, budget_mb)
    assert chunk == 32  # 0.25 MiB / (2048 x 4 bytes)
    assert (n_tokens > chunk) == (n_tokens == 300)
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(head_trains)
    h = torch.randn(n_tokens, hidden, generator=g, requires_grad=True)
    t = torch.randint(0, vocab, (n_tokens,), generator=g)
    weights = torch.randn(n_tokens, generator=g)
    plain, saved_plain = saved_activations(lambda: torch_logps(head, h, t, chunk), head.parameters())
    chunked, saved = saved_activations(lambda: chunked_logps(head, h, t, chunk), head.parameters())
    assert nbytes(saved) < budget_mb * 2**20
    assert not [s.shape for s in saved if vocab in s.shape]  # no [tokens, vocab] tensor kept
    assert any(s.shape == (n_tokens, vocab) for s in saved_plain)  # the counter sees the plain path's logits
    wrt = [h, head.weight] if head_trains else [h]
    # float64 reference, differentiable with respect to the same leaves
    exact = -F.cross_entropy(F.linear(h.double(), head.weight.double()), t, reduction="none")
    same_as_plain(plain, chunked, exact, wrt, weights)


def same_as_plain(plain, chunked, exact, wrt, weights, wrt_exact=None, tol=1e-6):
    """Values and gradients within ``tol`` of the plain path (relative to the largest entry, at least 1),
    and no further from a float64 computation than the plain path itself is (x2, + 1e-7 of the scale)."""
    got = []
    for x, leaves in ((plain, wrt), (chunked, wrt), (exact, wrt_exact or wrt)):
        loss = (x * weights.to(x.dtype)).sum()
        got.append([loss, *torch.autograd.grad(loss, leaves, retain_graph=True)])
    for a, b, e in zip(*got):
        scale = e.abs().max().item()
        assert (b - a).abs().max().item() <= tol * max(scale, 1.0)
        assert (b.double() - e).abs().max().item() <= 2 * (a.double() - e).abs().max().item() + 1e-7 * scale


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_budget_chunked_loss_and_gradients_equal_the_plain_path(model_and_batch, adapter):
    """The whole model, several chunks per batch: frozen head (LoRA) and trained head (full).

    The loss agrees to 1e-6 (relative); the decoder's backward amplifies the head's fp32 rounding
    (~1e-7) in the parameter gradients, which agree to 1e-5 of their scale, while both paths are
    ~50x further than that from the float64 gradients (the second check: chunked is as accurate).
    """
    from zhilu.adapters import FullFineTune, LoRA

    base, batch = model_and_batch
    model = copy.deepcopy(base)
    model = LoRA(r=4, dropout=0.0, init_lora_weights=False).apply(model) if adapter == "lora" else \
        FullFineTune().apply(model)
    params = [p for p in model.parameters() if p.requires_grad]
    assert base_causal_lm(model).lm_head.weight.requires_grad == (adapter == "full")
    plain = label_logps(model, batch, "torch")
    budget = 0.1  # MiB: 4 tokens of the 6,150-token vocabulary per chunk
    chunked = label_logps(model, batch, "chunked", logits_budget_mb=budget)
    assert plain.token_logps.numel() > 10 * 4
    model64 = copy.deepcopy(model).double()  # the same parameters in float64
    exact = label_logps(model64, batch, "torch")
    params64 = [p for p in model64.parameters() if p.requires_grad]
    weights = torch.linspace(-1, 2, plain.seq_logps.numel())
    loss = [(x.seq_logps * weights.to(x.seq_logps.dtype)).sum() for x in (plain, chunked)]
    assert (loss[1] - loss[0]).abs() <= 1e-6 * loss[0].abs()
    same_as_plain(plain.seq_logps, chunked.seq_logps, exact.seq_logps, params, weights, params64, tol=1e-5)


def test_default_is_chunked_by_budget(model_and_batch):
    from zhilu.objectives import DPO, SFT

    model, batch = model_and_batch
    vocab = model.config.vocab_size
    _, saved = saved_activations(lambda: label_logps(model, batch), model.parameters())
    assert not [s.shape for s in saved if vocab in s.shape]
    assert SFT().loss_impl == DPO().loss_impl == "auto" and SFT().logits_budget_mb == 64
    with pytest.raises(ConfigError, match="objective.logits_budget_mb=0"):
        SFT(logits_budget_mb=0)
