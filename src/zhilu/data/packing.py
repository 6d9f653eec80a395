"""Best-fit-decreasing bin packing of examples into rows of a fixed token budget.

Items are placed longest first, each into the open row with the least room that still fits it
(a new row when none does). Ties in length are broken by a seeded shuffle, so the packing is a
deterministic function of (lengths, seed) and differs between epochs when the seed does.
Like first-fit-decreasing, BFD uses at most about 11/9 of the optimal number of rows (Johnson
1973; Dósa 2007 for FFD's tight 11/9 OPT + 6/9); on chat-like length mixes it fills >95%.

The seed only decides which of several equally long items goes where: BFD's choices depend on
the sorted lengths alone, so the number of rows and every row's fill are the same for every
seed. Re-packing each epoch therefore never changes the epoch's length (Lightning sizes the
epoch once) while still varying which samples share a row.

Packing for fine-tuning without cross-contamination: Krell et al. 2021,
https://arxiv.org/abs/2107.02027 (each sample its own attention block and restarted positions).

Implementation: on numpy arrays, exact BFD processed by runs of equal length. Open rows sit in
buckets by their remaining room (ascending row ids within a bucket); an item goes to the lowest
room that fits it, and in a run of equal items a row with room ``r`` takes ``r // n`` of them in a
row before the next row is tried, so each bucket is handled as one array operation. Rows are
index arrays into a length array (``PackedRows``: items + offsets), so packing 1M examples needs
a few arrays and seconds, not a Python list per row.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zhilu.errors import ConfigError


class PackedRows:
    """Rows of a packing as two arrays: ``items`` (example indices, row after row, each row in
    placement order; int32 below 2**31 examples) and ``offsets`` (row ``i`` is ``items[offsets[i]:offsets[i + 1]]``). Reads
    like a list of lists of ints (and compares equal to one)."""

    def __init__(self, items: np.ndarray, offsets: np.ndarray) -> None:
        self.items = items
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.items[self.offsets[i]: self.offsets[i + 1]].tolist()

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def tolist(self) -> list[list[int]]:
        return list(self)

    def __eq__(self, other) -> bool:
        if isinstance(other, PackedRows):
            return np.array_equal(self.items, other.items) and np.array_equal(self.offsets, other.offsets)
        try:
            return len(self) == len(other) and all(a == list(b) for a, b in zip(self, other))
        except TypeError:
            return NotImplemented

    def row_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """Tokens in every row."""
        if len(self.items) == 0:
            return np.zeros(len(self), dtype=np.int64)
        return np.add.reduceat(np.asarray(lengths, dtype=np.int64)[self.items], self.offsets[:-1])


def _check(lengths: np.ndarray, capacity: int) -> None:
    if capacity < 1:
        raise ConfigError(f"packing: row length {capacity} must be positive (data.pack_length)")
    bad = np.flatnonzero((lengths > capacity) | (lengths < 1))
    if len(bad):
        i = int(bad[0])
        if lengths[i] > capacity:
            raise ConfigError(
                f"packing: example {i} has {int(lengths[i])} tokens, more than a row holds ({capacity}): "
                "raise data.pack_length or lower data.max_length"
            )
        raise ConfigError(f"packing: example {i} is empty")


def _index_dtype(n: int):
    """int32 indices while they fit: packing's temporaries are a few arrays of one index per example."""
    return np.int32 if n < 2**31 else np.int64


def bfd_order(lengths: np.ndarray, seed: int) -> np.ndarray:
    """Longest first; equal lengths in a seeded random order."""
    perm = np.random.default_rng(seed).permutation(len(lengths)).astype(_index_dtype(len(lengths)))
    key = lengths[perm].astype(np.int32 if len(lengths) == 0 or lengths.max() < 2**31 else np.int64)
    np.negative(key, out=key)
    by_key = np.argsort(key, kind="stable")
    del key
    return perm[by_key]


def place_bfd(lengths: np.ndarray, order: np.ndarray, capacity: int) -> PackedRows:
    """Best-fit placement of the items in ``order`` (non-increasing lengths): each item goes into the
    open row with the least room that still fits it, the lowest row id among equals, else a new row."""
    n_items = len(order)
    row_of = np.empty(n_items, dtype=_index_dtype(n_items))  # row of the item at each position of ``order``
    if n_items == 0:
        return PackedRows(np.zeros(0, np.int64), np.zeros(1, np.int64))
    sorted_len = lengths[order].astype(np.int32 if capacity < 2**31 else np.int64)
    min_len = int(sorted_len[-1])
    buckets: dict[int, list[np.ndarray]] = {}  # room -> sorted row-id chunks
    rooms: list[int] = []  # rooms with a non-empty bucket, ascending
    next_rid = 0

    def put(room: int, rids: np.ndarray) -> None:
        if room < min_len or len(rids) == 0:  # no later item fits: the rows are closed
            return
        if room not in buckets:
            buckets[room] = []
            bisect.insort(rooms, room)
        buckets[room].append(rids)

    # runs of equal length
    bounds = np.flatnonzero(np.r_[True, sorted_len[1:] != sorted_len[:-1], True])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        n = int(sorted_len[a])
        pos = a
        while pos < b:
            remaining = b - pos
            j = bisect.bisect_left(rooms, n)
            if j < len(rooms):
                r = rooms[j]
                chunks = buckets[r]
                rids = chunks[0] if len(chunks) == 1 else np.sort(np.concatenate(chunks))
                q = r // n
                m = len(rids)
                if m * q <= remaining:  # every row of the bucket fills up to below n
                    row_of[pos: pos + m * q] = np.repeat(rids, q)
                    pos += m * q
                    del buckets[r]
                    rooms.pop(j)
                    put(r - q * n, rids)
                else:
                    full, rest = divmod(remaining, q)
                    row_of[pos: pos + full * q] = np.repeat(rids[:full], q)
                    if rest:
                        row_of[pos + full * q: b] = rids[full]
                    pos = b
                    left = rids[full + (1 if rest else 0):]
                    if len(left):
                        buckets[r] = [left]
                    else:
                        del buckets[r]
                        rooms.pop(j)
                    put(r - q * n, rids[:full])
                    if rest:
                        put(r - rest * n, rids[full: full + 1])
            else:  # new rows, each taking capacity // n items
                q = capacity // n
                full, rest = divmod(remaining, q)
                new = np.arange(next_rid, next_rid + full + (1 if rest else 0), dtype=np.int64)
                next_rid += len(new)
                row_of[pos:b] = np.repeat(new, q)[:remaining]
                pos = b
                put(capacity - q * n, new[:full])
                if rest:
                    put(capacity - rest * n, new[full:])
    del sorted_len
    by_row = np.argsort(row_of, kind="stable")  # placement order within each row
    items = np.asarray(order)[by_row]  # int32 while example indices fit (4 bytes an example for the whole run)
    del by_row
    offsets = np.zeros(next_rid + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(row_of, minlength=next_rid))
    return PackedRows(items, offsets)


def pack_bfd(lengths, capacity: int, seed: int = 0) -> PackedRows:
    """Best-fit-decreasing on a length array; ``PackedRows`` of example indices."""
    lengths = np.asarray(lengths, dtype=np.int64)
    _check(lengths, capacity)
    return place_bfd(lengths, bfd_order(lengths, seed), capacity)


def best_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows whose lengths sum to at most ``capacity``.

    Every index appears exactly once; within a row, indices are in placement order.
    """
    return pack_bfd(lengths, capacity, seed).tolist()


@dataclass
class PackingStats:
    """Rows, samples, real tokens and token slots (``rows * capacity``) of one packing."""

    rows: int
    samples: int
    real_tokens: int
    slots: int

    @property
    def efficiency(self) -> float:
        return self.real_tokens / max(self.slots, 1)

    @property
    def samples_per_row(self) -> float:
        return self.samples / max(self.rows, 1)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "samples": self.samples, "efficiency": self.efficiency,
                "samples_per_row": self.samples_per_row}


def packing_stats(lengths: Sequence[int], rows, capacity: int) -> PackingStats:
    """Efficiency is real tokens / slots: the share of a ``[rows, capacity]`` tensor that is not padding."""
    if isinstance(rows, PackedRows):
        real = int(np.asarray(lengths, dtype=np.int64)[rows.items].sum())
        return PackingStats(len(rows), len(rows.items), real, len(rows) * capacity)
    real = sum(lengths[i] for row in rows for i in row)
    return PackingStats(len(rows), sum(len(r) for r in rows), real, len(rows) * capacity)
