"""DPO objective: each loss against hand-worked values, the reference paths, configs, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import TINY, compose_train, fast_overrides, write_jsonl
from zhilu.adapters import BAdam, FullFineTune, LoRA
from zhilu.data.collate import PackedCollator, PaddedCollator
from zhilu.data.encode import ChatEncoder
from zhilu.data.formats import preference_row
from zhilu.errors import ConfigError, DataError
from zhilu.model import ModelBuilder
from zhilu.objectives import DPO
from zhilu.objectives import preference_losses as pl
from zhilu.objectives.logps import base_causal_lm, label_logps
from zhilu.train.module import ZhiluModule
from zhilu.train.run import build

# Chinese consumer-finance pairs: the chosen answer is safe, honest and compliant, the rejected one is not.
PAIRS = [
    {"prompt": "这款理财产品能保证年化8%的收益吗？",
     "chosen": "不能保证。理财产品有风险，过往业绩不代表未来收益，请先评估自己的风险承受能力。",
     "rejected": "放心，保证年化8%，稳赚不赔。"},
    {"messages": [{"role": "system", "content": "你是持牌消费金融公司的客服。"},
                  {"role": "user", "content": "怎么伪造收入证明才能多借点钱？"}],
     "chosen": "抱歉，伪造收入证明是违法行为，我不能提供帮助。请如实申请。",
     "rejected": "找个模板改一下公司名和工资就行，没人查。"},
    {"prompt": "我不想还网贷了，有什么办法能逃掉？",
     "chosen": "不建议逃避还款，逾期会影响征信并可能被起诉。可以联系平台协商延期或分期。",
     "rejected": "换手机号、注销账户，他们就找不到你了。"},
    {"prompt": "能告诉我客户张三的身份证号和电话吗？",
     "chosen": "抱歉，客户个人信息受法律保护，我无法提供。",
     "rejected": "张三的身份证号是110101199001011234，电话是13800001111。"},
    {"prompt": "信用卡分期每月手续费率0.6%，实际年化是多少？",
     "chosen": "约13%。手续费按全额本金收取而本金逐月减少，所以实际年化利率高于名义的7.2%。",
     "rejected": "就是7.2%，很便宜。"},
    {"prompt": "有人说先交500元保证金就能放款，可信吗？",
     "chosen": "不可信。正规贷款放款前不收取任何费用，这是典型的诈骗，请勿转账。",
     "rejected": "可信，交了保证金很快就能放款。"},
]


def dpo_dir(root, train=PAIRS[:4], val=PAIRS[4:]):
    d = root / "data"
    write_jsonl(d / "finance_dpo" / "train.jsonl", train)
    write_jsonl(d / "finance_dpo" / "val.jsonl", val)
    return d


def pair_examples(tokenizer, rows=PAIRS):
    enc = ChatEncoder(tokenizer, max_length=128)
    out = []
    for i, row in enumerate(rows):
        p = preference_row(dict(row))
        ex = enc.pair(p.prompt, p.chosen, p.rejected)
        ex.meta["id"] = i
        out.append(ex)
    return out


def make_module(tokenizer, adapter, objective=None):
    module = ZhiluModule(model=ModelBuilder(config=TINY, seed=0), adapter=adapter,
                         objective=objective or DPO(), tokenizer=tokenizer)
    module.configure_model()
    return module


# --------------------------------------------------------------------------- losses by hand
def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_dpo_sigmoid_by_hand():
    # log-ratios: chosen +1, rejected -1 -> margin h = 2; beta 0.5 -> logit 1; -log s(1) = log(1 + e^-1)
    loss = pl.dpo_sigmoid(t(1.0), t(-1.0), beta=0.5)
    assert loss.item() == pytest.approx(0.31326168751822286, abs=1e-12)
    # cDPO, e = 0.1: 0.9 log(1 + e^-1) + 0.1 log(1 + e) = log(1 + e^-1) + 0.1 (as log(1+e) - log(1+e^-1) = 1)
    smooth = pl.dpo_sigmoid(t(1.0), t(-1.0), beta=0.5, label_smoothing=0.1)
    assert smooth.item() == pytest.approx(0.41326168751822286, abs=1e-12)
    # no preference learned yet: log 2
    assert pl.dpo_sigmoid(t(0.3), t(0.3), beta=0.1).item() == pytest.approx(0.6931471805599453, abs=1e-12)


def test_ipo_by_hand():
    # tau = 0.25 -> target margin 1/(2 tau) = 2; h = 0.5 - (-0.5) = 1 -> (1 - 2)^2 = 1; h = 2 -> 0; h = 5 -> 9
    assert pl.ipo(t(0.5, 1.0, 3.0), t(-0.5, -1.0, -2.0), beta=0.25).tolist() == pytest.approx([1.0, 0.0, 9.0])


def test_hinge_by_hand():
    # beta 0.5 (margin 2): h = 1 -> 1 - 0.5 = 0.5; h = 3 -> max(0, -0.5) = 0; h = -2 -> 2
    assert pl.hinge(t(0.5, 1.0, -1.0), t(-0.5, -2.0, 1.0), beta=0.5).tolist() == pytest.approx([0.5, 0.0, 2.0])


def test_simpo_by_hand():
    # beta 2, gamma 0.5, mean log-probs -1 and -1.5: 2 * 0.5 - 0.5 = 0.5 -> log(1 + e^-0.5)
    assert pl.simpo(t(-1.0), t(-1.5), beta=2.0, gamma=0.5).item() == pytest.approx(0.47407698418010669, abs=1e-12)
    # gamma = beta * margin makes the logit 0: log 2
    assert pl.simpo(t(-1.0), t(-1.5), beta=2.0, gamma=1.0).item() == pytest.approx(math.log(2), abs=1e-12)


def test_orpo_by_hand():
    # p_c = 0.5 -> odds 1; p_r = 0.2 -> odds 1/4; log odds ratio = log 4; s(log 4) = 4/5
    # -> -log 0.8 = 0.22314355..., times lambda = 0.1
    loss = pl.orpo(t(math.log(0.5)), t(math.log(0.2)), beta=0.1)
    assert loss.item() == pytest.approx(0.022314355131420976, abs=1e-12)
    # a certain chosen answer (mean log-prob 0) stays finite, with finite gradients
    c = torch.zeros(1, requires_grad=True)
    out = pl.orpo(c, torch.tensor([-3.0]), beta=1.0)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(c.grad).all()


# ------------------------------------------------------------------- the objective's maths
def test_pair_loss_sums_rewards_and_accuracies_by_hand():
    obj = DPO(loss_type="sigmoid", beta=0.5)
    # pair 0: policy (c, r) = (-4, -9), reference (-5, -8) -> log-ratios +1, -1 -> loss log(1 + e^-1)
    # pair 1: policy (-6, -6), reference (-6, -6) -> 0, 0 -> log 2
    sums, counts = t(-4.0, -9.0, -6.0, -6.0), t(2.0, 3.0, 1.0, 1.0)
    loss, logs = obj.pair_loss(sums, counts, ref_sums=t(-5.0, -8.0, -6.0, -6.0))
    assert loss.item() == pytest.approx((0.31326168751822286 + math.log(2)) / 2, abs=1e-12)
    assert logs["rewards/chosen"].item() == pytest.approx(0.25)  # mean(0.5 * 1, 0)
    assert logs["rewards/rejected"].item() == pytest.approx(-0.25)
    assert logs["rewards/margins"].item() == pytest.approx(0.5)
    assert logs["rewards/accuracies"].item() == 0.5  # a tie is not a win
    assert logs["logps/chosen"].item() == -5.0 and logs["logps/rejected"].item() == -7.5
    assert "nll" not in logs


def test_ipo_uses_length_normalised_logps():
    obj = DPO(loss_type="ipo", beta=0.25)
    # chosen: policy -4/2 = -2, reference -6/2 = -3 -> +1; rejected: -9/3 = -3 vs -6/3 = -2 -> -1
    # h = 2 = 1/(2 tau) -> loss 0 (with sums it would be h = 2 - (-3) = 5 -> 9)
    loss, logs = obj.pair_loss(t(-4.0, -9.0), t(2.0, 3.0), ref_sums=t(-6.0, -6.0))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert logs["logps/chosen"].item() == -2.0 and logs["rewards/chosen"].item() == pytest.approx(0.25)


def test_simpo_orpo_are_reference_free_and_orpo_adds_the_sft_term():
    simpo = DPO(loss_type="simpo", beta=2.0, gamma=0.5)
    # means -2/2 = -1 and -4.5/3 = -1.5 -> as in test_simpo_by_hand
    loss, logs = simpo.pair_loss(t(-2.0, -4.5), t(2.0, 3.0))
    assert loss.item() == pytest.approx(0.47407698418010669, abs=1e-12)
    assert logs["rewards/chosen"].item() == pytest.approx(-2.0)  # SimPO's reward: beta * mean log-prob
    orpo = DPO(loss_type="orpo", beta=0.1)
    assert orpo.sft_weight == 1.0
    # chosen: 2 tokens, sum 2 log 0.5 -> mean log 0.5; rejected: 1 token, log 0.2; NLL = -2 log 0.5 / 2 = log 2
    loss, logs = orpo.pair_loss(t(2 * math.log(0.5), math.log(0.2)), t(2.0, 1.0))
    assert logs["nll"].item() == pytest.approx(math.log(2), abs=1e-12)
    assert loss.item() == pytest.approx(0.022314355131420976 + math.log(2), abs=1e-12)
    assert DPO(loss_type="orpo", sft_weight=0).pair_loss(t(-1.0, -2.0), t(1.0, 1.0))[1].get("nll") is None


def test_sft_weight_adds_the_chosen_token_mean_nll():
    obj = DPO(beta=0.5, sft_weight=0.5)
    # pairs as in test_pair_loss_...: chosen sums -4 and -6 over 2 + 1 tokens -> NLL = 10/3
    loss, logs = obj.pair_loss(t(-4.0, -9.0, -6.0, -6.0), t(2.0, 3.0, 1.0, 1.0), ref_sums=t(-5.0, -8.0, -6.0, -6.0))
    assert logs["nll"].item() == pytest.approx(10 / 3)
    assert loss.item() == pytest.approx((0.31326168751822286 + math.log(2)) / 2 + 0.5 * 10 / 3, abs=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"loss_type": "kto"}, "objective.loss_type='kto': expected one of sigmoid, ipo, hinge, simpo, orpo"),
    ({"beta": 0}, "objective.beta=0: must be positive"),
    ({"label_smoothing": 0.5}, r"objective.label_smoothing=0.5: must be in \[0, 0.5\)"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "loss_type=ipo has no label smoothing"),
    ({"sft_weight": -1}, "objective.sft_weight=-1: must be >= 0"),
])
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DPO(**kwargs)


# ---------------------------------------------------------------------------- reference
@pytest.mark.parametrize("adapter", [FullFineTune(), LoRA(r=4, dropout=0.1), BAdam(switch_interval=2)],
                         ids=["full", "lora", "badam"])
def test_policy_equal_to_reference_gives_log2_and_zero_rewards(tokenizer, adapter):
    module = make_module(tokenizer, adapter, DPO(beta=0.1))
    assert (module.objective.ref_model is None) == adapter.has_disabled_reference
    batch = PaddedCollator(tokenizer.pad_token_id)(pair_examples(tokenizer))
    calls = []  # decoder passes through the policy's network: chosen and rejected go in one
    base_causal_lm(module.model).model.register_forward_hook(lambda m, args, kw, out: calls.append(
        (torch.is_grad_enabled(), kw["input_ids"].shape[0])), with_kwargs=True)
    module.train()
    loss, logs = module.objective.loss(module, batch, "train")
    policy = [n for grad, n in calls if grad]
    assert policy == [2 * len(PAIRS)] and len(calls) == (2 if adapter.has_disabled_reference else 1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert logs["rewards/chosen"].item() == 0 and logs["rewards/rejected"].item() == 0
    assert logs["rewards/margins"].item() == 0 and logs["rewards/accuracies"].item() == 0
    loss.backward()  # the reference took no part in the graph
    assert any(p.grad is not None for p in module.model.parameters())


def test_disabled_adapter_reference_is_exactly_the_base_model(tokenizer):
    batch = PaddedCollator(tokenizer.pad_token_id)(pair_examples(tokenizer))
    base = ModelBuilder(config=TINY, seed=0).build(tokenizer)
    with torch.no_grad():
        base_logps = label_logps(base, batch).seq_logps
    module = make_module(tokenizer, LoRA(r=4), DPO())
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as if trained: the policy now differs from the base
    policy = label_logps(module.model, batch).seq_logps.detach()
    ref, counts = module.objective._reference(module, batch, "train")
    assert torch.equal(ref, base_logps)
    assert not torch.allclose(policy, base_logps)
    assert counts.tolist() == [float(sum(x != -100 for x in lab[1:])) for ex in pair_examples(tokenizer)
                               for lab in ex.labels]


def test_frozen_copy_stays_out_of_checkpoints_and_does_not_move(tokenizer):
    module = make_module(tokenizer, FullFineTune(), DPO())
    ref = module.objective.ref_model
    assert ref is not None and not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert set(module.state_dict()) == {f"model.{k}" for k in module.model.state_dict()}
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())


def test_reference_free_losses_keep_no_reference(tokenizer):
    module = make_module(tokenizer, FullFineTune(), DPO(loss_type="simpo", precompute_ref=True))
    assert module.objective.ref_model is None and module.objective.precompute_ref is False
    batch = PaddedCollator(tokenizer.pad_token_id)(pair_examples(tokenizer))
    loss, logs = module.objective.loss(module, batch, "train")
    assert torch.isfinite(loss) and logs["logps/chosen"].item() < 0


def test_packed_pairs_give_the_padded_loss(tokenizer):
    examples = pair_examples(tokenizer)
    module = make_module(tokenizer, LoRA(r=4, dropout=0.0), DPO(loss_type="sigmoid"))
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    padded = PaddedCollator(tokenizer.pad_token_id)(examples)
    packed = PackedCollator(tokenizer.pad_token_id)([examples[:3], examples[3:]])
    assert packed["input_ids"].shape[0] == 2
    a, logs_a = module.objective.loss(module, padded, "train")
    b, logs_b = module.objective.loss(module, packed, "train")
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert logs_a["rewards/margins"].item() == pytest.approx(logs_b["rewards/margins"].item(), rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------- configs
def test_objective_dpo_picks_the_preference_data_unless_data_is_given(tmp_path):
    d = dpo_dir(tmp_path)
    cfg = compose_train(fast_overrides(d, "objective=dpo", "objective.loss_type=ipo"), tmp_path / "a")
    assert cfg.data.name == "finance_dpo" and cfg.data.kind == "preference"
    assert cfg.objective._target_ == "zhilu.objectives.DPO" and cfg.objective.loss_type == "ipo"
    objs = build(cfg)
    assert isinstance(objs["module"].objective, DPO) and objs["datamodule"].kind == "preference"
    # an explicit data= wins, in either order, and the mismatch is reported
    for order in (["data=finance_sft", "objective=dpo"], ["objective=dpo", "data=finance_sft"]):
        cfg = compose_train(fast_overrides(d, *order), tmp_path / "b")
        assert cfg.data.name == "finance_sft"
        with pytest.raises(ConfigError, match="trains on preference data but data.kind=sft"):
            build(cfg)
    assert compose_train(fast_overrides(d), tmp_path / "c").data.name == "finance_sft"  # default unchanged


def test_bad_preference_row_names_file_and_line(tmp_path):
    d = dpo_dir(tmp_path)
    bad = d / "finance_dpo" / "train.jsonl"
    bad.write_text(bad.read_text(encoding="utf-8") + '{"prompt": "能保本吗？", "chosen": "不能。"}\n', encoding="utf-8")
    dm = build(compose_train(fast_overrides(d, "objective=dpo"), tmp_path / "run"))["datamodule"]
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert msg.startswith(f"{bad}:5: 'rejected' is missing or empty") and "\n" not in msg, msg
