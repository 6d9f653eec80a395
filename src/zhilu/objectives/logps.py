"""Per-token log-probabilities of the labels, computed only where there are labels.

Objectives never ask the model for a ``[B, T, vocab]`` logits tensor: they run the decoder,
keep the hidden states at labelled positions, and apply the LM head there, optionally in
chunks that are recomputed in the backward pass (so long sequences with a 128k vocabulary do
not hold every logit in memory). The sequence sums are taken with ``sequence_index``, so the
same code serves padded and packed batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from zhilu.data.encode import IGNORE_INDEX
from zhilu.errors import ConfigError

LOSS_IMPLS = ("auto", "torch", "chunked", "liger")


def base_causal_lm(model):
    """The ``*ForCausalLM`` under a peft wrapper (its layers carry the live adapters)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_hidden(model, batch: dict) -> torch.Tensor:
    lm = base_causal_lm(model)
    out = lm.model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return out.last_hidden_state


@dataclass
class LabelLogps:
    """Log-probs of labelled tokens, flat, with their sequence ids; plus per-sequence sums/counts."""

    token_logps: torch.Tensor  # [N]
    token_seq: torch.Tensor  # [N]
    seq_logps: torch.Tensor  # [S] sum over the sequence's labelled tokens
    seq_counts: torch.Tensor  # [S]

    @property
    def seq_mean_logps(self) -> torch.Tensor:
        return self.seq_logps / self.seq_counts.clamp(min=1)


def _head_logps(head, h: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    logits = head(h).float()
    return -F.cross_entropy(logits, tgt, reduction="none")


def label_logps(model, batch: dict, impl: str = "auto", chunk_size: int = 2048) -> LabelLogps:
    if impl not in LOSS_IMPLS:
        raise ConfigError(f"objective.loss_impl={impl!r}: expected one of {', '.join(LOSS_IMPLS)}")
    hidden = decoder_hidden(model, batch)
    head = base_causal_lm(model).lm_head
    labels = batch["labels"]
    tgt = labels[:, 1:]
    mask = tgt != IGNORE_INDEX
    h = hidden[:, :-1][mask]
    t = tgt[mask]
    seq = batch["sequence_index"][:, 1:][mask]
    if impl == "auto":
        impl = "chunked" if hidden.is_cuda else "torch"
    if impl == "liger":
        logps = _liger_logps(head, h, t)
    elif impl == "chunked" and h.shape[0] > chunk_size:
        parts = []
        for s in range(0, h.shape[0], chunk_size):
            hs, ts = h[s : s + chunk_size], t[s : s + chunk_size]
            if torch.is_grad_enabled():
                parts.append(checkpoint(_head_logps, head, hs, ts, use_reentrant=False))
            else:
                parts.append(_head_logps(head, hs, ts))
        logps = torch.cat(parts)
    else:
        logps = _head_logps(head, h, t)
    S = int(batch["num_sequences"])
    sums = torch.zeros(S, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)
    counts = torch.zeros(S, dtype=logps.dtype, device=logps.device).index_add(0, seq, torch.ones_like(logps))
    return LabelLogps(logps, seq, sums, counts)


def _liger_logps(head, h, t):
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        raise ConfigError(
            "objective.loss_impl=liger needs liger-kernel (CUDA): pip install -r requirements-gpu.txt"
        ) from None
    if getattr(head, "bias", None) is not None or not isinstance(head, torch.nn.Linear):
        raise ConfigError("objective.loss_impl=liger needs a plain nn.Linear LM head (no adapter on lm_head)")
    loss = liger_fused_linear_cross_entropy(h, head.weight, t, reduction="none")
    return -loss.float()
