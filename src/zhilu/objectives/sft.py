"""Supervised fine-tuning: next-token cross-entropy on assistant tokens only."""

from __future__ import annotations

from zhilu.objectives.base import Objective
from zhilu.objectives.logps import label_logps


class SFT(Objective):
    """Token-mean negative log-likelihood of the labelled (assistant) tokens of the batch.

    Args:
        loss_impl: ``auto`` (chunked on CUDA, plain on CPU), ``torch``, ``chunked`` or ``liger``.
        chunk_size: tokens per LM-head chunk for ``chunked``.
    """

    data_kind = "sft"

    def __init__(self, loss_impl: str = "auto", chunk_size: int = 2048) -> None:
        self.loss_impl = loss_impl
        self.chunk_size = chunk_size

    def loss(self, module, batch, stage):
        lp = label_logps(module.model, batch, self.loss_impl, self.chunk_size)
        n = lp.token_logps.numel()
        loss = -lp.token_logps.sum() / max(n, 1)
        return loss, {"loss": loss.detach(), "label_tokens": float(n)}
