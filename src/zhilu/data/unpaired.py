"""The ``unpaired`` data kind (KTO): one completion per prompt with a desirable/undesirable label.

Rows come from the ``unpaired`` format (``completion`` + ``label``) or from preference pairs (each
pair becomes one desirable row, its chosen answer, and one undesirable row, its rejected answer).
Each row is stored as one sequence, prompt then completion (labels on the completion), with
``meta["label"]`` 1.0 (desirable) or 0.0 (undesirable); the collators put the labels into the batch
as ``example_labels``.

KTO estimates its KL reference point from *mismatched* pairs in the batch (Ethayarajh et al. 2024,
https://arxiv.org/abs/2402.01306, section 4.1): :func:`with_mismatched`, the kind's batch step, gives
every example a second sequence, its own prompt with another example's completion. The completions
are rotated within the batch by the smallest shift that pairs no example with its own prompt (TRL's
``KTOTrainer`` rotates by one); a one-example batch can only pair the example with itself.
"""

from __future__ import annotations

from typing import Any, Sequence

from zhilu.data.encode import IGNORE_INDEX, ChatEncoder, Example
from zhilu.data.formats import PreferencePair, UnpairedRow
from zhilu.errors import DataError


def encode_unpaired(encoder: ChatEncoder, row: Any, what: str) -> list[Example]:
    """An ``UnpairedRow`` as one example; a ``PreferencePair`` as its desirable and undesirable examples."""
    if isinstance(row, PreferencePair):
        rows = [(UnpairedRow(row.prompt, row.chosen, True, dict(row.meta)), f"{what} (chosen)"),
                (UnpairedRow(row.prompt, row.rejected, False, dict(row.meta)), f"{what} (rejected)")]
    elif isinstance(row, UnpairedRow):
        rows = [(row, what)]
    else:
        raise DataError(f"{what}: expected an unpaired or a preference row, got {type(row).__name__}")
    out = []
    for r, where in rows:
        ex = encoder.answers(r.prompt, (r.completion,), what=where)
        if ex is not None:
            ex.meta.update(r.meta, label=1.0 if r.desirable else 0.0)
            out.append(ex)
    return out


def split_at_completion(ids: Sequence[int], labels: Sequence[int]) -> int:
    """Where the completion (the first labelled token) starts."""
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            return i
    return len(ids)


def with_mismatched(examples: Sequence[Example]) -> list[Example]:
    """Each example as ``[its sequence, its prompt + another example's completion]`` (see the module docstring)."""
    n = len(examples)
    parts = []
    for ex in examples:
        if len(ex.input_ids) != 1:
            raise DataError(f"unpaired examples hold one sequence, got {len(ex.input_ids)}")
        ids, labels = ex.input_ids[0], ex.labels[0]
        cut = split_at_completion(ids, labels)
        parts.append((list(ids[:cut]), list(ids[cut:]), list(labels[cut:])))
    prompts = [tuple(p) for p, _, _ in parts]
    shift = next((k for k in range(1, n) if all(prompts[i] != prompts[(i + k) % n] for i in range(n))), 1 % max(n, 1))
    out = []
    for i, ex in enumerate(examples):
        prompt = parts[i][0]
        _, comp, comp_labels = parts[(i + shift) % n] if n else parts[i]
        out.append(Example([list(ex.input_ids[0]), prompt + comp],
                           [list(ex.labels[0]), [IGNORE_INDEX] * len(prompt) + comp_labels], dict(ex.meta)))
    return out
