"""Benchmark files and prompts: official layouts, bad rows, the exact official prompt strings, fitting."""

from __future__ import annotations

import pytest

from tests.test_eval_common import CEVAL_TINY, CMMLU_TINY, tiny_benchmark
from zhilu.errors import ConfigError, DataError
from zhilu.eval.loader import CsvLayout, Question
from zhilu.eval.prompts import CEvalFormat, CMMLUFormat, FinEvalFormat, PromptBuilder
from zhilu.eval.subjects import load_subjects
from zhilu.model.chat_template import render

CEVAL = CsvLayout()
CMMLU = CsvLayout(pattern="{split}/{subject}.csv", id_column="", question_column="Question", answer_column="Answer")


# ------------------------------------------------------------------------------------------ data
def test_both_layouts_read_ids_texts_and_answers():
    val = CEVAL.read(CEVAL_TINY, "val", "law")
    assert [q.qid for q in val] == ["0", "1", "2"]
    assert val[0].question == "诉讼时效的一般期间为____年。"
    assert val[0].options == ("一", "二", "三", "五") and val[0].answer == "C"
    assert val[1].source == f"{CEVAL_TINY}/val/law_val.csv:3"
    test = CEVAL.read(CEVAL_TINY, "test", "law")  # the official test split has no answer column
    assert len(test) == 2 and all(q.answer is None for q in test)
    cm = CMMLU.read(CMMLU_TINY, "test", "arts")
    assert [(q.qid, q.answer) for q in cm] == [("0", "B"), ("1", "A"), ("2", "C")]
    assert cm[2].question == "“书圣”指的是" and cm[2].option("C") == "王羲之"


def test_benchmark_selects_subjects_limits_and_takes_the_first_dev_rows():
    bench = tiny_benchmark("ceval", "benchmark.limit=2", "benchmark.shots=2")
    data = bench.load()
    assert [s.name for s in data.subjects] == ["computer_network", "college_physics", "marxism", "law", "accountant"]
    assert all(len(v) == 2 for v in data.questions.values())
    assert [q.qid for q in data.shots["law"]] == ["0", "1"]
    with pytest.raises(ConfigError, match=r"unknown ceval subject 'lawx' \(did you mean law"):
        tiny_benchmark("ceval", "benchmark.subjects=[lawx]")
    with pytest.raises(ConfigError, match="has only 2 examples"):
        tiny_benchmark("ceval", "benchmark.shots=3").load()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_files_and_rows_are_reported_with_file_and_line(tmp_path):
    with pytest.raises(DataError) as e:
        CEVAL.read(tmp_path, "val", "law")
    assert str(e.value).startswith(f"{tmp_path}/val/law_val.csv: missing val file for subject 'law'")
    head = "id,question,A,B,C,D,answer\n"
    # a quoted question spanning two lines shifts the next row's first line to 4
    f = _write(tmp_path / "val" / "law_val.csv", head + '0,"第一行\n第二行",a,b,c,d,A\n1,问题,a,b,,d,B\n')
    with pytest.raises(DataError) as e:
        CEVAL.read(tmp_path, "val", "law")
    assert str(e.value) == f"{f}:4: option C is empty (question id 1)"
    _write(f, head + "0,问题,a,b,c,d,A\n1,问题,a,b,c,d,E\n")
    with pytest.raises(DataError) as e:
        CEVAL.read(tmp_path, "val", "law")
    assert str(e.value) == f"{f}:3: answer 'E' is not one of A, B, C, D"
    _write(f, head + "0,问题,a,b,c,A\n")
    with pytest.raises(DataError, match=r"law_val.csv:2: 6 fields, the header has 7"):
        CEVAL.read(tmp_path, "val", "law")
    _write(f, "id,question,A,B,C,answer\n0,问题,a,b,c,A\n")
    with pytest.raises(DataError, match=r"law_val.csv:1: header .* lacks column\(s\) D"):
        CEVAL.read(tmp_path, "val", "law")
    _write(f, head + "0,问题,a,b,c,d,D \n")  # FinEval's one "D " is accepted as D
    assert CEVAL.read(tmp_path, "val", "law")[0].answer == "D"


# --------------------------------------------------------------------------------------- prompts
def _q(question, opts, answer, qid="0", subject="law"):
    return Question(subject=subject, qid=qid, question=question, options=tuple(opts), answer=answer)


def test_ceval_prompts_match_the_official_format_character_for_character():
    law = load_subjects("ceval")["law"]
    shots = CEVAL.read(CEVAL_TINY, "dev", "law")
    q = CEVAL.read(CEVAL_TINY, "val", "law")[0]
    fmt = CEvalFormat()
    assert fmt.completion(law, [], q) == (
        "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n"
        "诉讼时效的一般期间为____年。\nA. 一\nB. 二\nC. 三\nD. 五\n答案："
    )
    assert fmt.completion(law, shots, q) == (
        "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n"
        "我国的根本大法是____。\nA. 刑法\nB. 民法典\nC. 宪法\nD. 行政法\n答案：C\n\n"
        "完全民事行为能力人的年龄一般为____周岁以上。\nA. 十六\nB. 十八\nC. 二十\nD. 二十二\n答案：B\n\n"
        "诉讼时效的一般期间为____年。\nA. 一\nB. 二\nC. 三\nD. 五\n答案："
    )
    # chat mode (hkust-nlp/ceval resources/tutorial.md 3.2): instruction as system, shots as turns
    assert fmt.chat(law, shots[:1], q) == [
        {"role": "system", "content": "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。"},
        {"role": "user", "content": "我国的根本大法是____。\nA. 刑法\nB. 民法典\nC. 宪法\nD. 行政法\n答案："},
        {"role": "assistant", "content": "C"},
        {"role": "user", "content": "诉讼时效的一般期间为____年。\nA. 一\nB. 二\nC. 三\nD. 五\n答案："},
    ]


def test_cmmlu_and_fineval_prompts_match_the_official_formats():
    arts = load_subjects("cmmlu")["arts"]
    shots = CMMLU.read(CMMLU_TINY, "dev", "arts")
    q = CMMLU.read(CMMLU_TINY, "test", "arts")[2]
    fmt = CMMLUFormat()
    assert fmt.completion(arts, [], q) == (
        "以下是关于艺术学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：“书圣”指的是\nA. 颜真卿\nB. 柳公权\nC. 王羲之\nD. 欧阳询\n答案是："
    )
    assert fmt.completion(arts, shots, q) == (
        "以下是关于艺术学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：《蒙娜丽莎》的作者是\nA. 米开朗基罗\nB. 拉斐尔\nC. 达·芬奇\nD. 梵高\n答案是：C\n\n"
        "题目：京剧中扮演女性角色的行当是\nA. 生\nB. 旦\nC. 净\nD. 丑\n答案是：B\n\n"
        "题目：“书圣”指的是\nA. 颜真卿\nB. 柳公权\nC. 王羲之\nD. 欧阳询\n答案是："
    )
    # CMMLU src/llama3.py: the whole prompt is a single user message
    assert fmt.chat(arts, shots, q) == [{"role": "user", "content": fmt.completion(arts, shots, q)}]
    acc = load_subjects("fineval")["accounting"]
    fq = _q("哪项正确？", "甲乙丙丁", None, subject="accounting")
    fin = FinEvalFormat()
    assert fin.completion(acc, [], fq) == "哪项正确？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："  # no header at 0-shot
    shot = _q("例题", "1234", "D", subject="accounting")
    assert fin.completion(acc, [shot], fq) == (
        "以下是中国关于会计考试的单项选择题，我会给你几个有答案的例子，请你根据最后一个题目的要求进行回答。\n"
        "你只需要回答最后一个题目\n\n例题\nA. 1\nB. 2\nC. 3\nD. 4\n答案：D\n\n"
        "哪项正确？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )


def test_prompt_ids_are_bos_plus_text_and_chat_ids_are_the_llama3_rendering(tokenizer):
    law = load_subjects("ceval")["law"]
    shots = CEVAL.read(CEVAL_TINY, "dev", "law")
    q = CEVAL.read(CEVAL_TINY, "val", "law")[0]
    p = PromptBuilder(CEvalFormat(), tokenizer, 4096).build(law, shots, q)
    text = CEvalFormat().completion(law, shots, q)
    assert p.ids == [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
    assert (p.shots, p.dropped_shots) == (2, 0)
    chat = PromptBuilder(CEvalFormat(), tokenizer, 4096, chat=True).build(law, shots, q)
    rendered = render(CEvalFormat().chat(law, shots, q), add_generation_prompt=True)
    assert chat.ids == tokenizer.encode(rendered, add_special_tokens=False)


def test_overlong_prompts_drop_the_longest_shots_first_then_the_header(tokenizer):
    law = load_subjects("ceval")["law"]
    fmt = CEvalFormat()
    q = _q("问？", "1234", "A")
    short, long_, mid = _q("短", "1234", "A", "s"), _q("很长" * 30, "1234", "B", "l"), _q("中等" * 8, "1234", "C", "m")
    shots = [short, long_, mid]
    b = PromptBuilder(fmt, tokenizer, 10**6)
    n_all = len(b.encode(law, shots, q))
    n_without_long = len(b.encode(law, [short, mid], q))
    n_short_only = len(b.encode(law, [short], q))
    fits = PromptBuilder(fmt, tokenizer, n_all).build(law, shots, q)
    assert (fits.shots, fits.dropped_shots) == (3, 0)
    p = PromptBuilder(fmt, tokenizer, n_without_long).build(law, shots, q)
    assert (p.shots, p.dropped_shots) == (2, 1) and p.ids == b.encode(law, [short, mid], q)
    p = PromptBuilder(fmt, tokenizer, n_without_long - 1).build(law, shots, q)
    assert (p.shots, p.dropped_shots) == (1, 2) and p.ids == b.encode(law, [short], q)
    assert n_short_only <= n_without_long - 1
    zero = len(b.encode(law, [], q))
    p = PromptBuilder(fmt, tokenizer, zero - 1).build(law, shots, q)  # no shot fits and the header goes
    assert p.dropped_shots == 3 and p.dropped_header and p.ids == b.encode(law, [], q, header=False)
    bare = len(p.ids)
    p = PromptBuilder(fmt, tokenizer, bare - 3).build(law, shots, q)  # last resort: cut from the left
    assert p.truncated == 3 and len(p.ids) == bare - 3 and p.ids[0] == tokenizer.bos_token_id
    assert p.ids[1:] == b.encode(law, [], q, header=False)[4:]
