"""Turn dialogues and preference pairs into token ids with labels on assistant tokens only.

Each message is tokenized on its own and the pieces joined, so every token's role is known;
the join equals tokenizing the whole rendered Llama-3 string (tested), because the special
tokens separate the pieces. Labels: every assistant turn's content and its ``<|eot_id|>``;
BOS, headers, system and user tokens get ``-100``.

Past ``data.max_length`` a policy applies (:func:`fit_example`, a pure function of one
:class:`Encoded` example, so any reader or store can call it): ``truncate`` cuts the end,
``truncate_prompt`` keeps every answer whole and cuts the prompt (oldest turns first), ``drop``
and ``error``; its :class:`Fitted` result carries the tokens it cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from zhilu.errors import ConfigError
from zhilu.model.chat_template import BOS, END_HEADER, EOS, EOT, START_HEADER

IGNORE_INDEX = -100
OVERLONG_POLICIES = ("truncate", "truncate_prompt", "drop", "error")


@dataclass
class Turn:
    """One message's tokens: its header (``head`` tokens) then its content and ``<|eot_id|>``."""

    role: str
    ids: list[int]
    labels: list[int]
    head: int

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Encoded:
    """One example before the length policy: ``BOS + context`` then one answer per sequence.

    SFT: one answer, the last assistant turn (with any turns after it); ``context`` is every turn
    before it, oldest first. Preference pair: two answers (chosen, rejected, each with the assistant
    header) after the same prompt turns.
    """

    bos: list[int]
    context: list[Turn]
    answers: list[Turn]

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        ids = list(self.bos)
        labels = [IGNORE_INDEX] * len(self.bos)
        for t in self.context:
            ids += t.ids
            labels += t.labels
        return [(ids + a.ids, labels + a.labels) for a in self.answers]


@dataclass
class Fitted:
    """What a length policy made of one :class:`Encoded` example.

    ``example`` is ``None`` when the example was dropped. ``tokens_lost`` and ``label_tokens_lost`` count,
    over its sequences, the tokens (and the trainable ones among them) that were cut or dropped.
    """

    example: Example | None
    status: str  # "kept" (fits as it is), "truncated" or "dropped"
    tokens_lost: int = 0
    label_tokens_lost: int = 0


def _labelled(labels: Sequence[int]) -> int:
    return sum(1 for x in labels if x != IGNORE_INDEX)


def _cut_prompt(enc: Encoded, max_length: int) -> list[Turn] | None:
    """The newest context turns that fit next to the longest answer (whole turns, not starting at an
    assistant turn), or, when not even the newest turn fits, that turn with the start of its content cut
    (its header kept). ``None`` when the answer and a question's header alone do not fit."""
    budget = max_length - len(enc.bos) - max(len(a) for a in enc.answers)
    kept: list[Turn] = []
    used = 0
    for turn in reversed(enc.context):
        if used + len(turn) > budget:
            break
        kept.insert(0, turn)
        used += len(turn)
    if len(kept) == len(enc.context):
        return kept
    if not kept:  # the newest prompt turn alone is too long: keep its header and the end of its content
        turn = enc.context[-1]
        room = budget - turn.head
        if room < 1:
            return None
        body = slice(len(turn) - room, len(turn))
        return [Turn(turn.role, turn.ids[: turn.head] + turn.ids[body], turn.labels[: turn.head] + turn.labels[body],
                     turn.head)]
    while kept and kept[0].role == "assistant":
        kept.pop(0)  # a dialogue cut before an answer starts at the question, not at the answer
    return kept


def fit_example(enc: Encoded, max_length: int, overlong: str, what: str = "sample") -> Fitted:
    """Apply the ``data.overlong`` policy to one encoded example (a pure function of it).

    - ``truncate``: cut every sequence's end at ``max_length`` (dropped when no label is left, or when a
      pair's prompt alone fills ``max_length``);
    - ``truncate_prompt``: keep every answer whole and cut the prompt instead: the oldest turns go first
      (the system prompt is the oldest), whole; a cut never leaves a dialogue starting with an assistant
      turn; when even the newest prompt turn does not fit, the start of its content is cut (its header
      stays). Both answers of a pair keep the same prompt. When an answer alone does not fit, as
      ``truncate`` (the answer's start still trains);
    - ``drop``: drop the example; ``error``: raise :class:`ConfigError` naming it.

    Nothing kept is masked: every kept token keeps the label it had. The counts in the result say how
    many tokens (and labelled tokens) the policy cost.
    """
    seqs = enc.sequences()
    total = sum(len(ids) for ids, _ in seqs)
    labelled = sum(_labelled(lab) for _, lab in seqs)
    if all(len(ids) <= max_length for ids, _ in seqs):
        return Fitted(Example([i for i, _ in seqs], [lab for _, lab in seqs]), "kept")
    if overlong == "error":
        longest = max(len(ids) for ids, _ in seqs)
        raise ConfigError(f"{what}: {longest} tokens > data.max_length={max_length} "
                          "(set data.overlong=truncate_prompt, truncate or drop)")
    dropped = Fitted(None, "dropped", total, labelled)
    if overlong == "drop":
        return dropped
    if overlong == "truncate":
        prompt = len(enc.bos) + sum(len(t) for t in enc.context) + enc.answers[0].head
        if len(seqs) > 1 and prompt >= max_length:  # a pair's prompt (with the answer header) fills it
            return dropped
        cut = [(ids[:max_length], lab[:max_length]) for ids, lab in seqs]
        kept_labels = sum(_labelled(lab) for _, lab in cut)
        if not kept_labels:  # nothing left to learn from
            return dropped
    else:
        context = _cut_prompt(enc, max_length)
        if context is None:  # an answer (almost) alone is too long: its start still trains, as under truncate
            return fit_example(enc, max_length, "truncate", what)
        cut = Encoded(enc.bos, context, enc.answers).sequences()
        kept_labels = sum(_labelled(lab) for _, lab in cut)
    kept = sum(len(ids) for ids, _ in cut)
    return Fitted(Example([i for i, _ in cut], [lab for _, lab in cut]), "truncated", total - kept,
                  labelled - kept_labels)


@dataclass
class Example:
    """One training example: one sequence for SFT, two (chosen, rejected) for preference data."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    meta: dict = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    @property
    def total_length(self) -> int:
        return sum(self.lengths)


class ChatEncoder:
    def __init__(self, tokenizer, max_length: int = 2048, overlong: str = "truncate") -> None:
        if overlong not in OVERLONG_POLICIES:
            raise ConfigError(f"data.overlong={overlong!r}: expected one of {', '.join(OVERLONG_POLICIES)}")
        if max_length < 8:
            raise ConfigError(f"data.max_length={max_length}: too small (at least 8)")
        self.tok = tokenizer
        self.max_length = max_length
        self.overlong = overlong
        vocab = tokenizer.get_vocab()
        missing = [t for t in (BOS, START_HEADER, END_HEADER, EOT) if t not in vocab]
        if missing:
            raise ConfigError(f"tokenizer lacks the Llama-3 special tokens {missing}")
        self.bos, self.start, self.end, self.eot = (vocab[t] for t in (BOS, START_HEADER, END_HEADER, EOT))
        self._headers: dict[str, list[int]] = {}
        self.stats = dict.fromkeys(STAT_KEYS, 0)

    def text(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False) if s else []

    def header(self, role: str) -> list[int]:
        if role not in self._headers:
            self._headers[role] = [self.start, *self.text(role), self.end, *self.text("\n\n")]
        return self._headers[role]

    def turn(self, role: str, content: str, header: bool = True) -> Turn:
        head = self.header(role) if header else []
        body = [*self.text(content.strip()), self.eot]
        return Turn(role, head + body, [IGNORE_INDEX] * len(head) + (body if role == "assistant" else
                                                                    [IGNORE_INDEX] * len(body)), len(head))

    def dialogue(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        ids, labels = [self.bos], [IGNORE_INDEX]
        for m in messages:
            t = self.turn(m["role"], m["content"])
            ids += t.ids
            labels += t.labels
        return ids, labels

    def prompt(self, messages: Sequence[dict]) -> list[int]:
        """A prompt ready for the assistant's answer (generation prompt included)."""
        ids, _ = self.dialogue(messages)
        return ids + self.header("assistant")

    # ------------------------------------------------------------------ encoding before the length policy
    def encode_sft(self, messages: Sequence[dict]) -> Encoded:
        turns = [self.turn(m["role"], m["content"]) for m in messages]
        last = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=len(turns) - 1)
        tail = turns[last:]  # the answer, with any (unlabelled) turns after it
        answer = Turn(tail[0].role, [x for t in tail for x in t.ids], [x for t in tail for x in t.labels], tail[0].head)
        return Encoded([self.bos], turns[:last], [answer])

    def encode_pair(self, prompt: Sequence[dict], chosen: str, rejected: str) -> Encoded:
        return self.encode_answers(prompt, (chosen, rejected))

    def encode_answers(self, prompt: Sequence[dict], answers: Sequence[str]) -> Encoded:
        context = [self.turn(m["role"], m["content"]) for m in prompt]
        for t in context:  # train on the answers only, not on earlier turns of the prompt
            t.labels = [IGNORE_INDEX] * len(t.labels)
        return Encoded([self.bos], context, [self.turn("assistant", a) for a in answers])

    # ------------------------------------------------------------------ length policy
    def fit(self, enc: Encoded, what: str) -> Example | None:
        """:func:`fit_example` with this encoder's policy; its counts are added to ``stats``."""
        fitted = fit_example(enc, self.max_length, self.overlong, what)
        add_stats(self.stats, fitted)
        return fitted.example

    def sft(self, messages: Sequence[dict], what: str = "sample") -> Example | None:
        return self.fit(self.encode_sft(messages), what)

    def pair(self, prompt: Sequence[dict], chosen: str, rejected: str, what: str = "pair") -> Example | None:
        return self.answers(prompt, (chosen, rejected), what)

    def answers(self, prompt: Sequence[dict], answers: Sequence[str], what: str = "answer") -> Example | None:
        """One sequence per answer to the same prompt (labels on the answers only); the length policy
        applies to all of them together (a pair, or KTO's single completion)."""
        return self.fit(self.encode_answers(prompt, answers), what)


#: counts kept per split: rows truncated / dropped by ``data.overlong``, the tokens that cost, and how many
#: of them were trainable (labelled)
STAT_KEYS = ("truncated", "dropped_overlong", "truncated_tokens_lost", "dropped_tokens_lost", "label_tokens_lost")


def add_stats(stats: dict, fitted: Fitted) -> None:
    """Add one :class:`Fitted` result to the counts ``stats`` (keys :data:`STAT_KEYS`)."""
    if fitted.status == "truncated":
        stats["truncated"] += 1
        stats["truncated_tokens_lost"] += fitted.tokens_lost
    elif fitted.status == "dropped":
        stats["dropped_overlong"] += 1
        stats["dropped_tokens_lost"] += fitted.tokens_lost
    stats["label_tokens_lost"] += fitted.label_tokens_lost


def encode_text(encoder: ChatEncoder, text: str) -> list[Example]:
    """Pre-training text: ``<|begin_of_text|> text <|end_of_text|>`` in ``max_length`` windows, every
    token labelled except BOS (the loss is next-token prediction on all of it)."""
    eos = encoder.tok.convert_tokens_to_ids(EOS)
    ids = [*encoder.text(text.strip()), eos]
    step = encoder.max_length - 1
    out = []
    for start in range(0, len(ids), step):
        chunk = [encoder.bos, *ids[start: start + step]]
        out.append(Example([chunk], [[IGNORE_INDEX, *chunk[1:]]]))
    return out
