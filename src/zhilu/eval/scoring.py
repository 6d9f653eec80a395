"""Answer scoring: next-token log-likelihood of the question's letters, or generation + answer extraction.

Letter scoring is what the official C-Eval and CMMLU scripts do for open models
(hkust-nlp/ceval ``evaluators/llama.py``; haonan-li/CMMLU ``src/hf_causal_model.py``): take the
logits of the token after the prompt at the ids of ``A``/``B``/``C``/``D`` and predict the argmax.
A question with another number of options is scored over its own letters only (a 2-option
true/false question over ``A``/``B``, a 5-option one over ``A``-``E``); a prompt style may put a
prefix before the letter (lm-evaluation-harness: the token `` A``).
Here prompts are sorted by length and batched with right padding; each row is read at its own
last real token (the LM head runs on those B positions only, so only B x vocab logits are made),
which gives the same numbers as scoring the prompts one by one.

Multi-answer questions (several correct letters) cannot be scored by one next-token choice: they
are answered by greedy generation, the answer set is extracted (:func:`extract_choices`) and
scored by exact set match (the CFLUE paper's metric); ``option_credit`` adds per-option partial
credit, reported separately.

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

from functools import lru_cache

from zhilu.errors import ConfigError
from zhilu.eval.loader import ALL_LETTERS, LETTERS, Question
from zhilu.model.runtime import base_causal_lm, pad_rows

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """A scored question: the predicted letter (``None``: no letter found) and its evidence."""

    pred: str | None  # a letter, or for multi-answer questions the sorted letters ("ACD")
    letter_logprobs: list[float] | None = None  # log-softmax over the vocabulary, at the question's letters
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
    lm = base_causal_lm(model)
    hidden = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return lm.lm_head(hidden[torch.arange(ids.shape[0], device=ids.device), last])


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_rows(rows, pad_id, device, side="right")


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_rows(rows, pad_id, device, side="left")


class LetterLoglikScorer:
    """Predict the letter with the highest next-token logit after the prompt.

    Args:
        batch_size: prompts per forward pass (1 = the official one-by-one loop).
        max_batch_tokens: cap on ``rows x longest prompt`` per batch (memory bound for long shots).
    """

    reserve_tokens = 0  # the prompt may fill the whole context
    generates = False

    def __init__(self, batch_size: int = 16, max_batch_tokens: int | None = 32768) -> None:
        if batch_size < 1:
            raise ConfigError(f"scorer.batch_size={batch_size}: must be at least 1")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

    @torch.inference_mode()
    def __call__(self, model, tokenizer, prompts: Sequence[Sequence[int]],
                 questions: Sequence[Question] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 choices: Sequence[Sequence[int]] | None = None) -> list[Scored]:
        """``choices[i]``: the token ids of prompt i's answer letters (default: ``A``-``D``)."""
        if choices is None:
            choices = [letter_token_ids(tokenizer)] * len(prompts)
        device = model_device(model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        out: list[Scored | None] = [None] * len(prompts)
        done = 0
        for batch in length_batches([len(p) for p in prompts], self.batch_size, self.max_batch_tokens):
            rows = [prompts[i] for i in batch]
            ids, mask = right_pad(rows, pad, device)
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            logits = last_token_logits(model, ids, mask, last)
            width = max(len(choices[i]) for i in batch)
            index = torch.tensor([list(choices[i]) + [choices[i][0]] * (width - len(choices[i])) for i in batch],
                                 device=device)
            logps = torch.log_softmax(logits.float(), dim=-1).gather(1, index).cpu()
            for j, i in enumerate(batch):
                row = logps[j, : len(choices[i])].tolist()
                out[i] = Scored(pred=ALL_LETTERS[max(range(len(row)), key=row.__getitem__)], letter_logprobs=row)
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

    generates = True

    @property
    def reserve_tokens(self) -> int:
        return self.max_new_tokens

    @torch.inference_mode()
    def __call__(self, model, tokenizer, prompts: Sequence[Sequence[int]],
                 questions: Sequence[Question] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 choices: Sequence[Sequence[int]] | None = None) -> list[Scored]:
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
                q = questions[i] if questions is not None else None
                if q is not None and q.multi:
                    pred = extract_choices(text, q.letters)
                else:
                    pred = extract_choice(text, q.options if q is not None else None)
                out[i] = Scored(pred=pred, text=text)
            done += len(batch)
            if progress is not None:
                progress(done, len(prompts))
        return out  # type: ignore[return-value]


# Answer patterns (group 1 = the letter), most specific first: CMMLU ``extract_choice`` step 1 and
# C-Eval/FinEval ``extract_answer``. ``{L}`` is the letter class of the question (``[ABCD]``).
_PATTERN_TEXTS = (
    r"所以答案是\s*({L})",
    r"答案(?:选项)?(?:应该|应)?(?:是|为)[：:]?\s*(?:选项)?\s*({L})",
    r"正确(?:的)?(?:选项|答案)(?:是|为)\s*({L})",
    r"选项\s*({L})\s*(?:是|为)?正确",
    r"({L})\s*(?:选?项)?(?:是|为)?正确",
    r"(?:故|应)?选择?[：:]?\s*({L})(?![A-Za-z])",
    r"答案[：:]\s*({L})",
    r"({L})(?:选?项)?是?符合题意",
)


@lru_cache(maxsize=None)
def _patterns(letters: str) -> tuple[re.Pattern, ...]:
    cls = f"[{letters}]"
    return tuple(re.compile(p.replace("{L}", cls), re.M) for p in _PATTERN_TEXTS)


def extract_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The answer letter in a generated reply, or ``None`` (letters: those of ``options``, default A-D).

    Order: a reply starting with a letter; the answer patterns; a reply that mentions exactly
    one letter; a reply that contains exactly one option's text.
    """
    letters = "".join(ALL_LETTERS[: len(options)]) if options is not None else "".join(LETTERS)
    text = (text or "").strip()
    if not text:
        return None
    if text[0] in letters and (len(text) == 1 or not text[1].isascii() or not text[1].isalpha()):
        return text[0]
    for pattern in _patterns(letters):
        m = pattern.search(text)
        if m:
            return m.group(1)
    mentioned = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text))
    if len(mentioned) == 1:
        return mentioned.pop()
    if options is not None:
        hits = [letter for letter, opt in zip(ALL_LETTERS, options) if str(opt).strip() and str(opt).strip() in text]
        if len(hits) == 1:
            return hits[0]
    return None


# Multi-answer replies: a run of letters joined by nothing or by separators ("AC", "A、C", "A和C").
_SEP = r"[\s、,，;；/和及与]*"
_RUN = rf"([A-Z](?:{_SEP}[A-Z])*)(?![A-Za-z])"
_SET_PATTERNS = tuple(re.compile(p, re.M) for p in (
    rf"答案(?:选项)?(?:应该|应)?(?:是|为|有)?[：:]?\s*(?:选项)?\s*{_RUN}",
    rf"正确(?:的)?(?:选项|答案)(?:是|为|有)?[：:]?\s*{_RUN}",
    rf"(?:故|应|所以)?选(?:择)?[：:]?\s*(?:选项)?\s*{_RUN}",
    rf"^\s*{_RUN}",
))


def extract_choices(text: str, letters: Sequence[str] = LETTERS) -> str | None:
    """The answer set of a multi-answer reply as sorted letters (``"AC"``), or ``None`` (a refusal,
    no letters, or a letter the question does not have).

    ``答案：A、C``, ``AC``, ``选A和C``, ``正确答案是B, D`` all give the set they name; like
    CFLUE's ``extract_multi_choice`` the answer phrase is tried first, then a reply that starts with letters.
    """
    text = (text or "").strip()
    if not text:
        return None
    for pattern in _SET_PATTERNS:
        m = pattern.search(text)
        if m:
            got = set(re.findall(r"[A-Z]", m.group(1)))
            if not got <= set(letters):
                return None
            return "".join(sorted(got))
    return None


def option_credit(pred: str | None, answer: str, n_options: int) -> float:
    """Per-option partial credit of a multi-answer prediction: the share of the question's options
    whose chosen / not chosen status matches the key (a refusal chooses none)."""
    chosen = set(pred or "")
    key = set(answer)
    return sum((x in chosen) == (x in key) for x in ALL_LETTERS[:n_options]) / n_options
