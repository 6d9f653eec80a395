"""Contamination-free packing: bin packing, the packed batch layout, and packed == padded on a model.

Model tests run the real tiny Llama in fp32 on CPU for every CPU attention backend and compare
per-sample losses, per-sample gradients and preference log-prob sums with the padded layout.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import DIALOGUES, TINY, write_jsonl
from zhilu.data.collate import PackedCollator, PaddedCollator
from zhilu.data.datamodule import ChatDataModule
from zhilu.data.encode import IGNORE_INDEX, ChatEncoder, Example
from zhilu.data.packing import best_fit_decreasing, packing_stats
from zhilu.errors import ConfigError
from zhilu.objectives.logps import decoder_hidden, flat_forward, label_logps, packed_layout, rows_forward

# ------------------------------------------------------------------------------ bin packing


def test_bfd_hand_worked():
    # sorted: 7(#4) 5(#0) 3(#1|#2) 3 2(#3) 1(#5); capacity 8
    # 7 -> new row A (room 1); 5 -> new row B (room 3); 3 -> B (best fit, room 0); 3 -> new row C (room 5);
    # 2 -> C (room 3); 1 -> A (the tightest fit, room 0)
    rows = best_fit_decreasing([5, 3, 3, 2, 7, 1], capacity=8, seed=0)
    assert len(rows) == 3
    assert rows[0] == [4, 5]
    assert rows[1][0] == 0 and rows[2][1] == 3
    assert {rows[1][1], rows[2][0]} == {1, 2}  # the two 3s: the seed decides which goes where


def chat_lengths(n: int, cap: int, seed: int = 0) -> list[int]:
    """Many short, a long tail (log-normal), like real chat data."""
    rng = random.Random(seed)
    return [max(8, min(cap, int(rng.lognormvariate(5.3, 0.8)))) for _ in range(n)]


def test_bfd_loses_nothing_and_respects_capacity():
    lengths = chat_lengths(3000, 1024)
    rows = best_fit_decreasing(lengths, 1024, seed=3)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))  # every sample exactly once
    assert all(sum(lengths[i] for i in r) <= 1024 for r in rows)
    st = packing_stats(lengths, rows, 1024)
    assert st.samples == len(lengths) and st.rows == len(rows)
    assert st.real_tokens == sum(lengths)
    assert st.efficiency == pytest.approx(sum(lengths) / (len(rows) * 1024))
    assert st.efficiency >= 0.95
    assert st.as_dict()["samples_per_row"] == pytest.approx(len(lengths) / len(rows))


def test_bfd_deterministic_for_a_seed_and_stable_across_seeds():
    lengths = chat_lengths(2000, 512, seed=1)
    a = best_fit_decreasing(lengths, 512, seed=7)
    assert best_fit_decreasing(lengths, 512, seed=7) == a
    b = best_fit_decreasing(lengths, 512, seed=8)
    assert a != b  # another epoch: other samples share rows ...
    fill = lambda rows: [sum(lengths[i] for i in r) for r in rows]  # noqa: E731
    assert len(a) == len(b) and fill(a) == fill(b)  # ... but the same number of rows, equally full


def test_bfd_errors_name_the_culprit():
    with pytest.raises(ConfigError, match="example 1 has 9 tokens.*8"):
        best_fit_decreasing([3, 9, 2], capacity=8)
    with pytest.raises(ConfigError, match="example 0 is empty"):
        best_fit_decreasing([0, 2], capacity=8)
    with pytest.raises(ConfigError, match="row length 0"):
        best_fit_decreasing([1], capacity=0)


# --------------------------------------------------------------------------- packed batches


def test_packed_collator_layout_hand_worked():
    a = Example([[10, 11, 12]], [[IGNORE_INDEX, 11, 12]], {"id": 0})
    b = Example([[20, 21]], [[20, 21]], {"id": 1})  # a label on the first token: must not survive
    c = Example([[30, 31, 32, 33]], [[IGNORE_INDEX, IGNORE_INDEX, 32, 33]], {"id": 2})
    batch = PackedCollator(pad_token_id=0)([[a, b], [c]])
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21], [30, 31, 32, 33, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 21], [-100, -100, 32, 33, -100]]
    assert batch["sequence_index"].tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, 2, -1]]
    assert batch["example_ids"].tolist() == [0, 1, 2]
    assert batch["num_sequences"] == 3 and batch["num_tokens"] == 9


def test_packed_preference_pairs_are_separate_documents():
    pair = lambda k: Example([[k, k + 1], [k + 5, k + 6, k + 7]], [[-100, k + 1], [-100, k + 6, k + 7]])  # noqa: E731
    batch = PackedCollator(pad_token_id=0)([[pair(10), pair(20)]])
    assert batch["sequence_index"].tolist() == [[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]]  # 2i chosen, 2i+1 rejected
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["num_sequences"] == 4


def _pairs(enc: ChatEncoder) -> list[Example]:
    answers = [("按时还款，保持良好记录。", "找人花钱洗白征信。"), ("It is the yearly cost of a loan.", "No idea."),
               ("正规贷款放款前不收费。", "先交解冻费就行。")]
    prompts = [d[:-1] for d in DIALOGUES[1:]]
    return [enc.pair(p, c, r) for p, (c, r) in zip(prompts, answers)]


def test_datamodule_packs_every_sample_once_per_epoch(tmp_path, tokenizer):
    rows = [{"messages": m} for m in DIALOGUES * 5]
    write_jsonl(tmp_path / "t.jsonl", rows)
    dm = ChatDataModule(train_files=[str(tmp_path / "t.jsonl")], max_length=128, packing=True, batch_size=2,
                        tokenizer=tokenizer, seed=5)
    dm.setup()
    n = len(dm.train_examples)
    first = [list(r) for r in dm.train_set.rows]
    for epoch in range(3):
        stats = dm.set_epoch(epoch)
        assert sorted(i for r in dm.train_set.rows for i in r) == list(range(n))
        assert len(dm.train_set.rows) == len(first)
        assert set(stats) >= {"rows", "efficiency", "samples_per_row"} and 0 < stats["efficiency"] <= 1
        seen = []
        for batch in dm.train_dataloader():
            seen += batch["example_ids"].tolist()
            assert "attention_mask" not in batch and batch["input_ids"].shape[1] <= 128
        assert sorted(seen) == list(range(n))
    dm.set_epoch(0)
    assert dm.train_set.rows == first  # deterministic for (seed, epoch)


def test_datamodule_packs_preference_pairs_whole(tmp_path, tokenizer):
    rows = [{"messages": d[:-1], "chosen": d[-1]["content"], "rejected": "不知道。"} for d in DIALOGUES * 3]
    write_jsonl(tmp_path / "p.jsonl", rows)
    dm = ChatDataModule(kind="preference", format="preference", train_files=[str(tmp_path / "p.jsonl")],
                        max_length=128, packing=True, batch_size=2, tokenizer=tokenizer)
    dm.setup()
    assert dm.train_set.capacity == 256
    batch = next(iter(dm.train_dataloader()))
    seq = batch["sequence_index"]
    for i in range(batch["num_sequences"] // 2):  # chosen 2i and rejected 2i+1 sit in the same row, in order
        rc, rr = (seq == 2 * i).nonzero(), (seq == 2 * i + 1).nonzero()
        assert rc[:, 0].unique().tolist() == rr[:, 0].unique().tolist()
        assert rc[-1, 1] + 1 == rr[0, 1]


# ---------------------------------------------------------------- packed == padded on a model

CPU_BACKENDS = ["sdpa_varlen", "sdpa", "eager"]
# flex_attention: no backward on CPU, and its CPU kernel compiles with inductor for ~1 min
FORWARD_BACKENDS = ["sdpa_varlen", "sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.slow)]


def _model(tokenizer, attn: str):
    from zhilu.model import ModelBuilder

    if attn == "flex_attention":  # a fresh static-shape compile: torch's dynamic-shape CPU flex kernel fails to build
        torch._dynamo.reset()

    return ModelBuilder(config=TINY, dtype="float32", attn_implementation=attn, seed=1).build(tokenizer)


@pytest.fixture(scope="module")
def sft_examples(tokenizer) -> list[Example]:
    enc = ChatEncoder(tokenizer, 256)
    extra = [[{"role": "user", "content": "年化利率和月利率怎么换算？"},
              {"role": "assistant", "content": "年化利率约等于月利率乘以12；" * 4}],
             [{"role": "user", "content": "?"}, {"role": "assistant", "content": "好"}]]
    exs = [enc.sft(m) for m in DIALOGUES + extra]
    assert len({ex.total_length for ex in exs}) == len(exs)  # all lengths differ
    return exs


def _rows(examples):
    """Three rows of different fill: 3, 2 and 1 samples."""
    return [examples[:3], examples[3:5], examples[5:]]


def _per_sample(model, batch):
    lp = label_logps(model, batch, "torch")
    return lp.seq_logps / lp.seq_counts  # mean log-prob of each sample's labels


def _per_sample_grads(model, batch) -> list[list[torch.Tensor]]:
    params = [p for p in model.parameters() if p.requires_grad]
    losses = -_per_sample(model, batch)
    return [torch.autograd.grad(losses[i], params, retain_graph=True) for i in range(len(losses))]


@pytest.mark.parametrize("attn", CPU_BACKENDS)
def test_sft_packed_equals_padded_loss_and_gradients(tokenizer, sft_examples, attn):
    model = _model(tokenizer, attn)
    rows = _rows(sft_examples)
    packed = PackedCollator(tokenizer.pad_token_id)(rows)
    padded = PaddedCollator(tokenizer.pad_token_id)([e for r in rows for e in r])  # same sequence order
    a, b = _per_sample(model, padded), _per_sample(model, packed)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert a.std() > 0.01  # the samples' losses differ: equality is not a coincidence
    ga, gb = _per_sample_grads(model, padded), _per_sample_grads(model, packed)
    for i, (x, y) in enumerate(zip(ga, gb)):
        for p, q in zip(x, y):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=lambda m: f"sample {i}: {m}")
    # the SFT objective's token-mean loss agrees as well
    from zhilu.objectives import SFT

    module = type("M", (), {"model": model})()
    torch.testing.assert_close(SFT().loss(module, packed, "train")[0], SFT().loss(module, padded, "train")[0])


@pytest.mark.parametrize("attn", CPU_BACKENDS)
def test_preference_packed_equals_padded_sequence_logps(tokenizer, attn):
    model = _model(tokenizer, attn)
    pairs = _pairs(ChatEncoder(tokenizer, 128))
    rows = [pairs[:2], pairs[2:]]
    packed = PackedCollator(tokenizer.pad_token_id)(rows)
    padded = PaddedCollator(tokenizer.pad_token_id)(pairs)
    assert packed["num_sequences"] == padded["num_sequences"] == 6
    la, lb = label_logps(model, padded, "torch"), label_logps(model, packed, "torch")
    torch.testing.assert_close(lb.seq_logps, la.seq_logps, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(lb.seq_counts, la.seq_counts)
    # a DPO-shaped loss (chosen minus rejected) back-propagates identically
    params = [p for p in model.parameters() if p.requires_grad]
    def margin(lp):
        return torch.nn.functional.logsigmoid(0.1 * (lp.seq_logps[0::2] - lp.seq_logps[1::2])).sum()

    for p, q in zip(torch.autograd.grad(margin(la), params), torch.autograd.grad(margin(lb), params)):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", FORWARD_BACKENDS)
def test_packed_equals_padded_forward_every_cpu_backend(tokenizer, sft_examples, attn):
    model = _model(tokenizer, attn)
    rows = _rows(sft_examples)
    with torch.no_grad():
        a = label_logps(model, PaddedCollator(tokenizer.pad_token_id)([e for r in rows for e in r])).seq_logps
        b = label_logps(model, PackedCollator(tokenizer.pad_token_id)(rows)).seq_logps
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("attn", FORWARD_BACKENDS)
def test_changing_one_sample_leaves_the_others_untouched(tokenizer, sft_examples, attn):
    model = _model(tokenizer, attn)
    batch = PackedCollator(tokenizer.pad_token_id)([sft_examples[:4]])
    head = model.lm_head
    with torch.no_grad():
        before = head(decoder_hidden(model, batch))
        changed = dict(batch, input_ids=batch["input_ids"].clone())
        target = batch["sequence_index"] == 1
        changed["input_ids"][target] = (changed["input_ids"][target] * 7 + 3) % 200 + 10
        after = head(decoder_hidden(model, changed))
        others = (batch["sequence_index"] >= 0) & ~target
        assert (after[others] - before[others]).abs().max() < 1e-5  # float noise at most; a leak is ~0.1
        assert (after[target] - before[target]).abs().max() > 0.1  # the edit itself is visible
        # control: the same row without restarting positions would leak the edit into later samples
        glued = dict(changed, position_ids=torch.arange(batch["input_ids"].shape[1])[None],
                     sequence_index=batch["sequence_index"].clamp(max=0))
        third = batch["sequence_index"] == 2
        assert (head(decoder_hidden(model, glued))[third] - before[third]).abs().max() > 0.1


def test_labels_never_cross_a_boundary(tokenizer, sft_examples):
    model = _model(tokenizer, "sdpa")
    batch = PackedCollator(tokenizer.pad_token_id)([sft_examples[:3]])
    starts = (batch["position_ids"] == 0) & (batch["sequence_index"] >= 0)
    assert starts.sum() == 3 and (batch["labels"][starts] == IGNORE_INDEX).all()
    # positions restart at 0 and count up within every sample
    for s in range(3):
        pos = batch["position_ids"][batch["sequence_index"] == s]
        assert pos.tolist() == list(range(len(pos)))
    # even with a label put on a sample's first token, nothing is predicted from the previous sample
    forged = dict(batch, labels=batch["labels"].clone())
    forged["labels"][starts] = batch["input_ids"][starts]
    with torch.no_grad():
        a, b = label_logps(model, batch), label_logps(model, forged)
    torch.testing.assert_close(b.seq_counts, a.seq_counts)
    torch.testing.assert_close(b.seq_logps, a.seq_logps)


# ------------------------------------------------- padding-free layout (FlashAttention varlen)


def _varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, **kwargs):
    """What flash_attn_varlen_func computes, in plain torch: causal attention inside each cu_seqlens span."""
    assert attention_mask is None and query.shape[0] == 1 and cu_seq_lens_q is not None
    assert int(cu_seq_lens_q[-1]) == query.shape[2] and max_length_q == int(cu_seq_lens_q.diff().max())
    out = torch.empty_like(query)
    for s, e in zip(cu_seq_lens_q[:-1].tolist(), cu_seq_lens_q[1:].tolist()):
        out[:, :, s:e] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture
def varlen_model(tokenizer):
    from transformers import AttentionInterface

    AttentionInterface.register("zhilu_varlen_reference", _varlen_reference)
    model = _model(tokenizer, "sdpa")
    model.set_attn_implementation("zhilu_varlen_reference")
    return model


def test_unknown_backend_refuses_packed_batches(varlen_model, sft_examples, tokenizer):
    batch = PackedCollator(tokenizer.pad_token_id)([sft_examples[:2]])
    with pytest.raises(ConfigError, match="zhilu_varlen_reference.*cannot mask packed documents"):
        label_logps(varlen_model, batch)


def test_backend_layouts():
    from types import SimpleNamespace

    for impl, layout in [("sdpa", rows_forward), ("eager", rows_forward), ("flex_attention", rows_forward),
                         ("sdpa_varlen", flat_forward),
                         ("flash_attention_2", flat_forward), ("flash_attention_3", flat_forward)]:
        assert packed_layout(SimpleNamespace(_attn_implementation=impl)) is layout


def test_padding_free_layout_equals_padded(varlen_model, sft_examples, tokenizer, monkeypatch):
    """The FlashAttention path (rows flattened, documents as cu_seqlens) with a reference varlen kernel."""
    import zhilu.objectives.logps as logps

    rows = _rows(sft_examples)
    packed = PackedCollator(tokenizer.pad_token_id)(rows)
    assert packed["input_ids"].shape[0] >= 2 and (packed["sequence_index"] < 0).any()  # several rows, padded tails
    padded = PaddedCollator(tokenizer.pad_token_id)([e for r in rows for e in r])
    ref = _model(tokenizer, "sdpa")
    monkeypatch.setattr(logps, "packed_layout", lambda config: flat_forward)
    a = label_logps(ref, padded)
    b = label_logps(varlen_model, packed)
    torch.testing.assert_close(b.seq_logps, a.seq_logps, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(b.seq_counts, a.seq_counts)
    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    for p, q in zip(torch.autograd.grad(a.seq_logps.sum(), params(ref)),
                    torch.autograd.grad(b.seq_logps.sum(), params(varlen_model))):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # hidden states scattered back to the [B, T] layout
        keep = packed["sequence_index"] >= 0
        torch.testing.assert_close(decoder_hidden(varlen_model, packed)[keep],
                                   rows_forward(ref, packed).hidden[keep], atol=1e-5, rtol=1e-5)
