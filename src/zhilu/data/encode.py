"""Turn dialogues and preference pairs into token ids with labels on assistant tokens only.

Each message is tokenized on its own and the pieces joined, so every token's role is known;
the join equals tokenizing the whole rendered Llama-3 string (tested), because the special
tokens separate the pieces. Labels: every assistant turn's content and its ``<|eot_id|>``;
BOS, headers, system and user tokens get ``-100``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from zhilu.errors import ConfigError
from zhilu.model.chat_template import BOS, END_HEADER, EOT, START_HEADER

IGNORE_INDEX = -100
OVERLONG_POLICIES = ("truncate", "drop", "error")


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
        self.stats = {"truncated": 0, "dropped_overlong": 0}

    def text(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False) if s else []

    def header(self, role: str) -> list[int]:
        if role not in self._headers:
            self._headers[role] = [self.start, *self.text(role), self.end, *self.text("\n\n")]
        return self._headers[role]

    def dialogue(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        ids, labels = [self.bos], [IGNORE_INDEX]
        for m in messages:
            head = self.header(m["role"])
            body = [*self.text(m["content"].strip()), self.eot]
            ids += head + body
            labels += [IGNORE_INDEX] * len(head)
            labels += body if m["role"] == "assistant" else [IGNORE_INDEX] * len(body)
        return ids, labels

    def prompt(self, messages: Sequence[dict]) -> list[int]:
        """A prompt ready for the assistant's answer (generation prompt included)."""
        ids, _ = self.dialogue(messages)
        return ids + self.header("assistant")

    # ------------------------------------------------------------------ length policy
    def _fit(self, ids: list[int], labels: list[int], what: str) -> tuple[list[int], list[int]] | None:
        if len(ids) <= self.max_length:
            return ids, labels
        if self.overlong == "error":
            raise ConfigError(
                f"{what}: {len(ids)} tokens > data.max_length={self.max_length} "
                "(set data.overlong=truncate or drop)"
            )
        if self.overlong == "drop":
            self.stats["dropped_overlong"] += 1
            return None
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(x == IGNORE_INDEX for x in labels):  # nothing left to learn from
            self.stats["dropped_overlong"] += 1
            return None
        self.stats["truncated"] += 1
        return ids, labels

    def sft(self, messages: Sequence[dict], what: str = "sample") -> Example | None:
        fitted = self._fit(*self.dialogue(messages), what)
        if fitted is None:
            return None
        return Example([fitted[0]], [fitted[1]])

    def pair(self, prompt: Sequence[dict], chosen: str, rejected: str, what: str = "pair") -> Example | None:
        p = self.prompt(prompt)
        seqs = []
        for answer in (chosen, rejected):
            a = [*self.text(answer.strip()), self.eot]
            seqs.append((p + a, [IGNORE_INDEX] * len(p) + a))
        if any(len(ids) > self.max_length for ids, _ in seqs):
            if self.overlong == "error":
                longest = max(len(ids) for ids, _ in seqs)
                raise ConfigError(
                    f"{what}: {longest} tokens > data.max_length={self.max_length} "
                    "(set data.overlong=truncate or drop)"
                )
            if self.overlong == "drop" or len(p) >= self.max_length:
                self.stats["dropped_overlong"] += 1
                return None
            self.stats["truncated"] += 1
            seqs = [(ids[: self.max_length], lab[: self.max_length]) for ids, lab in seqs]
        return Example([s[0] for s in seqs], [s[1] for s in seqs])
