"""Using a built model: unwrap it, load it on a device, pad token rows, encode generation prompts.

Written once here and used by training callbacks, evaluation, chat and synthesis.
"""

from __future__ import annotations

from typing import Sequence

import torch


def base_causal_lm(model):
    """The ``*ForCausalLM`` under a peft wrapper (its layers carry the live adapters)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def pick_device(choice: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; otherwise ``choice`` itself."""
    if str(choice) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def load_model(builder, device: str | torch.device = "auto"):
    """Tokenizer and model from a :class:`~zhilu.model.ModelBuilder`, on ``device``, in eval mode.

    Attention is picked for that device; returns ``(model, tokenizer)``.
    """
    dev = pick_device(device)
    tokenizer = builder.load_tokenizer()
    model = builder.build(tokenizer, device_type=dev.type)
    return model.to(dev).eval(), tokenizer


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device=None, side: str = "right"):
    """Token rows as ``(ids, attention_mask)`` ``[B, longest]`` tensors, padded on ``side`` (``right`` or
    ``left``: generation wants the prompts' ends aligned)."""
    if side not in ("right", "left"):
        raise ValueError(f"side={side!r}: expected right or left")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


class GenerationPrompt:
    """Token ids that ask the model for the assistant's next turn.

    The Llama-3 chat template of ``messages`` (as training encodes it) ending in the assistant header,
    then ``prefix`` (e.g. ``答案：``) as the start of the answer. ``budget`` caps the length: a longer
    prompt keeps its BOS and its end (the question and the headers) and counts in ``truncated``.
    """

    def __init__(self, tokenizer) -> None:
        from zhilu.data.encode import ChatEncoder

        self.encoder = ChatEncoder(tokenizer, max_length=10**9)
        self.truncated = 0

    def __call__(self, messages: Sequence[dict], prefix: str = "", budget: int | None = None) -> list[int]:
        ids = self.encoder.prompt(messages) + self.encoder.text(prefix)
        if budget is not None and len(ids) > budget:
            self.truncated += 1
            budget = max(budget, 2)
            ids = [ids[0], *ids[len(ids) - budget + 1:]]
        return ids
