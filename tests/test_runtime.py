"""Model plumbing written once (zhilu.model.runtime): padding, generation prompts, loading, unwrapping."""

from __future__ import annotations

import io

import torch

from tests.conftest import TINY
from zhilu.adapters import LoRA
from zhilu.chat import ChatSession, SamplingConfig
from zhilu.data.encode import ChatEncoder
from zhilu.model import ModelBuilder
from zhilu.model.runtime import GenerationPrompt, base_causal_lm, load_model, pad_rows


def test_pad_rows_on_either_side():
    ids, mask = pad_rows([[1, 2, 3], [4]], 0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[1, 2, 3], [4]], 9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_generation_prompt_is_the_training_template_plus_the_assistant_header(tokenizer):
    messages = [{"role": "system", "content": "你是金融助手。"}, {"role": "user", "content": "什么是年化利率？"}]
    prompt = GenerationPrompt(tokenizer)
    enc = ChatEncoder(tokenizer)
    ids = prompt(messages)
    assert ids == enc.dialogue(messages)[0] + enc.header("assistant")
    assert prompt(messages, prefix="答案：") == ids + enc.text("答案：")
    cut = prompt(messages, budget=6)
    assert len(cut) == 6 and cut[0] == enc.bos and cut[1:] == ids[-5:] and prompt.truncated == 1


def test_load_model_puts_an_eval_model_on_the_device_and_unwraps_peft(tokenizer):
    model, tok = load_model(ModelBuilder(config=TINY, seed=0), "cpu")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert tok.pad_token_id is not None
    peft_model = LoRA(r=2).apply(model)
    assert base_causal_lm(peft_model) is model and base_causal_lm(model) is model


def test_chat_session_forgets_the_oldest_exchange_to_fit_the_context(tokenizer):
    model, tok = load_model(ModelBuilder(config=TINY, seed=0), "cpu")
    session = ChatSession(model, tok, system_prompt=None, sampling=SamplingConfig(max_new_tokens=4, temperature=0),
                          max_context=40)
    torch.manual_seed(0)
    out = io.StringIO()
    session.reply("信用卡免息期多久？", stream=out)
    session.reply("逾期会怎样？")
    assert len(session.history) == 4 and out.getvalue()
    ids = session._prompt_ids("分期的真实年化利率怎么算？")  # does not fit with both exchanges
    assert len(ids) <= 40 - 4 and len(session.history) < 4
