"""Readers, length policy and malformed-row errors."""

import json

import pytest

from tests.conftest import write_jsonl
from zhilu.data.encode import IGNORE_INDEX, ChatEncoder
from zhilu.data.formats import iter_rows
from zhilu.errors import ConfigError, DataError


def test_alpaca_and_sharegpt_become_the_same_messages(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{
        "instruction": "计算利息", "input": "本金1000元，年利率5%", "output": "50元",
        "system": "S", "history": [["你好", "你好！"]]}])
    share = write_jsonl(tmp_path / "s.jsonl", [{"system": "S", "conversations": [
        {"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
        {"from": "human", "value": "计算利息\n本金1000元，年利率5%"}, {"from": "gpt", "value": "50元"}]}])
    expected = [{"role": "system", "content": "S"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"},
                {"role": "user", "content": "计算利息\n本金1000元，年利率5%"},
                {"role": "assistant", "content": "50元"}]
    assert list(iter_rows(alpaca, "alpaca")) == [expected]
    assert list(iter_rows(share, "sharegpt")) == [expected]


@pytest.mark.parametrize("line, reason", [
    ('{"messages": [{"role": "user", "content": "hi"}', "bad JSON"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "unknown role 'bot'"),
    ('{"messages": []}', "empty dialogue"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}', "expected a assistant turn"),
])
def test_malformed_row_names_file_and_line(tmp_path, line, reason):
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(iter_rows(path, "chat"))
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: ") and reason in msg and "\n" not in msg
    stats = {}
    assert len(list(iter_rows(path, "chat", on_error="skip", stats=stats))) == 1
    assert stats["skipped"] == 1


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        list(iter_rows(tmp_path / "nope.jsonl", "chat"))
    with pytest.raises(ConfigError, match="data.format='xml'"):
        list(iter_rows(tmp_path / "nope.jsonl", "xml"))


def test_overlong_policies(tokenizer):
    long = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答" * 200}]
    enc = ChatEncoder(tokenizer, max_length=32, overlong="truncate")
    ex = enc.sft(long)
    assert len(ex.input_ids[0]) == 32 and enc.stats["truncated"] == 1
    assert any(t != IGNORE_INDEX for t in ex.labels[0])
    enc = ChatEncoder(tokenizer, max_length=32, overlong="drop")
    assert enc.sft(long) is None and enc.stats["dropped_overlong"] == 1
    with pytest.raises(ConfigError, match=r"row 7: \d+ tokens > data.max_length=32"):
        ChatEncoder(tokenizer, max_length=32, overlong="error").sft(long, what="row 7")
    with pytest.raises(ConfigError, match="data.overlong='cut'"):
        ChatEncoder(tokenizer, overlong="cut")


@pytest.mark.parametrize("n,num_samples", [(10, None), (10_000, None), (9_000, 20_000), (7, 3)])
def test_replayable_sampler_draws_what_torch_draws(n, num_samples):
    """The permutation handed out in slices (no epoch-long Python list): the same indices as torch's
    RandomSampler, across several slices and with num_samples, and the generator left in the same state."""
    import torch
    from torch.utils.data import RandomSampler

    from zhilu.data.sampler import ReplayableRandomSampler

    data = range(n)
    theirs = RandomSampler(data, num_samples=num_samples, generator=torch.Generator().manual_seed(5))
    ours = ReplayableRandomSampler(data, generator=torch.Generator().manual_seed(5))
    ours._num_samples = num_samples
    for _ in range(2):
        drawn = list(ours)
        assert drawn == list(theirs) and len(drawn) == (num_samples or n)
        assert all(type(i) is int for i in drawn[:3])
    assert torch.equal(ours.generator.get_state(), theirs.generator.get_state())


def test_replayable_sampler_keeps_torch_order_and_replays_an_interrupted_epoch():
    import torch
    from torch.utils.data import DataLoader

    from zhilu.data.sampler import ReplayableRandomSampler

    data = list(range(10))

    def epochs(loader, n, stop_after=None):
        out = []
        for _ in range(n):
            batches = []
            for b in loader:  # like Lightning: a sized loader is not drawn past its last batch
                batches.append(b.tolist())
                if len(batches) == len(loader):
                    break
            out.append(batches)
        return out

    torch_loader = DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(7))
    sampler = ReplayableRandomSampler(data, generator=torch.Generator().manual_seed(7))
    ours = DataLoader(data, batch_size=3, sampler=sampler, generator=sampler.generator)
    expected = epochs(torch_loader, 3)
    assert epochs(ours, 3) == expected and expected[0] != expected[1]  # runs keep their data order

    # interrupted after 2 batches of epoch 1: a fresh loader replays the rest of epoch 1, then epoch 2
    sampler = ReplayableRandomSampler(data, generator=torch.Generator().manual_seed(7))
    first = DataLoader(data, batch_size=3, sampler=sampler, generator=sampler.generator)
    epochs(first, 1)
    it = iter(first)
    next(it), next(it)
    state = sampler.state(samples_done=6, epoch_complete=False)
    fresh = ReplayableRandomSampler(data, generator=torch.Generator().manual_seed(7))
    fresh.replay(state)
    resumed = DataLoader(data, batch_size=3, sampler=fresh, generator=fresh.generator)
    assert [b.tolist() for b in resumed] == expected[1][2:]
    # interrupted at the end of epoch 0: the fresh loader starts with epoch 1
    sampler = ReplayableRandomSampler(data, generator=torch.Generator().manual_seed(7))
    first = DataLoader(data, batch_size=3, sampler=sampler, generator=sampler.generator)
    epochs(first, 1)
    fresh = ReplayableRandomSampler(data, generator=torch.Generator().manual_seed(7))
    fresh.replay(sampler.state(samples_done=10, epoch_complete=True))
    resumed = DataLoader(data, batch_size=3, sampler=fresh, generator=fresh.generator)
    assert epochs(resumed, 2) == expected[1:]
