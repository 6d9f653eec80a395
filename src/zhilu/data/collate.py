"""Collation into the one batch layout every objective reads.

Batch keys:
- ``input_ids``, ``labels`` ``[B, T]`` (labels unshifted; ``-100`` = no loss)
- ``attention_mask`` ``[B, T]`` for padded batches, absent for packed ones (document boundaries
  are then read from ``position_ids``, which restart at 0 at every sequence)
- ``position_ids`` ``[B, T]``
- ``sequence_index`` ``[B, T]``: which sequence of the batch a token belongs to (``-1`` = padding).
  Sequences are numbered example by example: for preference data ``2i`` is pair ``i``'s chosen
  answer and ``2i + 1`` its rejected one.
- ``example_ids`` ``[E]``: ``Example.meta["id"]`` of the batch's examples in sequence order
  (``-1`` when unset), so per-example values (e.g. cached reference log-probs) can be looked up
- ``num_sequences`` (int) and ``num_tokens`` (real tokens in the batch)
- ``example_labels`` ``[E]`` (float): ``Example.meta["label"]`` of the batch's examples, only when
  they have one (unpaired KTO data: 1 = desirable, 0 = undesirable)
"""

from __future__ import annotations

from typing import Sequence

import torch

from zhilu.data.encode import IGNORE_INDEX, Example
from zhilu.errors import DataError


def with_example_labels(examples: Sequence[Example], batch: dict) -> dict:
    """Add ``example_labels`` when every example carries ``meta["label"]`` (a mix is a data bug)."""
    have = [("label" in ex.meta) for ex in examples]
    if any(have):
        if not all(have):
            raise DataError("a batch mixes labelled (unpaired) and unlabelled examples")
        batch["example_labels"] = torch.tensor([float(ex.meta["label"]) for ex in examples], dtype=torch.float32)
    return batch


class PaddedCollator:
    """One sequence per row, right-padded to the longest in the batch."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, examples: Sequence[Example]) -> dict:
        seqs = [(ids, lab) for ex in examples for ids, lab in zip(ex.input_ids, ex.labels)]
        example_ids = torch.tensor([ex.meta.get("id", -1) for ex in examples], dtype=torch.long)
        T = max(len(ids) for ids, _ in seqs)
        if self.multiple:
            T = -(-T // self.multiple) * self.multiple
        B = len(seqs)
        input_ids = torch.full((B, T), self.pad, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        seq_index = torch.full((B, T), -1, dtype=torch.long)
        for i, (ids, lab) in enumerate(seqs):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids)
            labels[i, :n] = torch.tensor(lab)
            attn[i, :n] = 1
            seq_index[i, :n] = i
        position_ids = torch.arange(T).unsqueeze(0).expand(B, T).clone()
        return with_example_labels(examples, {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attn,
            "position_ids": position_ids,
            "sequence_index": seq_index,
            "example_ids": example_ids,
            "num_sequences": B,
            "num_tokens": int(attn.sum()),
        })


class PackedCollator:
    """Each row holds several whole examples; nothing is attended or predicted across sequences.

    ``position_ids`` restart at 0 at every sequence (RoPE sees each as if alone), the first
    label of every sequence is ``-100`` (it would be predicted from the previous sequence's last
    token), and the tail padding of a row is a document of its own with no labels. Attention
    masking per backend (block-diagonal mask, or FlashAttention's ``cu_seqlens`` on the flattened
    rows) is done by :func:`zhilu.objectives.logps.decoder_view`.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: Sequence[Sequence[Example]]) -> dict:
        built = []
        seq_no = 0
        example_ids = torch.tensor([ex.meta.get("id", -1) for row in rows for ex in row], dtype=torch.long)
        for row in rows:
            if not row:
                raise DataError("packed batch has an empty row")
            ids_r, lab_r, pos_r, idx_r = [], [], [], []
            for ex in row:
                for ids, lab in zip(ex.input_ids, ex.labels):
                    ids_r += ids
                    lab_r += [IGNORE_INDEX, *lab[1:]]
                    pos_r += range(len(ids))
                    idx_r += [seq_no] * len(ids)
                    seq_no += 1
            built.append((ids_r, lab_r, pos_r, idx_r))
        T = max(len(r[0]) for r in built)
        if self.multiple:
            T = -(-T // self.multiple) * self.multiple
        B = len(built)
        input_ids = torch.full((B, T), self.pad, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        seq_index = torch.full((B, T), -1, dtype=torch.long)
        position_ids = torch.zeros((B, T), dtype=torch.long)
        real = 0
        for i, (ids_r, lab_r, pos_r, idx_r) in enumerate(built):
            n = len(ids_r)
            real += n
            input_ids[i, :n] = torch.tensor(ids_r)
            labels[i, :n] = torch.tensor(lab_r)
            position_ids[i, :n] = torch.tensor(pos_r)
            seq_index[i, :n] = torch.tensor(idx_r)
            position_ids[i, n:] = torch.arange(T - n)  # the padding tail: its own document
        return with_example_labels([ex for row in rows for ex in row], {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "sequence_index": seq_index,
            "example_ids": example_ids,
            "num_sequences": seq_no,
            "num_tokens": real,
        })
