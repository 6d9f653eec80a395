"""The tokenized store: round trips against the in-memory encoding, cache keys, errors, packing on
arrays, data kinds, and two processes sharing one store."""

from __future__ import annotations

import bisect
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DIALOGUES, write_jsonl
from zhilu.data.datamodule import ChatDataModule
from zhilu.data.encode import IGNORE_INDEX, ChatEncoder, Example
from zhilu.data.formats import READERS, RowError
from zhilu.data.kinds import KINDS, DataKind, get_kind, register_kind
from zhilu.data.packing import bfd_order, best_fit_decreasing, pack_bfd, place_bfd
from zhilu.data.store import token_config
from zhilu.errors import ConfigError, DataError

PAIRS = [{"messages": d[:-1], "chosen": d[-1]["content"], "rejected": "不知道。"} for d in DIALOGUES]
ALPACA = [{"instruction": f"问题{i}", "input": "本金1000元" if i % 2 else "", "output": f"回答{i}" * (i + 1)}
          for i in range(6)]
SHAREGPT = [{"conversations": [{"from": "human", "value": "你好"},
                               {"from": "gpt", "value": "你好！有什么可以帮您？"}]}]
TEXT = [{"text": "个人征信报告中的不良信息保留五年。" * k} for k in (1, 6)]


def reference(rows, fmt: str, kind: str, tokenizer, max_length: int, overlong: str = "truncate") -> list[Example]:
    """Today's in-memory path: the reader, then the kind's encode function, row by row."""
    enc = ChatEncoder(tokenizer, max_length, overlong)
    out = []
    for row in rows:
        out += KINDS[kind].encode(enc, READERS[fmt](dict(row)), "row")
    return out


def same(got: list[Example], expected: list[Example]) -> None:
    assert len(got) == len(expected) and expected
    for a, b in zip(got, expected):
        assert a.input_ids == b.input_ids and a.labels == b.labels and a.lengths == b.lengths


def dm_for(path, tokenizer, cache, **kw) -> ChatDataModule:
    dm = ChatDataModule(train_files=[str(path)] if not isinstance(path, list) else path, tokenizer=tokenizer,
                        cache_dir=str(cache), **kw)
    dm.setup()
    return dm


# ------------------------------------------------------------------- round trips
CASES = [
    ("chat", "sft", [{"messages": m} for m in DIALOGUES]),
    ("alpaca", "sft", ALPACA),
    ("sharegpt", "sft", SHAREGPT),
    ("text", "sft", TEXT),
    ("preference", "preference", PAIRS),
]


@pytest.mark.parametrize("fmt, kind, rows", CASES, ids=[c[0] for c in CASES])
def test_store_round_trip_equals_in_memory_encoding_every_format_and_kind(tmp_path, tokenizer, fmt, kind, rows):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = dm_for(path, tokenizer, tmp_path / "cache", kind=kind, format=fmt, max_length=48)
    expected = reference(rows, fmt, kind, tokenizer, 48)
    same(list(dm.train_examples), expected)
    assert dm.train_examples.lengths.tolist() == [ex.total_length for ex in expected]
    assert [ex.meta["id"] for ex in dm.train_examples] == list(range(len(expected)))
    if fmt == "text":  # a long text becomes several windows, every token labelled but BOS
        assert len(expected) > len(rows) and all(ex.labels[0][0] == IGNORE_INDEX for ex in expected)
    if kind == "preference":
        assert all(len(ex.input_ids) == 2 for ex in dm.train_examples)


def test_every_input_type_gives_the_same_examples(tmp_path, tokenizer):
    """JSONL, JSON, Parquet, CSV (alpaca columns, empty cells) and a save_to_disk folder."""
    import pandas as pd
    from datasets import Dataset, DatasetDict

    chats = [{"messages": m} for m in DIALOGUES]
    expected_chat = reference(chats, "chat", "sft", tokenizer, 64)
    expected_alpaca = reference(ALPACA, "alpaca", "sft", tokenizer, 64)
    write_jsonl(tmp_path / "c.jsonl", chats)
    (tmp_path / "c.json").write_text(json.dumps(chats, ensure_ascii=False), encoding="utf-8")
    pd.DataFrame(chats).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame(ALPACA).to_csv(tmp_path / "a.csv", index=False)  # the empty inputs read back as NaN
    Dataset.from_list(chats).save_to_disk(str(tmp_path / "c_disk"))
    DatasetDict({"train": Dataset.from_list(ALPACA)}).save_to_disk(str(tmp_path / "a_dict"))
    for name in ("c.jsonl", "c.json", "c.parquet", "c_disk"):
        same(list(dm_for(tmp_path / name, tokenizer, tmp_path / "cache", max_length=64).train_examples), expected_chat)
    for name in ("a.csv", "a_dict"):
        dm = dm_for(tmp_path / name, tokenizer, tmp_path / "cache", format="alpaca", max_length=64)
        same(list(dm.train_examples), expected_alpaca)


def test_two_tokenizing_processes_build_the_same_store(tmp_path, tokenizer):
    rows = [{"messages": m} for m in DIALOGUES * 30]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    one = dm_for(path, tokenizer, tmp_path / "c1", max_length=64, num_proc=1)
    two = dm_for(path, tokenizer, tmp_path / "c2", max_length=64, num_proc=2)
    (store,) = two._stores.values()
    assert store.meta["num_proc"] == 2 and len(store.meta["files"]) == 2  # one Arrow file per process
    same(list(two.train_examples), list(one.train_examples))
    same(list(one.train_examples), reference(rows, "chat", "sft", tokenizer, 64))


def test_the_row_index_matches_the_arrow_files_and_reading_decodes_only_the_batches_asked_for(tmp_path, tokenizer):
    """line/status/length and the batch offsets come from the index; an example's record batch is
    decoded only when it is read (opening a million-example store must not touch every batch)."""
    import pyarrow as pa

    from zhilu.data.store import TokenStore

    rows = [{"messages": m} for m in DIALOGUES * 300]  # more than two record batches on each of 2 processes
    rows[5] = {"messages": "not a list"}
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = dm_for(path, tokenizer, tmp_path / "c", max_length=40, num_proc=2, on_error="skip")
    (store,) = dm._stores.values()
    store = TokenStore(store.path)  # freshly opened: nothing decoded yet
    assert store._cache == {} and len(store._batch_start) > 4
    tables = [pa.ipc.open_stream(pa.memory_map(str(store.path / f))).read_all() for f in store.meta["files"]]
    table = pa.concat_tables(tables)
    assert store.line.tolist() == table.column("line").to_pylist()
    assert store.status.tolist() == table.column("status").to_pylist()
    assert store.length.tolist() == table.column("length").to_pylist()
    stats = [json.loads(x) for x in table.column("stats").to_pylist() if x]
    assert store.encoder_stats() == {k: sum(r.get(k, 0) for r in stats) for r in stats for k in r}
    assert store.encoder_stats()["truncated"] > 0
    last = len(store) - 1
    (ex,) = store.examples([last])
    assert ex.input_ids == table.column("input_ids")[last].as_py() and len(store._cache) == 1
    assert store.message(int(store.problems()[0])) == f"{path}:6: empty dialogue"
    same(list(dm.train_examples), reference(rows[:5] + rows[6:], "chat", "sft", tokenizer, 40))


# ------------------------------------------------------------------- cache keys
@pytest.fixture
def count_calls(monkeypatch):
    calls = {"n": 0}
    original = ChatEncoder.text

    def counting(self, s):
        calls["n"] += 1
        return original(self, s)

    monkeypatch.setattr(ChatEncoder, "text", counting)
    return calls


def test_unchanged_config_reuses_the_store_and_any_token_change_rebuilds(tmp_path, tokenizer, count_calls):
    import os

    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": m} for m in DIALOGUES])
    cache = tmp_path / "cache"

    def calls(**kw) -> int:
        before = count_calls["n"]
        dm_for(path, kw.pop("tok", tokenizer), cache, **{"max_length": 64, **kw})
        return count_calls["n"] - before

    assert calls() > 0
    assert calls() == 0  # same config: mapped, nothing tokenized
    assert calls(batch_size=2, packing=True, val_fraction=0.25, limit_train_samples=2, seed=3) == 0  # not tokens
    assert calls(max_length=32) > 0 and calls(max_length=32) == 0
    assert calls(overlong="drop") > 0
    write_jsonl(path, [{"messages": m} for m in DIALOGUES[::-1]])  # same size, new content and mtime
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert calls() > 0
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    assert calls(tok=tok) == 0  # an identical tokenizer loaded again: the same store
    tok.chat_template = "{{ messages }}"
    assert calls(tok=tok) > 0
    tok2 = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok2.add_tokens(["<|new_token|>"])
    assert calls(tok=tok2) > 0
    assert len(list(cache.glob("d-*/meta.json"))) == 6  # one store per distinct token configuration


def test_every_data_key_but_the_known_batching_ones_is_in_the_key():
    cfg = token_config({"kind": "sft", "max_length": 512, "overlong": "truncate_prompt", "truncate_side": "left",
                        "batch_size": 8, "packing": True, "seed": 1, "num_proc": 4, "cache_dir": "x", "tokenizer": 1})
    assert cfg == {"kind": "sft", "max_length": 512, "overlong": "truncate_prompt", "truncate_side": "left"}


# ------------------------------------------------------------------- errors and counts
def test_malformed_row_gives_its_file_line_error_and_skip_counts(tmp_path, tokenizer):
    good = {"messages": DIALOGUES[1]}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([json.dumps(good), '{"messages": [{"role": "bot", "content": "x"}]}',
                               json.dumps(good), "{not json"]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        dm_for(path, tokenizer, tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: message 0: unknown role 'bot'") and "\n" not in msg
    dm = dm_for(path, tokenizer, tmp_path / "cache", on_error="skip")  # the same store, read with another policy
    assert len(dm.train_examples) == 2 and dm.stats["train/skipped_rows"] == 2
    lst = tmp_path / "bad.json"
    lst.write_text(json.dumps([good, {"messages": []}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json: row 2: empty dialogue"):
        dm_for(lst, tokenizer, tmp_path / "cache")


def test_overlong_policies_and_counts_on_the_store(tmp_path, tokenizer):
    long = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答" * 200}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": m} for m in [DIALOGUES[1], long, long]])
    dm = dm_for(path, tokenizer, tmp_path / "cache", max_length=32)
    assert dm.stats["train/truncated"] == 2 and len(dm.train_examples) == 3
    assert max(dm.train_examples.lengths) == 32
    dm = dm_for(path, tokenizer, tmp_path / "cache", max_length=32, overlong="drop")
    assert dm.stats["train/dropped_overlong"] == 2 and len(dm.train_examples) == 1
    with pytest.raises(ConfigError, match=rf"^{path}:2: \d+ tokens > data.max_length=32"):
        dm_for(path, tokenizer, tmp_path / "cache", max_length=32, overlong="error", on_error="skip")


def test_val_fraction_and_limits_index_the_store(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"回答{i}"}]}
            for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = dm_for(path, tokenizer, tmp_path / "cache", val_fraction=0.25, seed=3, limit_val_samples=3)
    import torch

    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3)).tolist()  # today's split, by hand
    expected = reference(rows, "chat", "sft", tokenizer, 1024)
    same(list(dm.val_examples), [expected[i] for i in perm[:5]][:3])
    same(list(dm.train_examples), [expected[i] for i in perm[5:]])


# ------------------------------------------------------------------- packing on arrays
def sequential_bfd(lengths, order, capacity):
    """The list-based BFD this project packed with before (one item at a time)."""
    rows, rooms = [], []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(rooms, (n, -1))
        if k < len(rooms):
            room, rid = rooms.pop(k)
        else:
            room, rid = capacity, len(rows)
            rows.append([])
        rows[rid].append(i)
        if room - n > 0:
            bisect.insort(rooms, (room - n, rid))
    return rows


def test_array_packing_equals_the_sequential_list_packing():
    for trial in range(200):
        rng = random.Random(trial)
        cap = rng.choice([8, 16, 64, 512, 1024])
        lengths = [max(1, min(cap, int(rng.lognormvariate(np.log(cap / 4), 0.9)))) for _ in range(rng.randint(1, 300))]
        order = bfd_order(np.array(lengths), seed=trial)
        assert place_bfd(np.array(lengths), order, cap).tolist() == sequential_bfd(lengths, order.tolist(), cap), trial


def test_packing_on_the_store_equals_packing_on_lists(tmp_path, tokenizer):
    rows = [{"messages": m} for m in DIALOGUES * 6]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = dm_for(path, tokenizer, tmp_path / "cache", max_length=128, packing=True, seed=5)
    lengths = [ex.total_length for ex in reference(rows, "chat", "sft", tokenizer, 128)]
    for epoch in range(3):
        dm.set_epoch(epoch)
        assert dm.train_set.rows == best_fit_decreasing(lengths, 128, seed=5 + epoch)
        row = dm.train_set[0]
        assert [ex.meta["id"] for ex in row] == dm.train_set.rows[0]
    assert len(pack_bfd(np.array([3, 3, 2]), 4, 0)) == 3


# ------------------------------------------------------------------- mixtures and kinds
def test_mixture_samples_indices_into_the_stores(tmp_path, tokenizer):
    from zhilu.data.mixture import MixtureDataModule

    a = write_jsonl(tmp_path / "a.jsonl", [{"messages": m} for m in DIALOGUES])
    t = write_jsonl(tmp_path / "t.jsonl", TEXT)
    dm = MixtureDataModule(sources={"a": {"files": [str(a)], "weight": 0.8}, "t": {"files": [str(t)], "format": "text",
                                                                                      "weight": 0.2}},
                           total=10, val_files=[], tokenizer=tokenizer, cache_dir=str(tmp_path / "cache"),
                           max_length=48)
    dm.setup()
    by = {s.name: s for s in dm.report.sources}
    assert (by["a"].sampled, by["a"].unique) == (8, 4)  # 4 rows, each drawn twice: repeated indices
    windows = len(reference(TEXT, "text", "sft", tokenizer, 48))
    assert by["t"].examples == windows and len(dm.train_examples) == 8 + windows
    refs = dm.train_examples.refs
    assert len(np.unique(refs)) == 4 + windows  # no copies: repeats point at the same entries
    assert {ex.meta["source"] for ex in dm.train_examples} == {"a", "t"}


def encode_unpaired(encoder, row, what):
    ex = encoder.sft(row["messages"] + [{"role": "assistant", "content": row["completion"]}], what=what)
    if ex is None:
        return []
    ex.meta["label"] = row["label"]
    return [ex]


def unpaired_row(row):
    if not isinstance(row.get("completion"), str) or not isinstance(row.get("label"), bool):
        raise RowError("unpaired rows need a 'completion' string and a boolean 'label'")
    return {"messages": row["messages"], "completion": row["completion"], "label": row["label"]}


def test_a_new_kind_is_a_table_entry(tmp_path, tokenizer, monkeypatch):
    """A KTO-style ``unpaired`` kind (messages + completion + label) needs a reader and a table entry only."""
    monkeypatch.setitem(READERS, "unpaired", unpaired_row)
    monkeypatch.setitem(KINDS, "unpaired", DataKind("unpaired", ("unpaired",), 1, encode_unpaired))
    rows = [{"messages": d[:-1], "completion": d[-1]["content"], "label": i % 2 == 0} for i, d in enumerate(DIALOGUES)]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    dm = dm_for(path, tokenizer, tmp_path / "cache", kind="unpaired", format="unpaired", packing=True, batch_size=2)
    assert [ex.meta["label"] for ex in dm.train_examples] == [True, False, True, False]
    batch = next(iter(dm.train_dataloader()))
    assert "attention_mask" not in batch and batch["num_sequences"] >= 1
    with pytest.raises(ConfigError, match="data.format='chat' does not fit data.kind=unpaired"):
        ChatDataModule(kind="unpaired", format="chat", train_files=["x"], tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="data.kind='kto'"):
        get_kind("kto")
    assert register_kind(KINDS["sft"]) is KINDS["sft"]


# ------------------------------------------------------------------- processes share one store
@pytest.mark.slow
def test_two_gloo_processes_build_the_store_once(tmp_path):
    """Lightning ``ddp_spawn`` on CPU (gloo): rank 0 builds in ``prepare_data``, rank 1 waits and maps."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": m} for m in DIALOGUES * 10])
    r = subprocess.run([sys.executable, "-m", "tests.helpers.shared_store", str(path), str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    builds = (tmp_path / "builds.txt").read_text().split()
    assert builds == ["0"]  # one build, by rank 0
    seen = [json.loads(line) for line in (tmp_path / "ranks.jsonl").read_text().splitlines()]
    assert sorted(s["rank"] for s in seen) == [0, 1]
    assert len({s["store"] for s in seen}) == 1 and all(s["examples"] == 40 for s in seen)
    assert len(list(Path(tmp_path / "cache").glob("d-*/meta.json"))) == 1


def test_hub_names_go_to_load_dataset(tmp_path, tokenizer, monkeypatch):
    """``hf://<name>`` is passed to ``datasets.load_dataset`` (here a stand-in returning local rows:
    no hub is reachable from the tests); its fingerprint keys the store."""
    import datasets

    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"messages": m} for m in DIALOGUES])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = ChatDataModule(train_files=[{"path": "hf://org/finance-chat", "split": "train[:4]"}], tokenizer=tokenizer,
                        cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert calls and set(calls) == {("org/finance-chat", "train[:4]")}
    same(list(dm.train_examples), reference([{"messages": m} for m in DIALOGUES], "chat", "sft", tokenizer, 1024))
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        dm_for(tmp_path / "nope.jsonl", tokenizer, tmp_path / "cache")


def test_a_pickled_split_maps_the_store_again(tmp_path, tokenizer):
    """What a spawned DataLoader worker or rank receives: the store's path, not its data."""
    import pickle

    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": m} for m in DIALOGUES])
    dm = dm_for(path, tokenizer, tmp_path / "cache")
    blob = pickle.dumps(dm.train_examples)
    assert len(blob) < 2000
    same(list(pickle.loads(blob)), list(dm.train_examples))


def test_prepare_builds_what_training_then_only_maps(sft_dir, tmp_path, tokenizer, count_calls, capsys):
    """``python -m zhilu.data.prepare data=...`` (same config group and tokenizer as train.py) builds the
    stores; the training config finds them and tokenizes nothing."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from tests.conftest import ROOT, TINY, compose_train, fast_overrides
    from zhilu.data.prepare import prepare

    cache = tmp_path / "cache"
    model = [f"model.config.{k}={v}" for k, v in TINY.items()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("prepare", overrides=[f"paths.data_dir={sft_dir}", f"paths.cache_dir={cache}", *model])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "prep")
    stats = prepare(cfg)
    assert stats["train/examples"] == 16 and stats["val/examples"] == 4 and count_calls["n"] > 0
    assert "16 rows -> 16 examples" in capsys.readouterr().out
    before = count_calls["n"]
    train_cfg = compose_train(fast_overrides(sft_dir, f"paths.cache_dir={cache}"), tmp_path / "run")
    dm = instantiate(train_cfg.data, tokenizer=tokenizer)
    dm.prepare_data()
    dm.setup("fit")
    assert count_calls["n"] == before and len(dm.train_examples) == 16
