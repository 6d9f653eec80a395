"""Data cleaning: normalisation, exact and near-duplicate removal, filters, benchmark leaks, the CLI."""

import json

import pytest

from tests.conftest import write_jsonl
from zhilu.data.clean import (
    BenchmarkLeakFilter, ExactDedup, LanguageFilter, LengthFilter, NearDedup, Normalize, Record,
    canonical, char_ngrams, detect_language, jaccard, main, normalize_text, read_records, run_steps,
)
from zhilu.errors import DataError


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def records(rows, fmt="chat"):
    return [Record("mem", i + 1, r, fmt) for i, r in enumerate(rows)]


def test_normalize_text_keeps_chinese_punctuation():
    raw = "  信用卡\u200b免息期　是\t\t多久？\r\n\r\n\r\n\r\nＡＰＲ是１８％， 对吗 \n"
    assert normalize_text(raw) == "信用卡免息期 是 多久？\n\nAPR是18％， 对吗"
    assert canonical("Hello, 世界！ A-B") == "hello世界ab"


def test_exact_dedup_ignores_case_space_and_punctuation():
    rows = [chat("什么是APR？", "年化百分率。"), chat("什么是 apr", "年化百分率"), chat("什么是LPR？", "贷款市场报价利率。")]
    kept, removed = ExactDedup()(records(rows))
    assert [r.line for r in kept] == [1, 3]
    assert len(removed) == 1 and removed[0].reason == "exact duplicate" and removed[0].detail == "of mem:1"


def test_near_dedup_removes_crafted_near_duplicates_only():
    base = ("信用卡逾期以后，银行会按照合同收取违约金和透支利息，逾期记录会上报征信系统，"
            "自不良行为终止之日起保留五年。建议尽快还清欠款，并与银行协商分期还款方案。")
    near1 = base.replace("建议尽快", "建议你尽快")  # one character inserted
    near2 = base.replace("五年", "5年").replace("违约金", "违约金、")  # small edits
    other = ("基金定投是指在固定的时间以固定的金额投资到指定的开放式基金中，类似于银行的零存整取，"
             "可以平摊成本、分散风险，适合没有时间研究市场的普通投资者长期坚持。")
    half = base[: len(base) // 2] + other[len(other) // 2:]  # shares half the text: not a near-duplicate
    rows = [chat("逾期会怎样？", base), chat("逾期会怎样？", near1), chat("基金定投是什么？", other),
            chat("逾期会怎样？", near2), chat("混合", half)]
    recs = records(rows)
    for a in (1, 3):  # the crafted pairs really are above / below the threshold
        assert jaccard(char_ngrams(recs[0].full, 5), char_ngrams(recs[a].full, 5)) >= 0.8
    assert jaccard(char_ngrams(recs[0].full, 5), char_ngrams(recs[4].full, 5)) < 0.8
    kept, removed = NearDedup(threshold=0.8)(recs)
    assert [r.line for r in kept] == [1, 3, 5]
    assert [(rm.record.line, rm.reason) for rm in removed] == [(2, "near duplicate"), (4, "near duplicate")]
    assert all(rm.detail.startswith("of mem:1 (Jaccard 0.") for rm in removed)


def test_length_and_language_filters():
    rows = [chat("问", "答" * 10), chat("问", "好"), chat("q" * 50, "a" * 10), chat("質問です", "これはペンです。ひらがな"),
            chat("What is APR?", "APR is the annual percentage rate."), chat("APR是什么？", "APR是年化百分率，包含费用。")]
    kept, removed = LengthFilter(min_answer_chars=2, max_prompt_chars=40)(records(rows))
    assert [r.line for r in kept] == [1, 4, 5, 6]
    assert [rm.reason for rm in removed] == ["answer too short", "prompt too long"]
    kept, removed = LanguageFilter(allowed=("zh",))(kept)
    assert [r.line for r in kept] == [1, 6]
    assert sorted(rm.reason for rm in removed) == ["language en", "language ja"]
    assert detect_language("12345 ，。") == "none" and detect_language("Привет мир") == "ru"


def test_benchmark_leak_filter_flags_rows_containing_a_benchmark_question(tmp_path):
    q = "根据我国《商业银行法》的规定，商业银行的资本充足率不得低于百分之几"
    (tmp_path / "ceval" / "val").mkdir(parents=True)
    (tmp_path / "ceval" / "val" / "banking_val.csv").write_text(
        "id,question,A,B,C,D,answer\n0," + q + ",4%,8%,10%,12%,B\n1,短问题,a,b,c,d,A\n", encoding="utf-8")
    flt = BenchmarkLeakFilter([tmp_path / "ceval"], ngram=8, min_overlap=0.5)
    assert len(flt.questions) == 2 and flt.sizes[1] == 0  # the 3-character question is too generic to index
    rows = [chat("请回答：" + q.replace("，", " ") + "？", "B"),  # the question, re-punctuated
            chat("商业银行的资本充足率是什么意思？", "资本与风险加权资产之比。"),  # same topic, different words
            chat("短问题", "短问题的答案")]
    kept, removed = flt(records(rows))
    assert [r.line for r in kept] == [2, 3]
    assert removed[0].reason == "benchmark leak" and "banking_val.csv:2" in removed[0].detail


def test_normalize_removes_rows_left_empty():
    kept, removed = Normalize()(records([chat("问", "\u200b \u3000"), chat("问", "答")]))
    assert [r.line for r in kept] == [2] and removed[0].reason == "empty after normalisation"


def test_read_records_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(chat("q", "a")) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: bad JSON"):
        read_records(path, "chat")
    bad = []
    assert len(read_records(path, "chat", "skip", bad)) == 1 and bad[0][0] == f"{path}:2"


def test_cli_writes_clean_rows_removed_rows_and_report(tmp_path, capsys):
    bench = tmp_path / "bench.csv"
    bench.write_text("question,A,B,C,D,answer\n个人征信报告中的不良信息自不良行为终止之日起保留几年,3,5,7,10,B\n",
                     encoding="utf-8")
    rows = [chat("什么是 LPR？", "LPR 是贷款市场报价利率。"),
            chat("什么是LPR?", "LPR是贷款市场报价利率"),  # exact duplicate after canonicalisation
            chat("个人征信报告中的不良信息自不良行为终止之日起保留几年？", "5年"),  # benchmark leak
            chat("短", ""),  # empty answer: a malformed chat row, skipped
            {"text": "not a chat row"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out" / "clean.jsonl"
    report = main([str(src), "--out", str(out), "--benchmark-dir", str(bench), "--leak-ngram", "8",
                   "--on-error", "skip"])
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert kept == [chat("什么是 LPR？", "LPR 是贷款市场报价利率。")]
    removed = [json.loads(line) for line in (tmp_path / "out" / "clean.jsonl.removed.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reason"], r["where"]) for r in removed] == [
        ("exact_dedup", "exact duplicate", f"{src}:2"), ("benchmark_leak", "benchmark leak", f"{src}:3")]
    assert report["malformed_skipped"] == 2 and report["rows_read"] == 5 and report["rows_kept"] == 1
    saved = json.loads((tmp_path / "out" / "clean.jsonl.report.json").read_text())
    assert {s["step"]: s["removed"] for s in saved["steps"]} == {
        "normalize": 0, "length": 0, "language": 0, "exact_dedup": 1, "near_dedup": 0, "benchmark_leak": 1}
    table = capsys.readouterr().out
    assert "exact_dedup" in table and "benchmark leak: 1" in table


def test_run_steps_reports_every_step_in_order():
    rows = [chat("什么是APR？", "年化百分率。"), chat("什么是APR？", "年化百分率。"), chat("问", "\u200b")]
    kept, reports, removals = run_steps(records(rows), [Normalize(), ExactDedup(), LengthFilter(min_answer_chars=1)])
    assert [(r.step, r.rows_in, r.removed, r.rows_out) for r in reports] == [
        ("normalize", 3, 1, 2), ("exact_dedup", 2, 1, 1), ("length", 1, 0, 1)]
    assert [s for s, _ in removals] == ["normalize", "exact_dedup"]


def test_streaming_cli_on_two_processes_equals_the_in_memory_steps(tmp_path, monkeypatch):
    """``main`` (chunks on 2 processes, online dedup) keeps and removes exactly what ``run_steps`` does
    on the whole list, with the same reasons, in the same order."""
    import random

    rng = random.Random(0)
    base = ["信用卡逾期以后，银行会按照合同收取违约金和透支利息，逾期记录会上报征信系统，自不良行为终止之日起保留五年。",
            "基金定投是指在固定的时间以固定的金额投资到指定的开放式基金中，类似于银行的零存整取，可以平摊成本。",
            "个人住房贷款的还款方式主要有等额本息和等额本金两种，前者每月还款额固定，后者逐月递减，总利息更少。"]
    rows = []
    for i in range(3000):
        text = rng.choice(base)
        kind = rng.random()
        if kind < 0.3:
            text = text.replace("，", f"，第{rng.randint(0, 9)}", 1)  # a near duplicate
        elif kind < 0.6:
            text = f"{i}号问题的独立回答：" + "".join(rng.choice("利率贷款存款保险基金股票债券理财") for _ in range(40))
        rows.append(chat(f"问题{i % 50}", text if rng.random() > 0.01 else "\u200b"))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    from zhilu.data import clean

    monkeypatch.setattr(clean, "CHUNK_ROWS", 128)  # many chunks across the two processes
    out = tmp_path / "out.jsonl"
    report = main([str(src), "--out", str(out), "--num-proc", "2", "--languages", "zh"])
    args = clean.parse_args([str(src), "--out", "x", "--languages", "zh"])
    kept, reports, removals = run_steps(read_records(src, "chat"), clean.default_steps(args))
    assert [json.loads(line) for line in out.read_text().splitlines()] == [r.row for r in kept]
    streamed = [json.loads(line) for line in (tmp_path / "out.jsonl.removed.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reason"], r["where"], r["detail"]) for r in streamed] == [
        (s, rm.reason, rm.record.where, rm.detail) for s, rm in removals]
    assert [(s["step"], s["rows_in"], s["removed"], s["rows_out"], s["reasons"]) for s in report["steps"]] == [
        (r.step, r.rows_in, r.removed, r.rows_out, r.reasons) for r in reports]
    assert {s["step"]: s["removed"] for s in report["steps"]}["near_dedup"] > 100


def test_band_index_finds_what_a_dict_of_every_key_finds_across_merges():
    """The compact LSH table (sorted arrays + recent dict, merged every 3 rows here) returns the same
    candidates, ascending, as a dict of lists per band, for keys near 2**64 too."""
    import random

    from zhilu.data.clean import _BandIndex

    rng = random.Random(0)
    pool = [rng.getrandbits(64) for _ in range(12)] + [2**64 - 1, 0]
    index, reference = _BandIndex(bands=3, merge_every=3), [{} for _ in range(3)]
    for i in range(40):
        keys = [rng.choice(pool) for _ in range(3)]
        expected = sorted({j for b, k in enumerate(keys) for j in reference[b].get(k, ())})
        assert index.candidates(keys) == expected
        index.add(i, keys)
        for b, k in enumerate(keys):
            reference[b].setdefault(k, []).append(i)
    assert sum(len(k) for k in index.keys) >= 3 * 39 - 3 * 3  # most keys were merged into the arrays
    assert index.candidates([2**64 - 1] * 3) == sorted({j for b in range(3) for j in reference[b].get(2**64 - 1, ())})
