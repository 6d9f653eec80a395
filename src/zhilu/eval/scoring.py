"""Answer scoring: next-token log-likelihood of the four letters, or generation + answer extraction.

Letter scoring is what the official C-Eval and CMMLU scripts do for open models
(hkust-nlp/ceval ``evaluators/llama.py``; haonan-li/CMMLU ``src/hf_causal_model.py``): take the
logits of the token after the prompt at the ids of ``A``/``B``/``C``/``D`` and predict the argmax.
Here prompts are sorted by length and batched with right padding; each row is read at its own
last real token (the LM head runs on those B positions only, so only B x vocab logits are made),
which gives the same numbers as scoring the prompts one by one.

Generation mode (for chat models) decodes greedily and extracts the letter with the patterns of
CMMLU ``src/mp_utils.py`` ``extract_choice`` and C-Eval/FinEval ``extract_cot_answer``/``extract_answer``
(own implementation); an answer that cannot be extracted counts as wrong (``pred = None``)
instead of CMMLU's random letter, so scores are deterministic.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from zhilu.errors import ConfigError
from zhilu.eval.loader import LETTERS, Question

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """A scored question: the predicted letter (``None``: no letter found) and its evidence."""

    pred: str | None
    letter_logprobs: list[float] | None = None  # log-softmax over the vocabulary, at A, B, C, D
    text: str | None = None  # generation mode: the decoded answer


def letter_token_ids(tokenizer, letters: Sequence[str] = LETTERS) -> list[int]:
    """The token id of each answer letter; each must be a single token."""
    ids = []
    for letter in letters:
        toks = tokenizer.encode(letter, add_special_tokens=False)
        if len(toks) != 1:
            raise ConfigError(f"tokenizer: answer letter {letter!r} is not a single token ({toks})")
        ids.append(toks[0])
    return ids


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Indices sorted by decreasing length, cut into batches of at most ``batch_size`` rows and
    ``max_batch_tokens`` padded tokens (a longer single prompt still gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # the first row is the longest
        if cur and (len(cur) >= batch_size or (max_batch_tokens and width * (len(cur) + 1) > max_batch_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def last_token_logits(model, ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Logits at each row's last real token: the decoder runs once, the LM head on B rows only
    (works for any transformers 5 version and for peft-wrapped models)."""
    from zhilu.objectives.logps import base_causal_lm

    lm = base_causal_lm(model)
    hidden = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return lm.lm_head(hidden[torch.arange(ids.shape[0], device=ids.device), last])


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


class LetterLoglikScorer:
    """Predict the letter with the highest next-token logit after the prompt.

    Args:
        batch_size: prompts per forward pass (1 = the official one-by-one loop).
        max_batch_tokens: cap on ``rows x longest prompt`` per batch (memory bound for long shots).
    """

    reserve_tokens = 0  # the prompt may fill the whole context

    def __init__(self, batch_size: int = 16, max_batch_tokens: int | None = 32768) -> None:
        if batch_size < 1:
            raise ConfigError(f"scorer.batch_size={batch_size}: must be at least 1")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

    @torch.inference_mode()
    def __call__(self, model, tokenizer, prompts: Sequence[Sequence[int]],
                 questions: Sequence[Question] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[Scored]:
        letters = torch.tensor(letter_token_ids(tokenizer))
        device = model_device(model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        out: list[Scored | None] = [None] * len(prompts)
        done = 0
        for batch in length_batches([len(p) for p in prompts], self.batch_size, self.max_batch_tokens):
            rows = [prompts[i] for i in batch]
            ids, mask = right_pad(rows, pad, device)
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            logits = last_token_logits(model, ids, mask, last)
            logps = torch.log_softmax(logits.float(), dim=-1)[:, letters.to(device)].cpu()
            for j, i in enumerate(batch):
                row = logps[j].tolist()
                out[i] = Scored(pred=LETTERS[max(range(4), key=row.__getitem__)], letter_logprobs=row)
            done += len(batch)
            if progress is not None:
                progress(done, len(prompts))
        return out  # type: ignore[return-value]


class GenerateScorer:
    """Greedy generation (left-padded batches) and answer extraction, for chat models.

    Args:
        batch_size: prompts generated together.
        max_new_tokens: answer length budget (also reserved in the context).
    """

    def __init__(self, batch_size: int = 8, max_new_tokens: int = 32) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ConfigError("scorer.batch_size and scorer.max_new_tokens must be at least 1")
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    @property
    def reserve_tokens(self) -> int:
        return self.max_new_tokens

    @torch.inference_mode()
    def __call__(self, model, tokenizer, prompts: Sequence[Sequence[int]],
                 questions: Sequence[Question] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[Scored]:
        device = model_device(model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        out: list[Scored | None] = [None] * len(prompts)
        done = 0
        for batch in length_batches([len(p) for p in prompts], self.batch_size, None):
            ids, mask = left_pad([prompts[i] for i in batch], pad, device)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
            for j, i in enumerate(batch):
                text = tokenizer.decode(gen[j, ids.shape[1]:], skip_special_tokens=True).strip()
                options = questions[i].options if questions is not None else None
                out[i] = Scored(pred=extract_choice(text, options), text=text)
            done += len(batch)
            if progress is not None:
                progress(done, len(prompts))
        return out  # type: ignore[return-value]


# Answer patterns (group 1 = the letter), most specific first: CMMLU ``extract_choice`` step 1 and
# C-Eval/FinEval ``extract_answer``.
_PATTERNS = [re.compile(p, re.M) for p in (
    r"所以答案是\s*([ABCD])",
    r"答案(?:选项)?(?:应该|应)?(?:是|为)[：:]?\s*(?:选项)?\s*([ABCD])",
    r"正确(?:的)?(?:选项|答案)(?:是|为)\s*([ABCD])",
    r"选项\s*([ABCD])\s*(?:是|为)?正确",
    r"([ABCD])\s*(?:选?项)?(?:是|为)?正确",
    r"(?:故|应)?选择?[：:]?\s*([ABCD])(?![A-Za-z])",
    r"答案[：:]\s*([ABCD])",
    r"([ABCD])(?:选?项)?是?符合题意",
)]


def extract_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The answer letter in a generated reply, or ``None``.

    Order: a reply starting with a letter; the answer patterns; a reply that mentions exactly
    one letter; a reply that contains exactly one option's text.
    """
    text = (text or "").strip()
    if not text:
        return None
    if text[0] in LETTERS and (len(text) == 1 or not text[1].isascii() or not text[1].isalpha()):
        return text[0]
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    mentioned = set(re.findall(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])", text))
    if len(mentioned) == 1:
        return mentioned.pop()
    if options is not None:
        hits = [letter for letter, opt in zip(LETTERS, options) if str(opt).strip() and str(opt).strip() in text]
        if len(hits) == 1:
            return hits[0]
    return None
