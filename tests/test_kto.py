"""KTO: the loss against hand-worked values, step 0 with policy == reference, unpaired data, configs."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import compose_train, fast_overrides, write_jsonl
from tests.test_dpo import PAIRS, dpo_dir, make_module
from zhilu.adapters import FullFineTune, LoRA
from zhilu.data.collate import PackedCollator, PaddedCollator
from zhilu.data.datamodule import ChatDataModule
from zhilu.data.encode import ChatEncoder
from zhilu.data.formats import preference_row
from zhilu.data.unpaired import encode_unpaired, with_mismatched
from zhilu.errors import ConfigError, DataError
from zhilu.objectives import KTO
from zhilu.objectives.kto import kl_baseline, kto_losses
from zhilu.train.run import build, train


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# --------------------------------------------------------------------------- the loss by hand
def test_desirable_and_undesirable_terms_by_hand():
    # beta 0.5, z0 0.2. Desirable r = 1: 1 - s(0.5 (1 - 0.2)) = 1 - s(0.4) = 1 / (1 + e^0.4) = 0.40131...
    # undesirable r = -1: 1 - s(0.5 (0.2 + 1)) = 1 - s(0.6) = 1 / (1 + e^0.6) = 0.35434...
    losses = kto_losses(t(1.0, -1.0), torch.tensor([True, False]), 0.2, beta=0.5)
    assert losses.tolist() == pytest.approx([1 / (1 + math.e ** 0.4), 1 / (1 + math.e ** 0.6)], abs=1e-12)
    assert losses.tolist() == pytest.approx([0.401312339887548, 0.3543436937742046], abs=1e-12)
    # the same completion labelled the other way: 1 - s(0.5 (z0 - r)) = 1 - s(-0.4) = 0.59868...
    assert kto_losses(t(1.0), torch.tensor([False]), 0.2, beta=0.5).item() == pytest.approx(0.598687660112452)


def test_weights_scale_each_side():
    losses = kto_losses(t(1.0, -1.0), torch.tensor([True, False]), 0.2, beta=0.5,
                        desirable_weight=2.0, undesirable_weight=0.5)
    assert losses.tolist() == pytest.approx([0.802624679775096, 0.1771718468871023], abs=1e-12)


def test_kl_baseline_is_the_clamped_detached_mean():
    kl = t(0.3, -0.1, 0.4).requires_grad_()
    z0 = kl_baseline(kl)
    assert z0.item() == pytest.approx(0.2) and not z0.requires_grad
    assert kl_baseline(t(-0.3, 0.1)).item() == 0.0  # mean -0.1 -> clamped at 0
    assert kl_baseline(t()).item() == 0.0


def test_objective_combines_terms_kl_and_weights_by_hand():
    obj = KTO(beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
    # sequences: example 0 (desirable): completion, mismatched; example 1 (undesirable): completion, mismatched
    ref = t(-10.0, -20.0, -30.0, -40.0)
    sums = ref + t(1.0, 0.5, -1.0, -0.1)  # log-ratios r = (1, -1); mismatched (0.5, -0.1) -> z0 = 0.2
    loss, logs = obj.unpaired_loss(sums, ref, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((0.802624679775096 + 0.1771718468871023) / 2, abs=1e-12)
    assert logs["kl"].item() == pytest.approx(0.2)
    assert logs["rewards/chosen"].item() == pytest.approx(0.5)
    assert logs["rewards/rejected"].item() == pytest.approx(-0.5)
    assert logs["rewards/margins"].item() == pytest.approx(1.0)
    assert logs["logps/chosen"].item() == pytest.approx(-9.0)
    # mismatched log-ratios below zero: z0 = 0, desirable term 1 - s(0.5 * 1) = 0.37754...
    loss, logs = obj.unpaired_loss(ref + t(1.0, -0.5, 0.0, -0.1), ref, torch.tensor([1.0, 1.0]))
    assert logs["kl"].item() == 0.0 and "rewards/rejected" not in logs and "rewards/margins" not in logs
    assert loss.item() == pytest.approx(2 * (0.3775406687981454 + 0.5) / 2, abs=1e-12)


def test_gradient_flows_through_the_completion_only():
    obj = KTO(beta=0.1)
    ref = torch.zeros(4, dtype=torch.float64)
    sums = t(0.5, 3.0, -0.5, 1.0).requires_grad_()
    loss, _ = obj.unpaired_loss(sums, ref, torch.tensor([1.0, 0.0]))
    loss.backward()
    assert sums.grad[1] == 0 and sums.grad[3] == 0  # z0 is detached
    assert sums.grad[0] < 0 < sums.grad[2]  # raise the desirable, lower the undesirable


def test_bad_settings_and_batches_are_refused():
    with pytest.raises(ConfigError, match="desirable_weight=0"):
        KTO(desirable_weight=0)
    with pytest.raises(ConfigError, match="objective.beta"):
        KTO(beta=0)
    with pytest.raises(Exception, match="precompute_ref"):
        KTO(precompute_ref=True)  # the mismatched pairs change with every batch: no table ahead
    with pytest.raises(DataError, match="3 sequences"):
        KTO().unpaired_loss(t(1, 2, 3), t(1, 2, 3), torch.tensor([1.0]))


# ------------------------------------------------------------------------------ unpaired data
def unpaired_examples(tokenizer, rows=PAIRS):
    enc = ChatEncoder(tokenizer, max_length=128)
    examples = [ex for i, r in enumerate(rows) for ex in encode_unpaired(enc, preference_row(dict(r)), f"row {i}")]
    for i, ex in enumerate(examples):
        ex.meta["id"] = i
    return examples


def test_each_pair_becomes_a_desirable_and_an_undesirable_row(tokenizer):
    examples = unpaired_examples(tokenizer)
    assert len(examples) == 2 * len(PAIRS)
    assert [ex.meta["label"] for ex in examples] == [1.0, 0.0] * len(PAIRS)
    enc = ChatEncoder(tokenizer, max_length=128)
    for k, row in enumerate(PAIRS):
        pair = preference_row(dict(row))
        prompt = enc.prompt(pair.prompt)
        for ex, answer in zip(examples[2 * k: 2 * k + 2], (pair.chosen, pair.rejected)):
            (ids,), (labels,) = ex.input_ids, ex.labels
            assert ids == prompt + [*enc.text(answer), enc.eot]
            assert labels == [-100] * len(prompt) + ids[len(prompt):]


def test_each_batch_adds_mismatched_completions(tokenizer):
    examples = unpaired_examples(tokenizer)
    enc = ChatEncoder(tokenizer, max_length=128)
    prompts = [enc.prompt(preference_row(dict(r)).prompt) for r in PAIRS for _ in (0, 1)]
    batch = with_mismatched(examples)
    # neighbours share a prompt (a pair's two rows), so the completions rotate by 2, not 1
    for i, ex in enumerate(batch):
        own, mismatched = ex.input_ids
        j = (i + 2) % len(examples)
        assert own == examples[i].input_ids[0] and ex.meta["label"] == examples[i].meta["label"]
        assert mismatched == prompts[i] + examples[j].input_ids[0][len(prompts[j]):]
        assert ex.labels[1] == [-100] * len(prompts[i]) + examples[j].labels[0][len(prompts[j]):]
    shifted = with_mismatched([examples[0], examples[2], examples[4]])  # three prompts: rotate by one
    assert shifted[0].input_ids[1][len(prompts[0]):] == examples[2].input_ids[0][len(prompts[2]):]
    (alone,) = with_mismatched(examples[:1])  # nothing to mismatch with: the example itself
    assert alone.input_ids[0] == alone.input_ids[1]


def test_collators_carry_the_labels(tokenizer):
    batch = with_mismatched(unpaired_examples(tokenizer)[:3])
    for collated in (PaddedCollator(0)(batch), PackedCollator(0)([batch[:2], batch[2:]])):
        assert collated["example_labels"].tolist() == [1.0, 0.0, 1.0] and collated["num_sequences"] == 6
    sft = ChatEncoder(tokenizer, 64).sft([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}])
    assert "example_labels" not in PaddedCollator(0)([sft])
    with pytest.raises(DataError, match="mixes labelled"):
        PaddedCollator(0)([sft, batch[0]])


def test_unpaired_rows_through_the_data_module_and_their_errors(tmp_path, tokenizer):
    good = [{"prompt": "信用卡逾期一天有影响吗？", "completion": "可能产生罚息，尽快还款并联系银行。", "label": True},
            {"messages": [{"role": "user", "content": "怎么套现？"}], "completion": "找POS机刷卡。", "label": False}]
    write_jsonl(tmp_path / "u.jsonl", good + [{"prompt": "x", "completion": "y", "label": "yes"}])

    def module(**kw):
        return ChatDataModule(kind="unpaired", format="unpaired", train_files=[str(tmp_path / "u.jsonl")],
                              tokenizer=tokenizer, max_length=64, batch_size=2, cache_dir=str(tmp_path / "cache"), **kw)

    with pytest.raises(DataError, match=r"u.jsonl:3: 'label' must be true"):
        module().setup()
    write_jsonl(tmp_path / "u.jsonl", good)
    dm = module()
    dm.setup()
    assert [ex.meta["label"] for ex in dm.train_examples] == [1.0, 0.0]
    batch = next(iter(dm.train_dataloader()))
    assert batch["num_sequences"] == 4 and sorted(batch["example_labels"].tolist()) == [0.0, 1.0]
    with pytest.raises(ConfigError, match="does not fit data.kind=unpaired"):
        ChatDataModule(kind="unpaired", format="chat", train_files=["x"], tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="data.packing=true does not fit data.kind=unpaired"):
        module(packing=True)


# ------------------------------------------------------------------- step 0: policy == reference
@pytest.mark.parametrize("adapter", [LoRA(r=4, alpha=8, dropout=0.0), FullFineTune()], ids=["lora", "full"])
def test_step0_loss_and_rewards_when_policy_equals_reference(tokenizer, adapter):
    # r = 0 and z0 = 0 for every example, so each term is lambda * (1 - s(0)) = lambda / 2:
    # loss = (n_D * 1.5 + n_U * 1.0) / 2 / n with n_D = n_U -> (1.5 + 1.0) / 4 = 0.625
    obj = KTO(beta=0.1, desirable_weight=1.5, undesirable_weight=1.0)
    module = make_module(tokenizer, adapter, obj)
    module.model.eval()
    batch = PaddedCollator(tokenizer.pad_token_id)(with_mismatched(unpaired_examples(tokenizer)))
    loss, logs = obj.loss(module, batch, "train")
    assert loss.item() == pytest.approx(0.625, abs=1e-6)
    assert logs["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert logs["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-6)
    assert logs["rewards/rejected"].item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------- end to end
def test_objective_kto_composes_and_trains(tmp_path):
    data = dpo_dir(tmp_path)
    cfg = compose_train(fast_overrides(data, "objective=kto", "adapter=lora", "trainer.max_steps=2",
                                       "callbacks.model_checkpoint=null", "callbacks.export.enabled=false"), tmp_path)
    assert cfg.data.kind == "unpaired" and cfg.data.name == "finance_kto"
    objs = build(cfg)
    assert objs["module"].objective.name == "kto"
    results = train(cfg)
    assert results["status"] == "finished" and results["objective"] == "kto"
    assert math.isfinite(results["val_loss_final"]) and "val_kl" in results
    with pytest.raises(ConfigError, match="trains on unpaired data but data.kind=preference"):
        build(compose_train(fast_overrides(data, "objective=kto", "data=finance_dpo"), tmp_path / "b"))
