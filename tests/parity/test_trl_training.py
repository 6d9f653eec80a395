"""Parity with TRL 1.16 (``pip install -e .[parity]``): label masks and a few optimizer steps.

The same initial weights (one model, deep-copied) and the same batches (every row in one batch, so
TRL's shuffling cannot change a step) go through TRL's ``SFTTrainer``/``DPOTrainer`` and through this
project's encoder, collator and objectives with the same AdamW, learning rate and gradient clipping.
Dropout is 0 on both sides. fp32 on CPU.
"""

import copy
import math

import pytest
import torch

trl = pytest.importorskip("trl", minversion="1.16")

from tests.conftest import DIALOGUES, TINY  # noqa: E402
from zhilu.data.collate import PaddedCollator  # noqa: E402
from zhilu.data.encode import ChatEncoder  # noqa: E402

pytestmark = pytest.mark.slow  # TRL trainers, ~30 s in all on 2 cores

STEPS, LR = 5, 1e-3
# per-step losses: fp32, the same math in another order (HF's loss vs this project's label log-probs)
LOSS_ATOL = 1e-5
WEIGHT_ATOL = 1e-5  # Adam moves each weight by about LR per step; a wrong step would be off by ~1e-3

PAIRS = [
    ("信用卡逾期一天会怎样？", "通常会产生利息，部分银行有宽限期，请尽快还款。", "没关系，不用还。"),
    ("有人让我先交保证金才能贷款。", "正规贷款放款前不收费，这是诈骗，请报警。", "交吧，很正常。"),
    ("What is APR?", "The annual percentage rate, fees included.", "No idea."),
    ("征信能花钱洗白吗？", "不能，声称能洗白征信的是诈骗。", "可以，找中介就行。"),
]


@pytest.fixture(scope="module")
def tok():
    from zhilu.model import ModelBuilder

    return ModelBuilder(config=TINY).load_tokenizer()


def base_model(tok):
    from zhilu.model import ModelBuilder

    return ModelBuilder(config=TINY, attn_implementation="sdpa").build(tok, device_type="cpu")


def lora(model, init_lora_weights: bool = False):
    """LoRA r=8 on every linear layer; random B by default, so that the adapter matters from step 0."""
    from zhilu.adapters.lora import LoRA

    return LoRA(r=8, alpha=16, dropout=0.0, init_lora_weights=init_lora_weights).apply(model)


def trl_args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=STEPS, learning_rate=LR,
               lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
               report_to="none", save_strategy="no", use_cpu=True, seed=0, bf16=False, fp16=False, **kw)


def trl_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def our_steps(model, batch, loss_fn) -> list[float]:
    """``STEPS`` AdamW steps on one batch as the LightningModule takes them (clip at 1.0, constant lr)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(STEPS):
        loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def assert_same_weights(ours, theirs) -> float:
    mine = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    other = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert mine.keys() == other.keys() and mine
    worst = max((mine[k] - other[k]).abs().max().item() for k in mine)
    assert worst <= WEIGHT_ATOL, worst
    return worst


def test_multi_turn_label_masks_equal_trls_assistant_masks(tok, tmp_path):
    """TRL's ``assistant_only_loss`` recognises the shipped template (Meta's bytes) and swaps in its training
    variant; its token ids and labels (from its assistant masks) equal this project's ids and labels on
    multi-turn rows."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template

    assert get_training_chat_template(tok) is not None  # a known template: TRL has a training variant of it
    rows = DIALOGUES + [
        [{"role": r, "content": c} for r, c in [("user", "一"), ("assistant", "甲"), ("user", "二"),
                                                 ("assistant", "乙"), ("user", "三"), ("assistant", "丙")]],
        [{"role": "system", "content": "  有空白  "}, {"role": "user", "content": "问\n"},
         {"role": "assistant", "content": "\n答 "}],
    ]
    trainer = SFTTrainer(model=base_model(tok), processing_class=tok, train_dataset=Dataset.from_list(
        [{"messages": m} for m in rows]), args=trl_args(SFTConfig, tmp_path, assistant_only_loss=True))
    enc = ChatEncoder(tok)
    for row, messages in zip(trainer.train_dataset, rows):
        ids, labels = enc.dialogue(messages)
        assert row["input_ids"] == ids
        assert row["labels"] == labels  # TRL's labels: input ids under its assistant mask, -100 elsewhere


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_sft_steps_equal_trls(tok, tmp_path, adapter):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from zhilu.objectives.sft import SFT

    model = base_model(tok)
    model = lora(model) if adapter == "lora" else model
    theirs, mine = copy.deepcopy(model), copy.deepcopy(model)
    trainer = SFTTrainer(model=theirs, processing_class=tok, train_dataset=Dataset.from_list(
        [{"messages": m} for m in DIALOGUES]), args=trl_args(SFTConfig, tmp_path, assistant_only_loss=True))
    trainer.train()

    enc = ChatEncoder(tok)
    batch = PaddedCollator(tok.pad_token_id)([enc.sft(m) for m in DIALOGUES])
    objective = SFT(loss_impl="torch")
    losses = our_steps(mine, batch, lambda b: objective.loss(type("M", (), {"model": mine})(), b, "train")[0])
    assert losses == pytest.approx(trl_losses(trainer), abs=LOSS_ATOL)
    worst = assert_same_weights(mine, trainer.model)
    print(f"SFT {adapter}: {STEPS} steps, losses {losses[0]:.4f} -> {losses[-1]:.4f}, max |weight diff| {worst:.2e}")


def test_dpo_lora_steps_equal_trls(tok, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from zhilu.adapters.lora import LoRA
    from zhilu.objectives.dpo import DPO

    # B = 0: the reference is the base model on both sides (TRL would copy a non-zero starting adapter as the
    # reference, this project switches the adapter off), so the first loss is exactly log 2
    model = lora(base_model(tok), init_lora_weights=True)
    theirs, mine = copy.deepcopy(model), copy.deepcopy(model)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}],
                               "chosen": [{"role": "assistant", "content": c}],
                               "rejected": [{"role": "assistant", "content": r}]} for q, c, r in PAIRS])
    trainer = DPOTrainer(model=theirs, processing_class=tok, train_dataset=data,
                         args=trl_args(DPOConfig, tmp_path, beta=0.1, loss_type=["sigmoid"]))
    enc = ChatEncoder(tok)
    examples = [enc.pair([{"role": "user", "content": q}], c, r) for q, c, r in PAIRS]
    for row, ex in zip(trainer.train_dataset, examples):  # the same tokens for prompt + answer
        assert row["prompt_ids"] + row["chosen_ids"] == ex.input_ids[0]
        assert row["prompt_ids"] + row["rejected_ids"] == ex.input_ids[1]
    trainer.train()

    objective = DPO(loss_type="sigmoid", beta=0.1, loss_impl="torch")
    module = type("M", (), {"model": mine, "adapter": LoRA(r=8, alpha=16, dropout=0.0)})()
    objective.setup(module)
    batch = PaddedCollator(tok.pad_token_id)(examples)
    losses = our_steps(mine, batch, lambda b: objective.loss(module, b, "train")[0])
    their = trl_losses(trainer)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7) and their[0] == pytest.approx(math.log(2), abs=1e-7)
    assert losses == pytest.approx(their, abs=LOSS_ATOL)
    worst = assert_same_weights(mine, trainer.model)
    print(f"DPO lora: {STEPS} steps, losses {losses[0]:.4f} -> {losses[-1]:.4f}, max |weight diff| {worst:.2e}")
