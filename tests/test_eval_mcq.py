"""Benchmarks of any shape from a folder (``benchmark=mcq``): CSV folders with Chinese file names and
2-5 options, JSON Lines and CFLUE-style JSON with a field mapping, multi-answer and true/false
questions, per-type tables, letter scoring over each question's own letters, bad rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY
from tests.test_eval_common import compose_eval, tiny_model_overrides
from zhilu.errors import ConfigError, DataError
from zhilu.eval.loader import CsvLayout, JsonLayout
from zhilu.eval.run import build, run
from zhilu.eval.runner import build_prompts, evaluate
from zhilu.eval.scoring import GenerateScorer, LetterLoglikScorer, extract_choices, option_credit
from zhilu.model import ModelBuilder

CPA, BANK = "注册会计师（CPA）", "银行从业（初级）"
CMMLU_HEAD = ",Question,A,B,C,D,E,Answer\n"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def cmmlu_folder(tmp_path):
    """FinanceIQ-like: CMMLU layout, Chinese file names with full-width parentheses, no metadata,
    a fifth option column that only some questions use, one multi-answer and one true/false row."""
    root = tmp_path / "fiq"
    for split in ("dev", "test"):
        _write(root / split / f"{CPA}.csv", CMMLU_HEAD + (
            "0,下列属于流动资产的是,存货,固定资产,无形资产,长期股权投资,,A\n"
            "1,下列属于投资活动现金流量的有,出售债券,收到股利,支付利息,保险赔偿,购买原材料,ABD\n"
            "2,所有者凭借所有者权益参与利润分配。,对,错,,,,A\n"))
        _write(root / split / f"{BANK}.csv", CMMLU_HEAD + (
            "0,商业银行最主要的风险是,市场风险,操作风险,信用风险,,,C\n"
            "1,发行债券属于,投资活动,筹资活动,经营活动,其他活动,不确定,B\n"))
    return root


JSONL_ROWS = [
    {"id": "q1", "question": "判断：存款保险最高偿付50万元。", "choices": ["对", "错"], "answer": "A"},
    {"id": "q2", "question": "年利率3.65%折合日利率", "choices": ["万分之一", "千分之一", "百分之一"], "answer": "A"},
    {"id": "q3", "question": "属于货币市场工具的有", "choices": {"A": "同业拆借", "B": "股票", "C": "国库券", "D": "回购协议",
                                                      "E": "公司债"}, "answer": "ACD"},
    {"id": "q4", "question": "信用卡最低还款额一般为", "choices": "{'A': '5%', 'B': '10%', 'C': '20%', 'D': '50%', 'E': '全额'}",
     "answer": "B"},
]


@pytest.fixture
def jsonl_folder(tmp_path):
    root = tmp_path / "fin"
    _write(root / "test" / "消费金融.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in JSONL_ROWS) + "\n")
    return root


CFLUE_ROWS = [  # CFLUE knowledge.json's shape: a JSON array, choices as a dict literal in a string
    {"名称": "证券从业资格", "task": "多项选择题", "question": "我国金融市场体系包括（）。",
     "choices": "{'A': '货币市场', 'B': '债券市场', 'C': '商品市场', 'D': '金融衍生品市场'}", "answer": "ABD", "analysis": None},
    {"名称": "反假货币知识", "task": "判断题", "question": "第四套人民币50元券使用毛泽东头像水印。（）",
     "choices": "{'A': '对', 'B': '错'}", "answer": "B", "analysis": "略。"},
    {"名称": "证券从业资格", "task": "单项选择题", "question": "（）年我国互换市场起步。",
     "choices": "{'A': '2004', 'B': '2005', 'C': '2007', 'D': '2011'}", "answer": "B", "analysis": None},
]


def _mcq(folder, *extra, out=None):
    return compose_eval(["benchmark=mcq", f"benchmark.data_dir={folder}", *tiny_model_overrides(), *extra], out)


# ------------------------------------------------------------------------------------------ reading
def test_cmmlu_folder_without_metadata_finds_its_subjects_and_question_shapes(cmmlu_folder):
    bench = build(_mcq(cmmlu_folder).benchmark)
    assert [s.name for s in bench.selected] == sorted([CPA, BANK])
    assert all(s.name_zh == s.name and s.category == "" for s in bench.selected)
    data = bench.load()
    cpa = data.questions[CPA]
    assert [len(q.options) for q in cpa] == [4, 5, 2]
    assert [(q.qtype, q.answer) for q in cpa] == [("single", "A"), ("multi", "ABD"), ("tf", "A")]
    assert cpa[1].option("E") == "购买原材料" and cpa[1].source == f"{cmmlu_folder}/test/{CPA}.csv:3"
    assert [len(q.options) for q in data.questions[BANK]] == [3, 5]
    # per-subject columns, the average, then the question types found
    assert list(bench.table) == [CPA, BANK, "Average", "Single", "Multi", "True/False", "Multi (per-option)"]
    # selecting a Chinese-named subject from the command line (quoted for Hydra's grammar)
    one = build(_mcq(cmmlu_folder, f'benchmark.subjects=["{CPA}"]').benchmark)
    assert [s.name for s in one.selected] == [CPA]


def test_jsonl_rows_with_two_three_and_five_options(jsonl_folder):
    layout = JsonLayout(id_field="id", require_answer=True)
    qs = layout.read(jsonl_folder, "test", "消费金融")
    assert [q.qid for q in qs] == ["q1", "q2", "q3", "q4"]
    assert [len(q.options) for q in qs] == [2, 3, 5, 5]
    assert [q.qtype for q in qs] == ["tf", "single", "multi", "single"]
    assert qs[3].options == ("5%", "10%", "20%", "50%", "全额") and qs[2].answer == "ACD"
    assert qs[1].source == f"{jsonl_folder}/test/消费金融.jsonl:2"


def test_cflue_knowledge_json_with_a_subject_field_and_type_names(tmp_path):
    path = _write(tmp_path / "cflue" / "knowledge.json", json.dumps(CFLUE_ROWS, ensure_ascii=False))
    cfg = _mcq(path.parent, "benchmark.layout=jsonl", "benchmark.layouts.jsonl.pattern=knowledge.json",
               'benchmark.layouts.jsonl.subject_field="名称"', "benchmark.layouts.jsonl.type_field=task")
    bench = build(cfg.benchmark)
    assert [s.name for s in bench.selected] == ["证券从业资格", "反假货币知识"]  # order of appearance
    data = bench.load()
    sec = data.questions["证券从业资格"]
    assert [(q.qid, q.qtype, q.answer, q.options[0]) for q in sec] == [("0", "multi", "ABD", "货币市场"),
                                                                     ("2", "single", "B", "2004")]
    assert data.questions["反假货币知识"][0].qtype == "tf"
    assert data.questions["反假货币知识"][0].source == f"{path}:[1]"


def test_categories_file_gives_category_and_hard_columns(cmmlu_folder):
    _write(cmmlu_folder / "categories.yaml", f"categories:\n  会计: ['{CPA}']\n  银行: ['{BANK}']\nhard: ['{CPA}']\n"
                                             f"names: {{'{CPA}': 注册会计师}}\n")
    bench = build(_mcq(cmmlu_folder).benchmark)
    assert {s.name: (s.category, s.hard, s.name_zh) for s in bench.selected} == {
        CPA: ("会计", True, "注册会计师"), BANK: ("银行", False, BANK)}
    assert list(bench.table) == ["会计", "银行", "Avg", "Avg(Hard)"]
    # CMMLU's own categories.json: category2subject, a subject may also be "China specific"
    (cmmlu_folder / "categories.yaml").unlink()
    _write(cmmlu_folder / "categories.json", json.dumps({"category2subject": {"STEM": [CPA], "Other": [BANK],
                                                                           "China specific": [CPA, BANK]}}))
    bench = build(_mcq(cmmlu_folder).benchmark)
    assert list(bench.table) == ["STEM", "Other", "China specific", "Avg"]
    assert bench.groups()["China specific"] == [CPA, BANK]
    _write(cmmlu_folder / "categories.json", '{"categories": {"会计": ["不存在的科目"]}}')
    with pytest.raises(ConfigError, match=r"categories.json: subject\(s\) 不存在的科目 not found in the data folder"):
        build(_mcq(cmmlu_folder).benchmark)


# --------------------------------------------------------------------------------------- bad input
def test_bad_rows_name_the_file_and_row(tmp_path, cmmlu_folder):
    f = tmp_path / "x" / "test" / "s.csv"
    layout = CsvLayout(pattern="{split}/{subject}.csv", id_column="", question_column="Question",
                       answer_column="Answer", min_options=2, max_options=26, multi_answer=True, require_answer=True)
    cases = [
        (",Question,A,B,C\n0,问,a,b,c\n", f"{f}:1: header ,Question,A,B,C lacks the answer column 'Answer'"),
        (",Question,A,B,C,Answer\n0,问,a,b,c,A\n1,问,a,b,,C\n", f"{f}:3: answer 'C' is not one of A, B"),
        (",Question,A,B,C,Answer\n0,问,a,b,c,A\n1,问,a,,,A\n", f"{f}:3: fewer than two options (question id 1)"),
        (",Question,A,B,C,Answer\n0,问,a,b,c,AE\n", f"{f}:2: answer 'AE' is not one of A, B, C"),
        (",Question,A,B,C,Answer\n0,问,a,b,c,A\n0,问,a,b,c,B\n", f"{f}:3: duplicate question id '0' (first at 2)"),
        (",Question,A,B,D,Answer\n0,问,a,b,c,A\n", f"{f}:1: header ,Question,A,B,D,Answer lacks column(s) C"),
    ]
    for text, message in cases:
        _write(f, text)
        with pytest.raises(DataError) as e:
            layout.read(tmp_path / "x", "test", "s")
        assert str(e.value) == message
    f.write_bytes(",Question,A,B,Answer\n0,问,a,b,A\n1,".encode() + "问".encode("gbk") + b",a,b,A\n")
    with pytest.raises(DataError, match=rf"^{f}:3: not UTF-8 text"):
        layout.read(tmp_path / "x", "test", "s")
    # the official benchmarks have exactly A-D: an E column is an error, never silently dropped
    ceval = CsvLayout()
    _write(tmp_path / "c" / "val" / "law_val.csv", "id,question,A,B,C,D,E,answer\n0,问,a,b,c,d,e,A\n")
    with pytest.raises(DataError, match=r"law_val.csv:1: option column\(s\) E beyond this benchmark's A-D"):
        ceval.read(tmp_path / "c", "val", "law")
    j = _write(tmp_path / "j" / "test" / "s.jsonl", '{"question": "问", "choices": ["a"], "answer": "A"}\n')
    with pytest.raises(DataError, match=rf"^{j}:1: fewer than two options$"):
        JsonLayout(require_answer=True).read(tmp_path / "j", "test", "s")
    _write(j, '{"question": "问", "choices": ["a", "b"]}\n')
    with pytest.raises(DataError, match=rf"^{j}:1: no answer \(field 'answer'\)$"):
        JsonLayout(require_answer=True).read(tmp_path / "j", "test", "s")


def test_bad_row_stops_the_run_before_the_model_loads(cmmlu_folder):
    bad = cmmlu_folder / "test" / f"{BANK}.csv"
    _write(bad, CMMLU_HEAD + "0,问题,a,b,c,d,e,F\n")
    with pytest.raises(DataError, match=rf"^{bad}:2: answer 'F' is not one of A, B, C, D, E$"):
        run(_mcq(cmmlu_folder, "model.path=/nonexistent"))
    with pytest.raises(ConfigError, match=r"^benchmark.layout='xml': expected one of ceval, cmmlu, jsonl$"):
        build(_mcq(cmmlu_folder, "benchmark.layout=xml").benchmark)
    with pytest.raises(ConfigError, match=r"benchmark.data_dir=.*nowhere: no such directory"):
        build(_mcq(cmmlu_folder / "nowhere").benchmark)


# -------------------------------------------------------------------------------------- scoring
class FixedModel(torch.nn.Module):
    """A ``*ForCausalLM``-shaped model with known preferences: the same next-token logits after any
    prompt (``prefs``: token id -> logit, 0 elsewhere), and a fixed greedy reply per question text."""

    def __init__(self, vocab: int, prefs: dict[int, float], tokenizer=None, replies: dict[str, str] | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.logit = torch.zeros(vocab)
        for t, v in prefs.items():
            self.logit[t] = v
        self.tok, self.replies = tokenizer, replies or {}
        outer = self

        class Backbone(torch.nn.Module):
            def forward(self, input_ids, attention_mask=None, use_cache=False):
                return SimpleNamespace(last_hidden_state=outer.logit.expand(*input_ids.shape, -1))

        self.model = Backbone()
        self.lm_head = torch.nn.Identity()

    def generate(self, input_ids, attention_mask=None, max_new_tokens=8, **kw):
        rows = []
        for row, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(row[mask.bool()], skip_special_tokens=True)
            reply = next((r for key, r in self.replies.items() if key in prompt), "")
            rows.append(row.tolist() + self.tok.encode(reply, add_special_tokens=False)[:max_new_tokens])
        width = max(map(len, rows))
        return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def _ids(tok, *texts):
    return [tok.encode(t, add_special_tokens=False)[0] for t in texts]


def test_letter_scoring_is_restricted_to_each_questions_own_letters(tokenizer, jsonl_folder):
    a, b, c, d, e = _ids(tokenizer, "A", "B", "C", "D", "E")
    # preference E > D > B > A > C: a 2-option question must answer B, a 3-option one B, 5 options E
    model = FixedModel(len(tokenizer), {e: 5.0, d: 4.0, b: 3.0, a: 2.0, c: 1.0}, tokenizer,
                       replies={"货币市场工具": "答案：A、C、D"})
    bench = build(_mcq(jsonl_folder, "benchmark.layout=jsonl", "benchmark.layouts.jsonl.id_field=id").benchmark)
    result = evaluate(bench, model, tokenizer, LetterLoglikScorer(batch_size=3), multi_scorer=GenerateScorer())
    got = {r["id"]: (r["pred"], r["correct"]) for r in result.records}
    assert got == {"q1": ("B", False), "q2": ("B", False), "q3": ("ACD", True), "q4": ("E", False)}
    rec = {r["id"]: r for r in result.records}
    assert len(rec["q1"]["letter_logprobs"]) == 2 and len(rec["q4"]["letter_logprobs"]) == 5
    assert rec["q3"]["output"] == "答案：A、C、D" and rec["q3"]["option_credit"] == 1.0
    # lm_eval style scores the tokens " A", " B", ...: a model preferring " A" answers A everywhere
    sp = _ids(tokenizer, " A", " B", " C", " D", " E")
    model2 = FixedModel(len(tokenizer), {sp[0]: 5.0, e: 9.0}, tokenizer)
    lm = build(_mcq(jsonl_folder, "benchmark.layout=jsonl", "benchmark.prompt_style=lm_eval").benchmark)
    res2 = evaluate(lm, model2, tokenizer, LetterLoglikScorer(), multi_scorer=GenerateScorer())
    assert [r["pred"] for r in res2.records if r["type"] != "multi"] == ["A", "A", "A"]


def test_per_type_table_layout_and_partial_credit(tokenizer, cmmlu_folder):
    a, b, c, d, e = _ids(tokenizer, "A", "B", "C", "D", "E")
    # singles/tf: A wins. CPA: 0 (A, right), 2 (tf, A, right); BANK: 0 (C: wrong), 1 (B: wrong).
    model = FixedModel(len(tokenizer), {a: 3.0}, tokenizer,
                       replies={"投资活动现金流量": "选A和B", "发行债券": "B"})
    bench = build(_mcq(cmmlu_folder).benchmark)
    data = bench.load()
    result = evaluate(bench, model, tokenizer, LetterLoglikScorer(), data=data, multi_scorer=GenerateScorer())
    preds = {(r["subject"], r["id"]): r["pred"] for r in result.records}
    assert preds == {(CPA, "0"): "A", (CPA, "1"): "AB", (CPA, "2"): "A", (BANK, "0"): "A", (BANK, "1"): "A"}
    # CPA 2/3, BANK 0/2; single 1/3, multi 0/1, tf 1/1; per-option credit of AB vs ABD over 5 options: 4/5
    assert result.table.splitlines() == [
        f"| Model | {CPA} | {BANK} | Average | Single | Multi | True/False | Multi (per-option) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| model | 66.67 | 0.00 | 33.33 | 33.33 | 0.00 | 100.00 | 80.00 |",
    ]
    assert result.stats["questions_by_type"] == {"single": 3, "multi": 1, "tf": 1}


@pytest.mark.parametrize("text, expected", [
    ("答案：A、C", "AC"),
    ("AC", "AC"),
    ("选A和C", "AC"),
    ("正确答案是B, D。", "BD"),
    ("答案为 A C E", "ACE"),
    ("我无法回答这个问题。", None),
    ("抱歉，作为AI我不能提供投资建议", None),
    ("", None),
    ("Apple", None),
    ("答案：AF", None),  # F is not an option of a 5-option question
])
def test_multi_answer_extraction(text, expected):
    assert extract_choices(text, "ABCDE") == expected


def test_option_credit_counts_agreeing_options():
    assert option_credit("ABD", "ABD", 5) == 1.0
    assert option_credit("AB", "ABD", 5) == pytest.approx(4 / 5)  # D missed
    assert option_credit("ABCD", "ABD", 4) == pytest.approx(3 / 4)  # C wrongly chosen
    assert option_credit(None, "AC", 4) == pytest.approx(2 / 4)  # a refusal chooses nothing


def test_batched_and_one_by_one_agree_on_mixed_option_counts(tokenizer, jsonl_folder, cmmlu_folder):
    model = ModelBuilder(config=TINY, seed=5, attn_implementation="sdpa").build(tokenizer).eval()
    prompts = []
    for folder, extra in ((jsonl_folder, ["benchmark.layout=jsonl"]), (cmmlu_folder, ["benchmark.shots=1"])):
        for style in ("official", "opencompass", "lm_eval"):
            bench = build(_mcq(folder, *extra, f"benchmark.prompt_style={style}").benchmark)
            prompts += [p for q, p in build_prompts(bench, bench.load(), tokenizer, 4096) if not q.multi]
    ids, choices = [p.ids for p in prompts], [p.choices for p in prompts]
    assert {len(c) for c in choices} == {2, 3, 4, 5}
    one = LetterLoglikScorer(batch_size=1)(model, tokenizer, ids, choices=choices)
    many = LetterLoglikScorer(batch_size=7)(model, tokenizer, ids, choices=choices)
    assert [s.pred for s in one] == [s.pred for s in many]
    for x, y in zip(one, many):
        torch.testing.assert_close(torch.tensor(x.letter_logprobs), torch.tensor(y.letter_logprobs), atol=1e-4, rtol=0)


def test_eval_py_on_a_folder_writes_the_per_type_table(tmp_path, cmmlu_folder):
    summary = run(_mcq(cmmlu_folder, "scorers.generate.max_new_tokens=4", "model_name=tiny", out=tmp_path / "run"))
    table = (tmp_path / "run" / "table.md").read_text(encoding="utf-8").splitlines()
    assert table[0] == f"| Model | {CPA} | {BANK} | Average | Single | Multi | True/False | Multi (per-option) |"
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["type"] for p in preds] == ["single", "multi", "tf", "single", "single"]
    multi = [p for p in preds if p["type"] == "multi"][0]
    assert "output" in multi and "letter_logprobs" not in multi
    per_subject = {s: [p["correct"] for p in preds if p["subject"] == s] for s in (CPA, BANK)}
    acc = {s: 100 * sum(v) / len(v) for s, v in per_subject.items()}
    assert summary["accuracy"]["avg"] == pytest.approx((acc[CPA] + acc[BANK]) / 2)
    assert summary["accuracy"]["type:multi_partial"] == pytest.approx(100 * multi["option_credit"])


def test_folder_prompts_drop_shots_that_do_not_fit(tokenizer, cmmlu_folder):
    bench = build(_mcq(cmmlu_folder, "benchmark.shots=1").benchmark)
    data = bench.load()
    full = {(q.subject, q.qid): p for q, p in build_prompts(bench, data, tokenizer, 4096)}
    assert {p.shots for p in full.values()} == {1}
    # the multi-answer question gets a multi-answer shot, the true/false one a true/false shot
    cpa = {q.qid: q for q in data.questions[CPA]}
    assert data.shots_for(cpa["1"])[0].qtype == "multi" and data.shots_for(cpa["2"])[0].qtype == "tf"
    budget = min(len(p.ids) for p in full.values()) - 1
    tight = build_prompts(bench, data, tokenizer, budget, budget)
    assert all(p.shots == 0 and p.dropped_shots == 1 and len(p.ids) <= budget for _, p in tight)
