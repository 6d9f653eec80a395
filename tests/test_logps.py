"""Label log-probs: hand-worked values, the chunked (fused) LM head, sdpa_varlen == sdpa, errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import DIALOGUES, TINY
from zhilu.data.collate import PackedCollator, PaddedCollator
from zhilu.data.encode import ChatEncoder
from zhilu.errors import ConfigError
from zhilu.objectives.logps import label_logps, rows_forward

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
