"""Letter scoring: a hand-built model with a known preference, batched == one-by-one, extraction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY
from tests.test_eval_common import tiny_benchmark
from zhilu.eval.runner import build_prompts
from zhilu.eval.scoring import (
    GenerateScorer,
    LetterLoglikScorer,
    extract_choice,
    left_pad,
    length_batches,
    letter_token_ids,
    right_pad,
)
from zhilu.model import ModelBuilder

BIG = 5.0


class PrefixModel(torch.nn.Module):
    """Causal by construction: at position t it puts logit ``BIG`` on letter
    ``LETTERS[(sum_{s<=t} (s+1) * ids[s]) % 4]`` and 0 elsewhere, so the right answer depends on
    every real token and on nothing after t (a read at a padding position gives another letter).
    Shaped like a ``*ForCausalLM``: ``.model`` gives the hidden states (here already the logits)
    and ``.lm_head`` is the identity."""

    def __init__(self, vocab: int, letters: list[int]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.letters = vocab, letters
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.calls: list[tuple[int, ...]] = []
        self.model = _PrefixBackbone(self)
        self.lm_head = torch.nn.Identity()

    @staticmethod
    def preferred(ids: list[int]) -> int:
        return sum((s + 1) * x for s, x in enumerate(ids)) % 4

    def logits(self, input_ids):
        self.calls.append(tuple(input_ids.shape))
        pos = torch.arange(1, input_ids.shape[1] + 1)
        pref = torch.cumsum(input_ids * pos, dim=1) % 4  # [B, T]
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(2, torch.tensor(self.letters)[pref][..., None], BIG)
        return logits

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits(input_ids))


class _PrefixBackbone(torch.nn.Module):
    def __init__(self, outer: PrefixModel) -> None:
        super().__init__()
        self.outer = [outer]  # not a submodule (no cycle)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(last_hidden_state=self.outer[0].logits(input_ids))


def _prompts(tokenizer, shots=2):
    bench = tiny_benchmark("ceval", f"benchmark.shots={shots}")
    return [p.ids for _, p in build_prompts(bench, bench.load(), tokenizer, 4096)]


def test_letter_scoring_reads_each_row_at_its_last_real_token(tokenizer):
    letters = letter_token_ids(tokenizer)
    assert len(set(letters)) == 4
    prompts = _prompts(tokenizer)
    lengths = {len(p) for p in prompts}
    assert len(lengths) > 3  # the rows of a batch really need padding
    model = PrefixModel(len(tokenizer), letters)
    out = LetterLoglikScorer(batch_size=4)(model, tokenizer, prompts)
    expected = ["ABCD"[PrefixModel.preferred(p)] for p in prompts]
    assert [s.pred for s in out] == expected
    assert len(set(expected)) > 1
    # hand-worked log-softmax over the vocabulary: BIG on one letter, 0 on the other V-1 tokens
    top = BIG - math.log(math.exp(BIG) + len(tokenizer) - 1)
    rest = -math.log(math.exp(BIG) + len(tokenizer) - 1)
    for s in out:
        assert s.letter_logprobs == pytest.approx([top if x == s.pred else rest for x in "ABCD"], abs=1e-5)
    # batches are sorted by length and padded on the right: reading the padded end would differ
    assert any(b > 1 for b, _ in model.calls)
    padded = [p + [tokenizer.pad_token_id] * (max(lengths) - len(p)) for p in prompts]
    assert ["ABCD"[PrefixModel.preferred(p)] for p in padded] != expected


def test_length_batches_sort_longest_first_and_respect_the_token_budget():
    lengths = [5, 9, 2, 9, 7, 1]
    assert length_batches(lengths, 2, None) == [[1, 3], [4, 0], [2, 5]]
    # 9 * 2 = 18 > 16 tokens: the long rows go one by one, then 7 * 2 = 14 fits
    assert length_batches(lengths, 4, 16) == [[1], [3], [4, 0], [2, 5]]
    ids, mask = right_pad([[1, 2, 3], [4]], 0, "cpu")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = left_pad([[1, 2, 3], [4]], 0, "cpu")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    return ModelBuilder(config=TINY, seed=3, attn_implementation="sdpa").build(tokenizer).eval()


def test_batched_and_one_by_one_scoring_agree_on_a_real_llama(tokenizer, tiny_llama):
    prompts = _prompts(tokenizer)
    one = LetterLoglikScorer(batch_size=1)(tiny_llama, tokenizer, prompts)
    for scorer in (LetterLoglikScorer(batch_size=6), LetterLoglikScorer(batch_size=32, max_batch_tokens=900)):
        batched = scorer(tiny_llama, tokenizer, prompts)
        assert [s.pred for s in batched] == [s.pred for s in one]
        a = torch.tensor([s.letter_logprobs for s in batched])
        b = torch.tensor([s.letter_logprobs for s in one])
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_batched_greedy_generation_matches_one_by_one(tokenizer, tiny_llama):
    prompts = _prompts(tokenizer, shots=0)[:6]
    one = GenerateScorer(batch_size=1, max_new_tokens=6)(tiny_llama, tokenizer, prompts)
    many = GenerateScorer(batch_size=6, max_new_tokens=6)(tiny_llama, tokenizer, prompts)
    assert [s.text for s in many] == [s.text for s in one]
    assert all(s.text is not None for s in one)


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("C. 王羲之", "C"),
    ("答案是：D", "D"),
    ("我认为答案应该是 A。", "A"),
    ("让我们一步一步思考，\n1. 分析……\n所以答案是B。", "B"),
    ("正确选项为C", "C"),
    ("选项D正确", "D"),
    ("故选A", "A"),
    ("这道题选择B", "B"),
    ("只有 C 符合", "C"),
    ("王羲之被称为书圣", "C"),  # the text of exactly one option
    ("A 和 B 都有可能", "A"),  # CMMLU extract_choice: a reply starting with a letter is that letter
    ("可能是 A 或 B", None),
    ("我不知道", None),
    ("", None),
    ("Apple", None),
])
def test_answer_extraction(text, expected):
    assert extract_choice(text, ["颜真卿", "柳公权", "王羲之", "欧阳询"]) == expected
