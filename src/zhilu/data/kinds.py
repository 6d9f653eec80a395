"""Data kinds: what an objective trains on, as a table that a new objective extends.

A kind names the row formats it accepts (readers in ``zhilu.data.formats``), how many sequences one
example holds (packing puts an example's sequences in one row, so the default row length is
``sequences * max_length``), and the function that encodes a parsed row into examples. The
DataModule, the mixtures and the tokenized store read this table and nothing else, so a new kind
needs no change to them. For example a KTO-style ``unpaired`` kind (a prompt, one completion and a
desirable/undesirable label) is a reader added to ``formats.READERS`` plus::

    register_kind(DataKind("unpaired", formats=("unpaired",), sequences=1, encode=encode_unpaired))

where ``encode_unpaired(encoder, row, what)`` returns ``[Example([ids], [labels], {"label": row.label})]``
(``Example.meta`` values that are JSON are kept in the store). ``tests/test_store.py`` registers such
a kind and trains its rows through the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from zhilu.data.encode import ChatEncoder, Example, encode_text
from zhilu.data.formats import TextRow
from zhilu.data.unpaired import encode_unpaired, with_mismatched
from zhilu.errors import ConfigError

Encode = Callable[[ChatEncoder, Any, str], list[Example]]


@dataclass(frozen=True)
class DataKind:
    """``encode(encoder, parsed_row, what)`` returns the row's examples (none: dropped as overlong);
    ``what`` names the row in errors (``file:line``)."""

    name: str
    formats: tuple[str, ...]
    sequences: int
    encode: Encode
    #: applied to every batch's examples before collation (e.g. KTO's mismatched completions); such a
    #: kind is not packed (``batch`` may add sequences a packed row has no room for)
    batch: Callable[[list[Example]], list[Example]] | None = None


def encode_sft(encoder: ChatEncoder, row: Any, what: str) -> list[Example]:
    """A dialogue (labels on the assistant turns), or pre-training text in ``max_length`` windows."""
    if isinstance(row, TextRow):
        return encode_text(encoder, row.text)
    ex = encoder.sft(row, what=what)
    return [] if ex is None else [ex]


def encode_preference(encoder: ChatEncoder, row: Any, what: str) -> list[Example]:
    """A prompt with its chosen and rejected answers: two sequences, in that order."""
    ex = encoder.pair(row.prompt, row.chosen, row.rejected, what=what)
    return [] if ex is None else [ex]


KINDS: dict[str, DataKind] = {}


def register_kind(kind: DataKind) -> DataKind:
    KINDS[kind.name] = kind
    return kind


register_kind(DataKind("sft", ("chat", "alpaca", "sharegpt", "text"), 1, encode_sft))
register_kind(DataKind("preference", ("preference",), 2, encode_preference))
# KTO: stored as one sequence per row; each batch adds the mismatched completions (zhilu.data.unpaired)
register_kind(DataKind("unpaired", ("unpaired", "preference"), 2, encode_unpaired, batch=with_mismatched))


def get_kind(name: str) -> DataKind:
    if name not in KINDS:
        raise ConfigError(f"data.kind={name!r}: expected one of {', '.join(KINDS)}")
    return KINDS[name]


def check_format(kind: DataKind, fmt: str, where: str = "data.format") -> None:
    if fmt not in kind.formats:
        raise ConfigError(f"{where}={fmt!r} does not fit data.kind={kind.name} (use {', '.join(kind.formats)})")
