"""``data.overlong``: ``truncate_prompt`` keeps every answer token and masks nothing that trains; the
rows and tokens each policy loses are counted (``fit_example``'s result, ``metrics.json``) and warned about."""

import json
import logging

import pytest

from tests.conftest import compose_train, fast_overrides, write_jsonl
from zhilu.data.encode import IGNORE_INDEX, ChatEncoder, fit_example

SYSTEM = {"role": "system", "content": "你是金融助手。"}
Q1 = {"role": "user", "content": "请详细解释信用卡的免息期。" * 6}
A1 = {"role": "assistant", "content": "免息期是从消费日到还款日之间的时间。" * 6}
Q2 = {"role": "user", "content": "逾期会怎样？"}
A2 = {"role": "assistant", "content": "逾期会产生利息和违约金，并影响征信记录。"}
DIALOGUE = [SYSTEM, Q1, A1, Q2, A2]


def labelled(labels):
    return sum(1 for x in labels if x != IGNORE_INDEX)


def test_truncate_prompt_drops_the_oldest_turns_and_keeps_every_answer_token(tokenizer):
    enc = ChatEncoder(tokenizer)
    full_ids, full_labels = enc.dialogue(DIALOGUE)
    kept_ids, kept_labels = enc.dialogue([Q2, A2])  # what fits: the last question and its answer
    # a budget that fits Q2 + A2 (and A1 with them) but not Q1: cutting must not start at A1
    size = lambda m: len(enc.turn(m["role"], m["content"]))  # noqa: E731
    assert size(Q1) > 30 and size(A1) > 30
    max_length = len(kept_ids) + size(A1) + 5
    fitted = fit_example(enc.encode_sft(DIALOGUE), max_length, "truncate_prompt")
    ex = fitted.example
    # exactly the encoding of the dialogue [Q2, A2]: the same ids and the same labels (nothing masked)
    assert ex.input_ids == [kept_ids] and ex.labels == [kept_labels]
    assert tokenizer.decode([t for t in ex.labels[0] if t != IGNORE_INDEX]) == A2["content"] + "<|eot_id|>"
    assert fitted.status == "truncated"
    assert fitted.tokens_lost == len(full_ids) - len(kept_ids) == size(SYSTEM) + size(Q1) + size(A1)
    a1_head = enc.turn("assistant", A1["content"]).head
    assert fitted.label_tokens_lost == labelled(full_labels) - labelled(kept_labels) == size(A1) - a1_head


def test_truncate_prompt_keeps_earlier_answers_that_fit(tokenizer):
    enc = ChatEncoder(tokenizer)
    short_q1 = {"role": "user", "content": "免息期？"}
    dialogue = [SYSTEM, Q1, A2, short_q1, A2]
    ids, labels = enc.dialogue(dialogue[2:])  # starts at an answer: the cut goes one turn further
    expected = enc.dialogue(dialogue[3:])
    fitted = fit_example(enc.encode_sft(dialogue), len(ids) + 2, "truncate_prompt")
    assert (fitted.example.input_ids[0], fitted.example.labels[0]) == expected
    # control: when everything fits nothing changes
    assert fit_example(enc.encode_sft([SYSTEM, short_q1, A2]), 512, "truncate_prompt").status == "kept"


def test_truncate_prompt_cuts_the_start_of_a_question_too_long_alone(tokenizer):
    enc = ChatEncoder(tokenizer)
    dialogue = [Q1, A2]
    full_ids, full_labels = enc.dialogue(dialogue)
    answer = enc.turn("assistant", A2["content"])
    question = enc.turn("user", Q1["content"])
    max_length = 1 + question.head + 10 + len(answer)  # room for 10 of the question's tokens
    ex = fit_example(enc.encode_sft(dialogue), max_length, "truncate_prompt").example
    ids, labels = ex.input_ids[0], ex.labels[0]
    assert len(ids) == max_length
    assert ids == [enc.bos, *question.ids[: question.head], *question.ids[-10:], *answer.ids]
    assert labels[-len(answer):] == answer.labels and labelled(labels) == labelled(full_labels)  # every answer token
    assert labelled(labels[: -len(answer)]) == 0


def test_an_answer_too_long_alone_is_cut_at_its_end_as_truncate_does(tokenizer):
    enc = ChatEncoder(tokenizer)
    ids, labels = enc.dialogue([Q2, A1])
    max_length = len(ids) - 20  # A1 alone (with BOS) is longer than this
    assert 1 + len(enc.turn("assistant", A1["content"])) > max_length
    fitted = fit_example(enc.encode_sft([Q2, A1]), max_length, "truncate_prompt")
    assert fitted.example.input_ids == [ids[:max_length]] and fitted.example.labels == [labels[:max_length]]
    assert (fitted.status, fitted.tokens_lost, fitted.label_tokens_lost) == ("truncated", 20, 20)
    # with no label left in the first max_length tokens, the row is dropped, every token counted
    ids, labels = enc.dialogue(DIALOGUE)
    fitted = fit_example(enc.encode_sft(DIALOGUE), 12, "truncate_prompt")
    assert fitted.example is None and fitted.status == "dropped"
    assert (fitted.tokens_lost, fitted.label_tokens_lost) == (len(ids), labelled(labels))


def test_truncate_loses_answer_tokens_where_truncate_prompt_keeps_them(tokenizer):
    """The same over-long row under both policies: ``truncate`` cuts the last answer, ``truncate_prompt`` none of it."""
    enc = ChatEncoder(tokenizer)
    ids, labels = enc.dialogue(DIALOGUE)
    max_length = len(ids) - 8
    end = fit_example(enc.encode_sft(DIALOGUE), max_length, "truncate")
    assert end.example.input_ids == [ids[:max_length]] and end.tokens_lost == 8
    assert end.label_tokens_lost == 8  # the last 8 tokens are the end of A2 and its <|eot_id|>
    prompt = fit_example(enc.encode_sft(DIALOGUE), max_length, "truncate_prompt")
    answer = enc.turn("assistant", A2["content"])
    assert prompt.example.labels[0][-len(answer):] == answer.labels


def test_truncate_prompt_gives_both_answers_of_a_pair_the_same_prompt(tokenizer):
    enc = ChatEncoder(tokenizer)
    prompt = [SYSTEM, Q1, A1, Q2]
    chosen, rejected = "可以协商分期还款。", "不用管它。" * 3
    whole = enc.encode_pair(prompt, chosen, rejected)
    c, r = enc.turn("assistant", chosen), enc.turn("assistant", rejected)
    size = lambda m: len(enc.turn(m["role"], m["content"]))  # noqa: E731
    # room for A1 and Q2 next to the longer answer, not for Q1: A1 would start the dialogue, so it goes too
    fitted = fit_example(whole, 1 + size(A1) + size(Q2) + len(r) + 2, "truncate_prompt")
    (c_ids, r_ids), (c_lab, r_lab) = fitted.example.input_ids, fitted.example.labels
    assert c_ids[: -len(c)] == r_ids[: -len(r)]  # one prompt for both
    assert c_ids[-len(c):] == c.ids and r_ids[-len(r):] == r.ids
    assert c_lab[-len(c):] == c.labels and r_lab[-len(r):] == r.labels
    assert c_ids[: -len(c)] == enc.dialogue([Q2])[0]  # oldest turns gone (A1 would start the dialogue)
    assert fitted.label_tokens_lost == 0
    assert fitted.tokens_lost == 2 * sum(len(enc.turn(m["role"], m["content"])) for m in prompt[:3])


def test_counts_reach_metrics_json_and_the_warning_says_what_keeps_them(tokenizer, tmp_path, caplog):
    d = tmp_path / "data"
    long_row = {"messages": DIALOGUE}
    write_jsonl(d / "finance_sft" / "train.jsonl", [long_row] * 4 + [{"messages": [Q2, A2]}] * 4)
    write_jsonl(d / "finance_sft" / "val.jsonl", [{"messages": [Q2, A2]}])
    from zhilu.train.run import train

    def run(policy: str, out):
        with caplog.at_level(logging.WARNING, logger="zhilu.data.datamodule"):
            train(compose_train(fast_overrides(
                d, "adapter=lora", "trainer.max_steps=1", "data.max_length=64", f"data.overlong={policy}",
                "callbacks.export.enabled=false", "callbacks.model_checkpoint=null", "validate_after_fit=false"),
                out))
        return json.loads((out / "metrics.json").read_text())["data"]

    enc = ChatEncoder(tokenizer)
    row = enc.encode_sft(DIALOGUE)
    expect = fit_example(row, 64, "truncate_prompt")
    caplog.clear()
    data = run("truncate_prompt", tmp_path / "a")
    assert data["train/truncated"] == 4 and data["train/dropped_overlong"] == 0
    assert data["train/truncated_tokens_lost"] == 4 * expect.tokens_lost
    assert data["train/label_tokens_lost"] == 4 * expect.label_tokens_lost
    msg = [r.message for r in caplog.records if "train data:" in r.message]
    assert len(msg) == 1 and "4 rows truncated" in msg[0] and "data.max_length=64" in msg[0]

    dropped = fit_example(row, 64, "drop")
    caplog.clear()
    data = run("drop", tmp_path / "b")
    assert data["train/dropped_overlong"] == 4 and data["train/dropped_tokens_lost"] == 4 * dropped.tokens_lost
    assert data["train/label_tokens_lost"] == 4 * dropped.label_tokens_lost
    msg = [r.message for r in caplog.records if "train data:" in r.message]
    assert len(msg) == 1 and "4 rows dropped" in msg[0] and "data.overlong=truncate_prompt keeps every answer" in msg[0]


@pytest.mark.parametrize("policy", ["truncate", "truncate_prompt", "drop"])
def test_rows_that_fit_are_kept_unchanged(tokenizer, policy):
    enc = ChatEncoder(tokenizer)
    ids, labels = enc.dialogue(DIALOGUE)
    fitted = fit_example(enc.encode_sft(DIALOGUE), len(ids), policy)
    assert fitted.status == "kept" and fitted.example.input_ids == [ids] and fitted.example.labels == [labels]
    assert (fitted.tokens_lost, fitted.label_tokens_lost) == (0, 0)


def test_pair_labels_cover_the_answers_only(tokenizer):
    """Earlier assistant turns of a pair's prompt are context, not labels (as ``prompt()`` + answer)."""
    enc = ChatEncoder(tokenizer)
    ex = enc.pair([Q2, A2, Q2], "好的。", "不。")
    for ids, labels, answer in zip(ex.input_ids, ex.labels, ("好的。", "不。")):
        a = [*enc.text(answer), enc.eot]
        assert ids == enc.prompt([Q2, A2, Q2]) + a
        assert labels == [IGNORE_INDEX] * (len(ids) - len(a)) + a
