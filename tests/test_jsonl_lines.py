"""One line reader for every JSONL reader and store: lines end at \\n only, CRLF and a BOM are
tolerated, U+2028/U+2029/U+0085 inside strings stay in their row, invalid UTF-8 is one error line."""

import json

import pytest

from tests.conftest import write_jsonl
from zhilu.chat import read_prompts
from zhilu.data.clean import load_benchmark_questions, read_records
from zhilu.data.formats import iter_rows, numbered_rows
from zhilu.data.mixture import read_text_rows
from zhilu.errors import DataError
from zhilu.eval.loader import CsvLayout
from zhilu.synth.evol import Evolver, Instruction, load_seeds
from zhilu.synth.questions import load_questions
from zhilu.synth.retrieval import load_folder
from zhilu.synth.store import JsonlStore
from zhilu.utils.jsonl import split_lines

SEPS = "\u2028\u2029\u0085"
ANSWER = f"第一行{SEPS[0]}第二段{SEPS[1]}下一行{SEPS[2]}完"  # what json.dumps(ensure_ascii=False) writes raw


def dialogue(q="什么是LPR？", a=ANSWER):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_split_lines_hand_worked():
    raw = "\ufeff".encode() + b'a\r\nb\xe2\x80\xa8c\n\nlast'  # BOM, CRLF, a raw U+2028, no final newline
    assert list(split_lines(raw)) == [(1, "a"), (2, "b\u2028c"), (3, ""), (4, "last")]
    assert list(split_lines(b"")) == [] and list(split_lines(b"x\n")) == [(1, "x")]


def test_the_separators_survive_every_row_reader(tmp_path):
    rows = {
        "chat": {"messages": dialogue()},
        "alpaca": {"instruction": "什么是LPR？", "output": ANSWER},
        "sharegpt": {"conversations": [{"from": "human", "value": "什么是LPR？"}, {"from": "gpt", "value": ANSWER}]},
        "preference": {"prompt": "什么是LPR？", "chosen": ANSWER, "rejected": "不知道"},
    }
    for fmt, row in rows.items():
        path = write_jsonl(tmp_path / f"{fmt}.jsonl", [row, row])
        assert SEPS[0] in path.read_text(encoding="utf-8") and path.read_bytes().count(b"\n") == 2
        out = list(iter_rows(path, fmt))
        assert len(out) == 2, fmt
        got = out[0].chosen if fmt == "preference" else out[0][-1]["content"]
        assert got == ANSWER, fmt
    # a CRLF file with a BOM reads the same rows with the same line numbers
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes("\ufeff".encode() + (json.dumps(rows["chat"], ensure_ascii=False) + "\r\n").encode() * 2)
    assert [(n, r) for n, r, _ in numbered_rows(crlf)[0]] == [(1, rows["chat"]), (2, rows["chat"])]
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": ANSWER}])
    assert read_text_rows(text) == [ANSWER]
    assert [r.row for r in read_records(tmp_path / "chat.jsonl", "chat")] == [rows["chat"]] * 2
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": ANSWER}])
    assert read_prompts(prompts) == [ANSWER]
    bench = write_jsonl(tmp_path / "bench" / "q.jsonl", [{"question": ANSWER}])
    assert [q.text for q in load_benchmark_questions([bench.parent])] == [ANSWER]
    qs = write_jsonl(tmp_path / "qs.jsonl", [{"id": "q1", "question": ANSWER, "choices": {"A": "x", "B": "y"},
                                              "answer": "A"}])
    assert [q.text for q in load_questions(qs)] == [ANSWER]
    seeds = load_seeds(write_jsonl(tmp_path / "seeds.jsonl", [{"messages": dialogue(ANSWER, "答")}]))
    # seeds are normalised (U+0085 is a control character, dropped), but the row is whole
    assert [s.text for s in seeds] == [ANSWER.replace("\u0085", "")]


def test_the_separators_survive_csv_and_markdown_readers(tmp_path):
    d = tmp_path / "ceval" / "val"
    d.mkdir(parents=True)
    (d / "law_val.csv").write_text(f"id,question,A,B,C,D,answer\n0,{ANSWER},a,b,c,d,A\n1,二,a,b,c,d,B\n",
                                   encoding="utf-8")
    qs = CsvLayout().read(tmp_path / "ceval", "val", "law")
    assert [q.question for q in qs] == [ANSWER, "二"]
    assert [q.text for q in load_questions(d / "law_val.csv")] == [ANSWER, "二"]
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "a.md").write_text(f"# 标题\n\n{ANSWER}\n", encoding="utf-8")
    assert [p.text for p in load_folder(kb)] == [ANSWER]


class EchoGenerator:
    """Every completion carries the three separators."""

    name = "echo"

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, max_new_tokens=None):
        for i, m in enumerate(prompts):
            self.calls += 1
            given = m[-1]["content"].split("#给定指令#：\n", 1)[-1].rsplit("\n\n#", 1)[0]
            yield i, f"{given}请分两步说明{SEPS[0]}并举例{SEPS[1]}再总结{SEPS[2]}风险。详细说明每一步。"


def test_the_synthesis_store_resumes_over_completions_with_separators(tmp_path):
    store = JsonlStore(tmp_path / "s.jsonl")
    store.add({"key": "k1", "text": ANSWER})
    store.add({"key": "k2", "text": "二"})
    assert {k: r["text"] for k, r in JsonlStore(tmp_path / "s.jsonl").records.items()} == {"k1": ANSWER, "k2": "二"}

    seeds = [Instruction("a", "信用卡免息期怎么算？", "finance", "a")]
    first = EchoGenerator()
    Evolver(first, tmp_path / "evol", rounds=2, seed=1).run(seeds)
    kept = (tmp_path / "evol" / "evol.jsonl").read_text(encoding="utf-8")
    assert first.calls > 0 and SEPS[0] in kept
    again = EchoGenerator()  # the resume reads every stored completion back: nothing is generated twice
    report = Evolver(again, tmp_path / "evol", rounds=2, seed=1).run(seeds)
    assert again.calls == 0 and report["reused_from_cache"] == first.calls
    assert (tmp_path / "evol" / "evol.jsonl").read_text(encoding="utf-8") == kept
    assert len(list(iter_rows(tmp_path / "evol" / "evol.jsonl", "chat"))) == len(kept.split("\n")) - 1


def test_invalid_utf8_is_one_line_naming_file_line_and_byte_offset(tmp_path):
    good = json.dumps({"messages": dialogue("问", "答")}, ensure_ascii=False).encode() + b"\n"
    bad = ('{"messages": [{"role": "user", "content": "' + "长" * 30000 + '信用卡').encode("gbk")
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(good + bad + b'"}]}\n')
    with pytest.raises(DataError) as info:
        list(iter_rows(path, "chat"))
    msg = str(info.value)
    offset = len(good) + bad.index(b"\xb3")  # the first byte GBK encodes differently (长 = b3 a4)
    assert msg.startswith(f"{path}:2: not UTF-8 text at byte offset {offset} (byte 0xb3")
    assert "\n" not in msg and len(msg) < 200 + len(str(path)) + 200
    only = tmp_path / "only.jsonl"
    only.write_bytes(bad + b'"}]}\n')
    for reader in (lambda p: read_text_rows(p), lambda p: read_records(p, "chat"), lambda p: JsonlStore(p),
                   lambda p: load_seeds(p), lambda p: read_prompts(p), lambda p: load_questions(p)):
        with pytest.raises(DataError, match=rf"^{only}:1: not UTF-8 text at byte offset {offset - len(good)} "):
            reader(only)
    csv = tmp_path / "ceval" / "val" / "law_val.csv"
    csv.parent.mkdir(parents=True)
    csv.write_bytes("id,question,A,B,C,D,answer\n0,问,a,b,c,d,A\n1,信用卡,a,b,c,d,B\n".encode("gbk"))
    with pytest.raises(DataError, match=rf"^{csv}:2: not UTF-8 text at byte offset 29 "):
        CsvLayout().read(tmp_path / "ceval", "val", "law")
