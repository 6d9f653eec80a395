"""Evol-instruct: prompts, elimination rules, provenance, and resuming an interrupted run."""

import json

import pytest

from tests.conftest import write_jsonl
from zhilu.errors import ConfigError, DataError
from zhilu.synth.evol import Evolver, Instruction, guess_domain, load_seeds
from zhilu.synth.evol_prompts import DOMAIN_GUIDES, DOMAINS, OPERATIONS
from zhilu.synth.filters import EvolFilter, strip_label
from zhilu.synth.store import JsonlStore

SEED = "信用卡逾期一天会影响征信吗？"


def test_every_operation_prompt_contains_the_seed_and_its_instruction():
    assert set(OPERATIONS) == {"add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input",
                               "breadth"}
    prompts = set()
    for op in OPERATIONS.values():
        for domain in DOMAINS:
            p = op.prompt(SEED, domain)
            assert SEED in p and op.directive_for(domain) in p and DOMAIN_GUIDES[domain] in p
            assert p.rstrip().endswith(("#改写后的指令#：", "#新指令#：")) and "{" not in p
            prompts.add(p)
    assert len(prompts) == len(OPERATIONS) * len(DOMAINS)  # every (operation, domain) prompt differs
    fin = OPERATIONS["complicate_input"].directive_for("finance")
    assert "账单" in fin and fin != OPERATIONS["complicate_input"].directive_for("general")
    assert OPERATIONS["breadth"].kind == "breadth" and "同一领域（中国消费金融）" in OPERATIONS["breadth"].prompt(SEED, "finance")


@pytest.mark.parametrize("child, reason", [
    (SEED, "no information gain"),
    ("信用卡逾期一天，会影响征信吗", "no information gain"),  # same words, other punctuation
    ("根据给定指令，信用卡逾期一天会影响征信吗？请说明。", "copied prompt words"),
    ("Rewritten Prompt: does a one-day late payment hurt my credit?", "copied prompt words"),
    ("？？", "empty instruction"),
    ("逾期", "instruction too short"),
    ("逾" * 2001, "instruction too long"),
    ("信用卡逾期一天会影响征信吗？如果当天就补上欠款并联系银行说明情况，银行是否会上报征信？请分情况说明。", None),
])
def test_instruction_elimination_rules(child, reason):
    assert EvolFilter().check_instruction(SEED, child) == reason


@pytest.mark.parametrize("answer, reason", [
    ("", "empty answer"),
    ("……。", "empty answer"),
    ("好", "answer too short"),
    ("抱歉，我无法回答这个问题。", "refusal"),
    ("I'm sorry, but I cannot help with that.", "refusal"),
    ("作为一个AI，我不能提供建议。", "refusal"),
    ("答" * 8001, "answer too long"),
    ("一般不会。多数银行有还款宽限期，抱歉的是各行规定不同。" + "具体以合同为准。" * 30, None),  # long: not a refusal
    ("一般不会，多数银行有1到3天的还款宽限期。", None),
])
def test_answer_elimination_rules(answer, reason):
    assert EvolFilter().check_answer(answer) == reason


def test_strip_label_removes_echoed_headers_and_quotes():
    assert strip_label("#改写后的指令#：\n“请比较两种还款方式。”") == "请比较两种还款方式。"
    assert strip_label("新指令: 什么是LPR？") == "什么是LPR？"


def test_guess_domain_and_load_seeds(tmp_path):
    assert guess_domain("等额本息的月供怎么算？") == "finance"
    assert guess_domain("写一个 Python 函数反转链表") == "code"
    assert guess_domain("解方程 x^2 - 5x + 6 = 0") == "math"
    assert guess_domain("推荐几本历史书") == "general"
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": SEED},
                          {"role": "assistant", "content": "会。"}], "id": "s1"},
            {"messages": [{"role": "user", "content": SEED + " "}, {"role": "assistant", "content": "重复"}]},
            {"messages": [{"role": "user", "content": "写首诗"}, {"role": "assistant", "content": "好"}],
             "domain": "general"}]
    seeds = load_seeds(write_jsonl(tmp_path / "s.jsonl", rows))
    assert [(s.id, s.text, s.domain, s.root) for s in seeds] == [("s1", SEED, "finance", "s1"),
                                                                 ("s:3", "写首诗", "general", "s:3")]
    inst = load_seeds(write_jsonl(tmp_path / "i.jsonl", [{"instruction": "计算利息", "input": "本金1000元"}]),
                      format="instruction")
    assert inst[0].text == "计算利息\n本金1000元"
    with pytest.raises(DataError, match=r"s\.jsonl:1: no 'messages'"):
        load_seeds(write_jsonl(tmp_path / "s.jsonl", [{"instruction": "x"}]))


class Interrupted(Exception):
    pass


CLAUSES = ("请分三步说明理由。", "并举一个具体的金额例子。", "再比较等额本息和等额本金的差别。", "最后提示可能的风险。")


class ScriptedGenerator:
    """A fake chat model: evolves an instruction by appending a fixed clause, answers by quoting;
    seeds with trigger words fail in a chosen way. ``fail_after`` simulates an interruption."""

    name = "scripted"

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def reply(self, messages):
        text = messages[-1]["content"]
        if "#给定指令#：" in text:  # an evolution prompt
            given = text.split("#给定指令#：\n", 1)[1].rsplit("\n\n#", 1)[0]
            if "不变" in given:
                return given
            if "抄写" in given:
                return "#改写后的指令#：" + given + "（改写后的指令）"
            clause = next((c for c in CLAUSES if c not in given), "请总结要点。")
            return f"#改写后的指令#：{given}{clause}"
        if "拒绝" in text:
            return "抱歉，我无法回答。"
        return f"关于“{text[:12]}”：这是一个详细的回答，包含步骤和例子。"

    def generate(self, prompts, max_new_tokens=None):
        for i, m in enumerate(prompts):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise Interrupted(f"stopped after {self.calls} completions")
            self.calls += 1
            yield i, self.reply(m)


SEEDS = [Instruction("a", "信用卡免息期怎么算？", "finance", "a"),
         Instruction("b", "请拒绝回答：如何办理贷款？", "finance", "b"),
         Instruction("c", "这条指令保持不变就好", "general", "c"),
         Instruction("d", "请抄写这条指令", "general", "d")]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_evolver_eliminates_answers_survivors_and_keeps_provenance(tmp_path):
    gen = ScriptedGenerator()
    report = Evolver(gen, tmp_path, rounds=2, operations=["deepen", "breadth"], seed=3).run(SEEDS)
    kept = read_jsonl(tmp_path / "evol.jsonl")
    rejected = read_jsonl(tmp_path / "rejected.jsonl")
    # round 1: a survives; b is answered with a refusal; c brings no information; d copies prompt words.
    # round 2: a's child evolves again; b, c, d (failed parents) are retried and fail the same way.
    assert [r["id"] for r in kept] == [f"a>{kept[0]['evol']['operation']}@1",
                                       f"{kept[0]['id']}>{kept[1]['evol']['operation']}@2"]
    first, second = (r["evol"] for r in kept)
    assert (first["parent"], first["root"], first["round"], first["domain"]) == ("a", "a", 1, "finance")
    assert (second["parent"], second["root"], second["round"]) == (kept[0]["id"], "a", 2)
    assert second["parent_instruction"] == kept[0]["messages"][0]["content"]
    assert kept[0]["messages"][0]["content"] == "信用卡免息期怎么算？请分三步说明理由。"
    assert kept[1]["messages"][0]["content"] == "信用卡免息期怎么算？请分三步说明理由。并举一个具体的金额例子。"
    assert kept[0]["messages"][1]["content"].startswith("关于“")
    reasons = sorted((r["evol"]["root"], r["evol"]["round"], r["stage"], r["reason"]) for r in rejected)
    assert reasons == [("b", 1, "answer", "refusal"), ("b", 2, "answer", "refusal"),
                       ("c", 1, "instruction", "no information gain"), ("c", 2, "instruction", "no information gain"),
                       ("d", 1, "instruction", "copied prompt words"), ("d", 2, "instruction", "copied prompt words")]
    assert report["rounds"][0] == {"round": 1, "pool": 4, "evolved": 2, "answered": 2, "kept": 1,
                                   "rejected_instruction": {"no information gain": 1, "copied prompt words": 1},
                                   "rejected_answer": {"refusal": 1}}
    assert report["generated"] == gen.calls == 4 + 2 + 4 + 2
    assert {k: v["tried"] for k, v in report["operations"].items()} == {
        k: sum(1 for r in kept + rejected if r["evol"]["operation"] == k) for k in report["operations"]}


def test_resume_after_an_interruption_writes_no_duplicate_and_loses_no_row(tmp_path):
    full = ScriptedGenerator()
    Evolver(full, tmp_path / "full", rounds=3, seed=1).run(SEEDS)
    expected = read_jsonl(tmp_path / "full" / "evol.jsonl")

    for stop in (1, 7, 13):  # inside round 1's evolutions, its answers, round 2
        out = tmp_path / f"cut{stop}"
        with pytest.raises(Interrupted):
            Evolver(ScriptedGenerator(fail_after=stop), out, rounds=3, seed=1, chunk_size=2).run(SEEDS)
        assert len(JsonlStore(out / "cache.jsonl")) == stop  # every finished completion was saved at once
        again = ScriptedGenerator()
        report = Evolver(again, out, rounds=3, seed=1, chunk_size=2).run(SEEDS)
        assert again.calls == full.calls - stop and report["reused_from_cache"] == stop
        assert read_jsonl(out / "evol.jsonl") == expected
        keys = [json.loads(line)["key"] for line in (out / "cache.jsonl").read_text().splitlines()]
        assert len(keys) == len(set(keys)) == full.calls
    # a third run regenerates nothing and rewrites the same rows
    idle = ScriptedGenerator()
    Evolver(idle, tmp_path / "full", rounds=3, seed=1).run(SEEDS)
    assert idle.calls == 0 and read_jsonl(tmp_path / "full" / "evol.jsonl") == expected


def test_store_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    store = JsonlStore(path)
    assert store.add({"key": "k1", "text": "一"}) and not store.add({"key": "k1", "text": "again"})
    with path.open("a", encoding="utf-8") as f:
        f.write('{"key": "k2", "te')  # the process died mid-write
    store = JsonlStore(path)
    assert list(store.records) == ["k1"] and path.read_text(encoding="utf-8").endswith("}\n")
    store.add({"key": "k2", "text": "二"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["k1", "k2"]


def test_bad_evolver_settings():
    with pytest.raises(ConfigError, match=r"evol.operations: unknown \['deeper'\]"):
        Evolver(ScriptedGenerator(), "/tmp/unused", operations=["deeper"])
    with pytest.raises(ConfigError, match="op_weights"):
        Evolver(ScriptedGenerator(), "/tmp/unused", operations=["deepen"], op_weights={"breadth": 1.0})
