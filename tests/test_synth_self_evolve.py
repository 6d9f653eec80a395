"""Self-evolution: BM25, uncertainty estimates, the keep/drop rule, the pipeline's outputs, LocalLM."""

import json
import math

import pytest

from tests.conftest import ROOT, TINY, write_jsonl
from zhilu.errors import ConfigError
from zhilu.synth.questions import Question, load_questions
from zhilu.synth.retrieval import BM25Index, BM25Retriever, split_markdown
from zhilu.synth.self_evolve import SelfEvolver, clean_passage
from zhilu.synth.uncertainty import (
    Estimate, KeepRule, LetterEntropy, MeanTokenEntropy, SampleDisagreement, Uncertainty, letter_distribution,
)

KNOWLEDGE = {
    "credit.md": "# 征信\n\n## 不良信息保存期限\n\n个人征信的不良信息自不良行为终止之日起保存5年，到期后删除。\n\n"
                 "## 征信异议\n\n认为信用报告有错误，可以向征信中心免费提出**异议**，20日内答复。\n",
    "card.md": "# 信用卡\n\n## 免息期\n\n信用卡免息期一般为20到56天，取决于消费日与账单日、到期还款日。\n\n"
               "## 年费\n\n- 多数信用卡刷卡满一定次数可以免年费。\n",
    "rate.md": "# 利率\n\n## 日利率换算\n\n日利率万分之五约等于年化18.25%，按单利乘以365计算。\n",
}


@pytest.fixture
def knowledge(tmp_path):
    d = tmp_path / "knowledge"
    d.mkdir()
    for name, text in KNOWLEDGE.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def test_bm25_scores_hand_worked():
    idx = BM25Index([["信用卡", "免息期"], ["贷款", "利率", "利率"], ["信用卡", "利率"]], k1=1.5, b=0.75)
    # idf = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln 1.6; avgdl = 7/3
    # doc 1: tf 2, |d| 3: ln1.6 * 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 9/7)) = 0.614958
    # doc 2: tf 1, |d| 2: ln1.6 * 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 6/7)) = 0.502294
    assert idx.idf["利率"] == pytest.approx(math.log(1.6))
    assert idx.scores(["利率"]) == pytest.approx({1: 0.6149580, 2: 0.5022940})
    assert idx.top(["利率", "信用卡"], 1)[0][0] == 2  # the only document with both terms
    assert idx.scores(["股票"]) == {}


def test_bm25_ranks_the_relevant_passage_first(knowledge):
    r = BM25Retriever(knowledge, top_k=3)
    assert [p.title for p in r.passages] == ["信用卡 / 免息期", "信用卡 / 年费", "征信 / 不良信息保存期限",
                                             "征信 / 征信异议", "利率 / 日利率换算"]  # files sorted by name
    cases = {"征信不良记录要保留几年？": "不良信息保存期限", "信用卡的免息期有多长": "免息期",
             "日利率万分之五是多少年化": "日利率换算", "信用报告错了怎么申诉异议": "征信异议"}
    for query, title in cases.items():
        assert r.search(query)[0].title.endswith(title), query
    assert r.search("火星天气") == []


def test_bm25_on_the_shipped_knowledge_folder():
    folder = ROOT / "data" / "knowledge"
    if not folder.is_dir():
        pytest.skip("data/knowledge not there")
    r = BM25Retriever(folder)
    assert r.search("个人征信的不良信息保存期限是几年")[0].source == "credit_report.md"


def test_split_markdown_and_clean_passage():
    ps = split_markdown("# 甲\n\n## 乙\n\n第一段。\n\n第二段很长" + "长" * 20 + "。\n", "f.md", max_chars=15)
    assert [(p.id, p.title) for p in ps] == [("f.md#0", "甲 / 乙"), ("f.md#1", "甲 / 乙")]
    p = load_folder_one(KNOWLEDGE["card.md"])
    assert clean_passage(p) == "信用卡·年费\n多数信用卡刷卡满一定次数可以免年费。"


def load_folder_one(text):
    return [p for p in split_markdown(text, "card.md") if p.title.endswith("年费")][0]


def test_letter_entropy_is_normalised_and_picks_the_argmax():
    assert letter_distribution([math.log(0.2), math.log(0.6), -math.inf]) == pytest.approx([0.25, 0.75, 0.0])
    assert letter_distribution([-math.inf, -math.inf]) == [0.5, 0.5]

    class Backend:
        def choice_logprobs(self, prompts, choices, prefix):
            assert prefix == "答案：" and choices == ["A", "B", "C", "D"]
            return [[math.log(0.25)] * 4, [math.log(0.7), math.log(0.1), math.log(0.1), math.log(0.1)]]

    qs = [Question(f"q{i}", "题", {"A": "1", "B": "2", "C": "3", "D": "4"}) for i in range(2)]
    uniform, peaked = LetterEntropy().estimate(Backend(), qs, [None, None])
    assert uniform.uncertainty == pytest.approx(1.0) and uniform.label == "A"
    h = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)) / math.log(4)
    assert peaked.uncertainty == pytest.approx(h) and peaked.label == "A"


def test_sample_disagreement_clusters_similar_answers():
    est = SampleDisagreement(n_samples=4, similarity=0.5)
    same = est.cluster(["保存5年", "保存5年。", "保存五年", "保存5年整"])
    assert same.prediction == "保存5年" and same.uncertainty == pytest.approx(1 - 3 / 4)
    assert est.cluster(["甲", "乙", "丙", "丁"]).uncertainty == pytest.approx(0.75)


@pytest.mark.parametrize("before, after, rule, expected", [
    (Estimate("A", 0.9, "A"), Estimate("A", 0.3, "A"), KeepRule(), (True, "uncertainty fell")),
    (Estimate("A", 0.9, "A"), Estimate("A", 0.8, "A"), KeepRule(), (False, "no drop, no flip")),  # 11% < 20%
    (Estimate("A", 0.9, "A"), Estimate("A", 0.8, "A"), KeepRule(min_drop=0.1), (True, "uncertainty fell")),
    (Estimate("A", 0.9, "A"), Estimate("B", 0.95, "B"), KeepRule(), (True, "prediction flipped")),
    (Estimate("A", 0.9, "A"), Estimate("B", 0.95, "B"), KeepRule(keep_flips=False), (False, "no drop, no flip")),
    (Estimate("A", 0.9, "A"), Estimate("B", 0.1, "B"), KeepRule(), (True, "uncertainty fell + prediction flipped")),
    (Estimate("x", 3.0), Estimate("y", 2.0), KeepRule(), (True, "uncertainty fell")),  # open: no letters
    (Estimate("x", 3.0), Estimate("y", 2.9), KeepRule(), (False, "no drop, no flip")),
])
def test_keep_rule(before, after, rule, expected):
    assert rule.decide(before, after) == expected


def test_keep_rule_require_correct_and_bad_settings():
    rule = KeepRule(require_correct=True)
    assert rule.decide(Estimate("A", 1.0, "A"), Estimate("B", 0.2, "B"), gold="C") == (False, "wrong with knowledge")
    assert rule.decide(Estimate("A", 1.0, "A"), Estimate("C", 0.2, "C"), gold="C")[0]
    with pytest.raises(ConfigError, match="every criterion is off"):
        KeepRule(min_drop=None, min_relative_drop=None, keep_flips=False)


U = [0.25, 0.25, 0.25, 0.25]


class FakeModel:
    """The model being evolved: its letter distributions / token entropies are set by the test,
    per question and per stage (with or without retrieved knowledge in the prompt)."""

    identity = "fake"

    def __init__(self, table):
        self.table = table  # question text -> (without knowledge, with knowledge)
        self.seen = []

    def lookup(self, messages):
        text = messages[-1]["content"]
        self.seen.append(text)
        hit = [v for q, v in self.table.items() if q in text]
        assert len(hit) == 1, text
        return hit[0]["参考资料" in text]

    def choice_logprobs(self, prompts, choices, prefix):
        return [[math.log(p) if p > 0 else -math.inf for p in self.lookup(m)] for m in prompts]

    def generate_with_entropy(self, prompts, max_new_tokens):
        return [(f"回答{i}", self.lookup(m)) for i, m in enumerate(prompts)]


class FakeWriter:
    name = "writer"

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, max_new_tokens=None):
        for i, m in enumerate(prompts):
            self.prompts.append(m)
            text = m[-1]["content"]
            yield i, ("抱歉，我无法回答。" if "免息期" in text.split("问题：")[1] else "因为规定如此，依据是相关条例。")


def test_self_evolution_keeps_the_cases_where_knowledge_helped(knowledge, tmp_path):
    opts = {"A": "3年", "B": "5年", "C": "7年", "D": "10年"}
    qs = [Question("q1", "个人征信不良信息保存几年？", opts, "B"),
          Question("q2", "信用卡免息期最长多少天？", {"A": "30", "B": "56", "C": "60", "D": "90"}),
          Question("q3", "日利率万分之五相当于年化多少？", {"A": "5%", "B": "18.25%", "C": "36%", "D": "50%"}),
          Question("q4", "年化利率包括哪些费用？", {"A": "利息", "B": "全部", "C": "无", "D": "罚息"}),
          Question("q5", "火星上的天气怎么样？", {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}),
          Question("q6", "征信报告有错误怎么提出异议？"),
          Question("q7", "信用卡年费怎么免？")]
    model = FakeModel({
        "个人征信不良信息保存几年": (U, [0.03, 0.91, 0.03, 0.03]),  # uncertainty falls (and A -> B) -> kept
        "信用卡免息期最长多少天": ([0.3, 0.3, 0.2, 0.2], [0.28, 0.32, 0.2, 0.2]),  # letter flips -> kept
        "日利率万分之五相当于年化多少": ([0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]),  # no change -> dropped
        "年化利率包括哪些费用": ([0.97, 0.01, 0.01, 0.01], None),  # confident -> not selected
        "火星上的天气怎么样": (U, None),  # nothing retrieved
        "征信报告有错误怎么提出异议": (3.0, 1.0),  # open: entropy falls -> kept
        "信用卡年费怎么免": (3.0, 2.9),  # open: falls by 3% only -> dropped
    })
    writer = FakeWriter()
    ev = SelfEvolver(model, writer, BM25Retriever(knowledge, top_k=2),
                     Uncertainty(mcq=LetterEntropy(), open=MeanTokenEntropy()), tmp_path / "out", KeepRule(),
                     select_fraction=0.8, passages=2)
    report = ev.run(qs)
    cases = {c["id"]: c for c in map(json.loads, (tmp_path / "out" / "cases.jsonl").read_text().splitlines())}
    assert sorted(cases) == ["q1", "q2", "q3", "q5", "q6", "q7"]  # q4 (confident) was not selected
    assert {k: (c["kept"], c["reason"]) for k, c in cases.items()} == {
        "q1": (True, "uncertainty fell + prediction flipped"), "q2": (True, "prediction flipped"), "q3": (False, "no drop, no flip"),
        "q5": (False, "no passages"), "q6": (True, "uncertainty fell"),
        "q7": (False, "no drop, no flip")}
    assert cases["q1"]["u_before"] == pytest.approx(1.0) and cases["q1"]["pred_after"] == "B"
    assert cases["q2"]["answer_check"] == "refusal"
    steps = {k: report[k] for k in ("questions", "selected_uncertain", "with_passages", "rescored", "kept_by_rule",
                                    "answers_generated", "instruction_rows")}
    assert steps == {"questions": 7, "selected_uncertain": 6, "with_passages": 5, "rescored": 5, "kept_by_rule": 3,
                     "answers_generated": 3, "instruction_rows": 2}
    rows = [json.loads(x) for x in (tmp_path / "out" / "instructions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["self_evolve:q1", "self_evolve:q6"]
    q1 = rows[0]["messages"]
    assert q1[0]["content"] == "个人征信不良信息保存几年？\nA. 3年\nB. 5年\nC. 7年\nD. 10年"  # no passages in the row
    assert q1[1]["content"] == "因为规定如此，依据是相关条例。\n答案：B"
    assert "正确答案是 B" in writer.prompts[0][-1]["content"] and "参考资料" in writer.prompts[0][-1]["content"]
    knowledge_rows = [json.loads(x) for x in (tmp_path / "out" / "knowledge.jsonl").read_text().splitlines()]
    texts = [k["text"] for k in knowledge_rows]
    assert "征信·不良信息保存期限\n个人征信的不良信息自不良行为终止之日起保存5年，到期后删除。" in texts
    assert any("异议" in t and "**" not in t for t in texts) and len(set(texts)) == len(texts)
    assert report["knowledge_passages"] == len(knowledge_rows)
    # rerun: everything comes from the caches, the outputs are the same
    again = SelfEvolver(model, writer, BM25Retriever(knowledge, top_k=2),
                        Uncertainty(mcq=LetterEntropy(), open=MeanTokenEntropy()), tmp_path / "out", KeepRule(),
                        select_fraction=0.8, passages=2)
    n_seen, n_prompts = len(model.seen), len(writer.prompts)
    assert again.run(qs)["kept_by_rule"] == 3 and len(model.seen) == n_seen and len(writer.prompts) == n_prompts


def test_load_questions_csv_and_jsonl(tmp_path):
    csv = tmp_path / "banking_val.csv"
    csv.write_text("id,question,A,B,C,D,answer,explanation\n0,题一,a,b,c,d,C,\n", encoding="utf-8")
    q = load_questions(csv)[0]
    assert (q.id, q.text, q.choices, q.answer, q.subject) == ("banking_val:0", "题一", dict(A="a", B="b", C="c", D="d"),
                                                             "C", "banking")
    js = write_jsonl(tmp_path / "q.jsonl", [{"question": "选", "choices": ["x", "y"], "answer": "b"},
                                             {"messages": [{"role": "user", "content": "开放题"},
                                                           {"role": "assistant", "content": "参考"}]}])
    a, b = load_questions(js)
    assert a.choices == {"A": "x", "B": "y"} and a.answer == "B" and not b.is_mcq and b.answer == "参考"


# ------------------------------------------------------------------ the local model
@pytest.fixture(scope="module")
def tiny_lm(tokenizer):
    from zhilu.model import ModelBuilder
    from zhilu.synth.generators import LocalLM

    model = ModelBuilder(config=TINY, seed=3, attn_implementation="eager").build(tokenizer)
    return LocalLM.from_objects(model, tokenizer, batch_size=4, do_sample=False)


PROMPTS = [[{"role": "user", "content": q}] for q in ("免息期多久？", "征信不良记录保存几年？请详细说明原因。", "APR?")]


def test_local_batched_generation_matches_one_by_one(tiny_lm):
    batched = dict(tiny_lm.generate(PROMPTS, max_new_tokens=6))
    single = {i: dict(tiny_lm.generate([p], max_new_tokens=6))[0] for i, p in enumerate(PROMPTS)}
    assert batched == single and len(batched) == 3


def test_local_choice_logprobs_two_paths_agree(tiny_lm):
    abcd = tiny_lm.choice_logprobs(PROMPTS, ["A", "B", "C", "D"], "答案：")  # zhilu.eval's scorer
    dcba = tiny_lm.choice_logprobs(PROMPTS, ["D", "C", "B", "A"], "答案：")  # the left-padded path here
    for x, y in zip(abcd, dcba):
        assert x == pytest.approx(y[::-1], abs=1e-5)
        assert sum(math.exp(v) for v in x) < 1.0


def test_local_token_entropy_matches_a_forward_pass(tiny_lm):
    import torch

    (text, h), = tiny_lm.generate_with_entropy(PROMPTS[1:2], max_new_tokens=5)
    ids = tiny_lm.encoder.prompt(PROMPTS[1])
    with torch.no_grad():
        prompt = torch.tensor([ids])
        out = tiny_lm.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                                     do_sample=False, pad_token_id=tiny_lm.pad_id)
        gen = out[0, len(ids):].tolist()
        logits = tiny_lm.model(input_ids=torch.tensor([ids + gen])).logits[0, len(ids) - 1: len(ids) - 1 + len(gen)]
    stops = [i for i, t in enumerate(gen) if t in tiny_lm.stop_ids]
    n = stops[0] + 1 if stops else len(gen)  # up to and including the first stop token
    logp = torch.log_softmax(logits.float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    assert text == tiny_lm.tokenizer.decode(gen, skip_special_tokens=True).strip()
    assert h == pytest.approx(float(ent[:n].mean()), rel=1e-4) and h > 0
