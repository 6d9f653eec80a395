"""Data mixtures: counts, proportions, seeds, up-sampling, pre-training text, the Hydra config."""

import json
import random
from collections import Counter

import pytest

from tests.conftest import DIALOGUES, compose_train, fast_overrides, write_jsonl
from zhilu.data.encode import IGNORE_INDEX, ChatEncoder
from zhilu.data.mixture import MixtureDataModule, MixtureSource, draw, encode_text, largest_remainder, sample_mixture
from zhilu.errors import ConfigError, DataError


def chat(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_largest_remainder_hand_worked():
    # exact shares 3.5, 2.1, 1.4 of 7 -> floors 3, 2, 1 (6); the largest remainder (0.5) gets the last row
    assert largest_remainder([0.5, 0.3, 0.2], 7) == [4, 2, 1]
    assert largest_remainder([1, 1, 1], 10) == [4, 3, 3]  # ties go to the first source
    assert sum(largest_remainder([0.37, 0.41, 0.22], 1001)) == 1001


def test_draw_repeats_whole_copies_before_sampling():
    idx = draw(4, 10, random.Random(0))
    counts = Counter(idx)
    assert len(idx) == 10 and set(counts.values()) <= {2, 3} and sorted(counts.values()) == [2, 2, 3, 3]
    assert sorted(draw(4, 10, random.Random(0), upsample=False)) == [0, 1, 2, 3]
    assert len(set(draw(100, 30, random.Random(0)))) == 30  # no repeats when there are enough rows


def test_mixture_proportions_within_tolerance_and_reproducible():
    sources = [MixtureSource("a", ["a.jsonl"], 0.6), MixtureSource("b", ["b.jsonl"], 0.3),
               MixtureSource("c", ["c.jsonl"], 0.1)]
    rows = {"a": [f"a{i}" for i in range(500)], "b": [f"b{i}" for i in range(80)], "c": [f"c{i}" for i in range(1000)]}
    mixed, report = sample_mixture(sources, rows, total=900, seed=7)
    realised = Counter(name for name, _ in mixed)
    assert len(mixed) == 900
    for s in sources:  # the realised shares are the targets to within one row
        assert abs(realised[s.name] / 900 - s.weight) <= 1 / 900
    by = {s.name: s for s in report.sources}
    assert (by["b"].sampled, by["b"].unique) == (270, 80)  # 80 rows up-sampled to 270
    assert (by["a"].sampled, by["a"].unique) == (540, 500)  # 540 > 500 rows: every row, 40 of them twice
    again, _ = sample_mixture(sources, rows, total=900, seed=7)
    other, _ = sample_mixture(sources, rows, total=900, seed=8)
    assert again == mixed and other != mixed
    assert [n for n, _ in mixed[:50]] != sorted(n for n, _ in mixed[:50])  # shuffled across sources


def test_total_null_is_the_largest_mixture_without_repeats():
    sources = [MixtureSource("a", ["a"], 0.5), MixtureSource("b", ["b"], 0.5)]
    mixed, report = sample_mixture(sources, {"a": list(range(30)), "b": list(range(100))}, total=None, seed=0)
    assert len(mixed) == 60 and all(s.unique == s.sampled == 30 for s in report.sources)


def test_bad_mixture_configs():
    with pytest.raises(ConfigError, match="sources.x.weight=-1"):
        MixtureSource.from_config("x", {"files": ["f"], "weight": -1})
    with pytest.raises(ConfigError, match=r"sources.x: unknown keys \['wieght'\]"):
        MixtureSource.from_config("x", {"files": ["f"], "wieght": 1})
    with pytest.raises(ConfigError, match="every weight is 0"):
        sample_mixture([MixtureSource("a", ["a"], 0.0)], {"a": [1]}, 10, 0)


def test_text_rows_are_labelled_on_every_token_in_windows(tokenizer):
    enc = ChatEncoder(tokenizer, max_length=16)
    text = "个人征信报告中的不良信息保留五年。" * 3
    exs = encode_text(enc, text)
    body = [*enc.text(text), tokenizer.convert_tokens_to_ids("<|end_of_text|>")]
    assert all(len(e.input_ids[0]) <= 16 and e.input_ids[0][0] == enc.bos for e in exs)
    assert [t for e in exs for t in e.input_ids[0][1:]] == body  # the windows tile the text exactly
    assert all(e.labels[0] == [IGNORE_INDEX, *e.input_ids[0][1:]] for e in exs)


@pytest.fixture
def mixture_dir(tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "finance_sft" / "train.jsonl", [{"messages": m} for m in DIALOGUES * 5])  # 20 rows
    write_jsonl(d / "finance_sft" / "val.jsonl", [{"messages": m} for m in DIALOGUES])
    write_jsonl(d / "extra" / "alpaca.jsonl", [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(10)])
    write_jsonl(d / "extra" / "knowledge.jsonl", [{"text": f"知识{i}：信用卡免息期一般为20到56天。"} for i in range(5)])
    return d


def test_finance_mixture_config_samples_reports_and_trains_the_stats(mixture_dir, tmp_path, tokenizer):
    from hydra.utils import instantiate

    run = tmp_path / "run"
    sources = ("+data.sources.extra.files=[{path:'" + str(mixture_dir / "extra" / "alpaca.jsonl") + "',format:alpaca}]",
               "+data.sources.extra.weight=0.25",
               "+data.sources.notes.files=['" + str(mixture_dir / "extra" / "knowledge.jsonl") + "']",
               "+data.sources.notes.format=text", "+data.sources.notes.weight=0.05")
    cfg = compose_train(fast_overrides(mixture_dir, "data=finance_mixture", "data.total=40",
                                       f"paths.shared_data_dir={tmp_path / 'no_shared'}",
                                       "data.sources.finance_sft.weight=0.7", *sources), run)
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(dm, MixtureDataModule)
    dm.setup("fit")
    rep = {s.name: s for s in dm.report.sources}
    # shared-data and synthesis sources are optional and missing here: skipped, the weights renormalised
    assert set(dm.report.missing) == {"disc_finllm", "evol", "self_evolve", "knowledge_text"}
    assert {k: v.sampled for k, v in rep.items()} == {"finance_sft": 28, "extra": 10, "notes": 2}
    assert rep["finance_sft"].target_share == pytest.approx(0.7)
    assert Counter(ex.meta["source"] for ex in dm.train_examples) == {"finance_sft": 28, "extra": 10, "notes": 2}
    assert dm.stats["mixture/extra/rows"] == 10 and dm.stats["train/examples"] == 40 and len(dm.val_examples) == 4
    saved = json.loads((run / "mixture.json").read_text())
    assert [s["sampled"] for s in saved["sources"]] == [28, 10, 2]
    assert (run / "mixture.png").stat().st_size > 1000 and "| finance_sft |" in (run / "mixture.md").read_text()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4


def test_missing_required_source_names_the_file(mixture_dir, tmp_path, tokenizer):
    from hydra.utils import instantiate

    cfg = compose_train(fast_overrides(mixture_dir, "data=finance_mixture",
                                       "data.sources.finance_sft.files=['/nope/train.jsonl']"), tmp_path / "run")
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    with pytest.raises(DataError, match=r"data.sources.finance_sft: /nope/train.jsonl: data file not found"):
        dm.setup("fit")
