"""Leaderboard prompt styles (official / OpenCompass / lm-evaluation-harness): the exact prompt texts,
the answer tokens each scores, BOS, and each tool's own rule for prompts that do not fit."""

from __future__ import annotations

import pytest

from tests.test_eval_common import CEVAL_TINY, CMMLU_TINY, tiny_benchmark
from zhilu.eval.loader import CsvLayout, Question
from zhilu.eval.prompts import CEvalFormat, CMMLUFormat, PromptBuilder
from zhilu.eval.styles import LmEvalCEvalFormat, LmEvalCMMLUFormat, OpenCompassCEvalFormat, OpenCompassCMMLUFormat
from zhilu.eval.subjects import load_subjects

CEVAL = CsvLayout()
CMMLU = CsvLayout(pattern="{split}/{subject}.csv", id_column="", question_column="Question", answer_column="Answer")
LAW_Q = "诉讼时效的一般期间为____年。\nA. 一\nB. 二\nC. 三\nD. 五"
LAW_S1 = "我国的根本大法是____。\nA. 刑法\nB. 民法典\nC. 宪法\nD. 行政法"
LAW_S2 = "完全民事行为能力人的年龄一般为____周岁以上。\nA. 十六\nB. 十八\nC. 二十\nD. 二十二"
ARTS_Q = "“书圣”指的是\nA. 颜真卿\nB. 柳公权\nC. 王羲之\nD. 欧阳询"
ARTS_S1 = "《蒙娜丽莎》的作者是\nA. 米开朗基罗\nB. 拉斐尔\nC. 达·芬奇\nD. 梵高"
ARTS_S2 = "京剧中扮演女性角色的行当是\nA. 生\nB. 旦\nC. 净\nD. 丑"
OC_CEVAL = "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n"
OC_CMMLU = "以下是关于艺术学的单项选择题，请直接给出正确答案的选项。\n"


def _law():
    return load_subjects("ceval")["law"], CEVAL.read(CEVAL_TINY, "dev", "law"), CEVAL.read(CEVAL_TINY, "val", "law")[0]


def _arts():
    arts = load_subjects("cmmlu")["arts"]
    return arts, CMMLU.read(CMMLU_TINY, "dev", "arts"), CMMLU.read(CMMLU_TINY, "test", "arts")[2]


def test_ceval_prompts_of_the_three_styles():
    law, shots, q = _law()
    assert CEvalFormat().completion(law, shots, q) == (
        "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n"
        f"{LAW_S1}\n答案：C\n\n{LAW_S2}\n答案：B\n\n{LAW_Q}\n答案：")
    # OpenCompass ceval_ppl: the instruction heads every HUMAN turn, turns joined by "\n"; the
    # letter follows "答案: \n"; an empty in-context slot still leaves its "\n" separator
    oc = OpenCompassCEvalFormat()
    assert oc.completion(law, shots, q) == (
        f"{OC_CEVAL}{LAW_S1}\n答案: \nC\n{OC_CEVAL}{LAW_S2}\n答案: \nB\n{OC_CEVAL}{LAW_Q}\n答案: \n")
    assert oc.completion(law, [], q) == f"\n{OC_CEVAL}{LAW_Q}\n答案: \n"
    # lm-evaluation-harness ceval-valid: its description lacks 考试; " C" after 答案：, shots joined by "\n\n"
    lm = LmEvalCEvalFormat()
    assert lm.completion(law, shots, q) == (
        "以下是中国关于法学的单项选择题，请选出其中的正确答案。\n\n"
        f"{LAW_S1}\n答案： C\n\n{LAW_S2}\n答案： B\n\n{LAW_Q}\n答案：")
    assert lm.completion(law, [], q) == f"以下是中国关于法学的单项选择题，请选出其中的正确答案。\n\n{LAW_Q}\n答案："


def test_cmmlu_prompts_of_the_three_styles():
    arts, shots, q = _arts()
    assert CMMLUFormat().completion(arts, shots[:1], q) == (
        "以下是关于艺术学的单项选择题，请直接给出正确答案的选项。\n\n"
        f"题目：{ARTS_S1}\n答案是：C\n\n题目：{ARTS_Q}\n答案是：")
    # OpenCompass cmmlu_ppl: HUMAN ends with the options, BOT is "答案是: {answer}"
    oc = OpenCompassCMMLUFormat()
    assert oc.completion(arts, shots, q) == (
        f"{OC_CMMLU}题目：{ARTS_S1}\n答案是: C\n{OC_CMMLU}题目：{ARTS_S2}\n答案是: B\n{OC_CMMLU}题目：{ARTS_Q}\n答案是:")
    assert oc.completion(arts, [], q) == f"\n{OC_CMMLU}题目：{ARTS_Q}\n答案是:"
    # lm-evaluation-harness cmmlu: no 题目 prefix, 答案： (full-width colon), question stripped
    lm = LmEvalCMMLUFormat()
    assert lm.completion(arts, shots[:1], q) == (
        f"以下是关于艺术学的单项选择题，请直接给出正确答案的选项。\n\n{ARTS_S1}\n答案： C\n\n{ARTS_Q}\n答案：")
    padded = Question(subject="arts", qid="9", question="  “书圣”指的是 \n", options=q.options, answer="C")
    assert lm.completion(arts, [], padded) == lm.completion(arts, [], q)
    assert CMMLUFormat().completion(arts, [], padded) != CMMLUFormat().completion(arts, [], q)


@pytest.mark.parametrize("style, letter_prefix, bos", [("official", "", True), ("opencompass", "", True),
                                                       ("lm_eval", " ", False)])
def test_answer_tokens_and_bos_per_style(tokenizer, style, letter_prefix, bos):
    bench = tiny_benchmark("ceval", f"benchmark.prompt_style={style}", "benchmark.shots=1")
    data = bench.load()
    law = bench.meta["law"]
    q = data.questions["law"][0]
    b = PromptBuilder(bench.format, tokenizer, 4096)
    p = b.build(law, data.shots_for(q), q)
    text = bench.format.completion(law, data.shots_for(q), q)
    assert p.ids == [tokenizer.bos_token_id] * bos + tokenizer.encode(text, add_special_tokens=False)
    assert b.choice_ids(q) == [tokenizer.encode(letter_prefix + x, add_special_tokens=False)[0] for x in "ABCD"]
    cm = tiny_benchmark("cmmlu", f"benchmark.prompt_style={style}")
    expected = {"official": "A", "opencompass": " A", "lm_eval": " A"}[style]
    q = cm.load().questions["arts"][0]
    assert PromptBuilder(cm.format, tokenizer, 4096).choice_ids(q)[0] == tokenizer.encode(
        expected, add_special_tokens=False)[0]


def _q(text, answer="A", qid="0"):
    return Question(subject="law", qid=qid, question=text, options=("1", "2", "3", "4"), answer=answer)


def test_cmmlu_rule_drops_every_shot_of_the_longest_length_at_once(tokenizer):
    """haonan-li/CMMLU src/mp_utils.py gen_prompt: separate tokenizer.encode counts (BOS included),
    ``>=``, all shots of the longest length removed together."""
    law = load_subjects("ceval")["law"]
    fmt = CMMLUFormat()
    tie1, tie2, short = _q("很长的题目" * 6, "B", "t1"), _q("很长的题目" * 6, "C", "t2"), _q("短", "D", "s")
    q = _q("问？")
    enc = tokenizer.encode  # default special tokens, as CMMLU calls it
    start_end = len(enc(fmt.head(law, 3))) + len(enc(fmt.question(q)))
    n_tie, n_short = len(enc(fmt.example(tie1))), len(enc(fmt.example(short)))
    assert n_tie == len(enc(fmt.example(tie2))) > n_short
    budget = start_end + 2 * n_tie + n_short  # sum of shots == budget - start_end: ">=" holds
    p = PromptBuilder(fmt, tokenizer, budget).build(law, [tie1, short, tie2], q)
    assert (p.shots, p.dropped_shots, p.dropped_header) == (1, 2, False)
    assert p.ids == PromptBuilder(fmt, tokenizer, 10**6).encode(law, [short], q)
    p = PromptBuilder(fmt, tokenizer, budget + 1).build(law, [tie1, short, tie2], q)  # now it fits
    assert (p.shots, p.dropped_shots) == (3, 0)
    # one at a time on the joint encoding (the C-Eval rule) the same budget keeps all three: it fits
    assert PromptBuilder(CEvalFormat(), tokenizer, budget).build(law, [tie1, short, tie2], q).shots == 3
    # header + question alone over the budget: CMMLU returns the bare question
    p = PromptBuilder(fmt, tokenizer, start_end - 1).build(law, [tie1, short, tie2], q)
    assert p.dropped_header and p.shots == 0
    assert p.ids == PromptBuilder(fmt, tokenizer, 10**6).encode(law, [], q, header=False)


def test_opencompass_drops_the_last_shot_and_lm_eval_cuts_from_the_left(tokenizer):
    law = load_subjects("ceval")["law"]
    long_, short, q = _q("很长的题目" * 6, "B", "l"), _q("短", "D", "s"), _q("问？")
    oc = PromptBuilder(OpenCompassCEvalFormat(), tokenizer, 10**6)
    full, first = len(oc.encode(law, [long_, short], q)), len(oc.encode(law, [long_], q))
    # OpenCompass PPLInferencer counts the prompt with its answer token against max_seq_len
    p = PromptBuilder(OpenCompassCEvalFormat(), tokenizer, full).build(law, [long_, short], q)
    assert (p.shots, p.ids) == (1, oc.encode(law, [long_], q))  # the last (shorter) shot went
    p = PromptBuilder(OpenCompassCEvalFormat(), tokenizer, first + 1).build(law, [long_, short], q)
    assert (p.shots, p.ids) == (1, oc.encode(law, [long_], q))
    p = PromptBuilder(OpenCompassCEvalFormat(), tokenizer, full + 1).build(law, [long_, short], q)
    assert p.shots == 2
    # lm-evaluation-harness keeps every shot and keeps the last max_length tokens, no BOS
    lm = PromptBuilder(LmEvalCEvalFormat(), tokenizer, 10**6)
    ids = lm.encode(law, [long_, short], q)
    assert ids[0] != tokenizer.bos_token_id
    p = PromptBuilder(LmEvalCEvalFormat(), tokenizer, len(ids) - 5).build(law, [long_, short], q)
    assert (p.shots, p.dropped_shots, p.truncated, p.ids) == (2, 0, 5, ids[5:])
