"""Supervised fine-tuning: next-token cross-entropy on assistant tokens only."""

from __future__ import annotations

from zhilu.objectives.base import Objective
from zhilu.objectives.logps import DEFAULT_LOGITS_BUDGET_MB, budget_chunk, label_logps


class SFT(Objective):
    """Token-mean negative log-likelihood of the labelled (assistant) tokens of the batch.

    Args:
        loss_impl: ``auto`` (= ``chunked``), ``torch`` (plain), ``chunked`` or ``liger``.
        logits_budget_mb: MiB of fp32 logits per LM-head chunk for ``chunked``.
        chunk_size: tokens per chunk instead of the budget (``None``: from the budget).
    """

    data_kind = "sft"

    def __init__(self, loss_impl: str = "auto", logits_budget_mb: float = DEFAULT_LOGITS_BUDGET_MB,
                 chunk_size: int | None = None) -> None:
        budget_chunk(1, logits_budget_mb)  # validate at instantiation
        self.loss_impl = loss_impl
        self.logits_budget_mb = logits_budget_mb
        self.chunk_size = chunk_size

    def loss(self, module, batch, stage):
        lp = label_logps(module.model, batch, self.loss_impl, self.chunk_size, self.logits_budget_mb)
        n = lp.token_logps.numel()
        loss = -lp.token_logps.sum() / max(n, 1)
        return loss, {"loss": loss.detach(), "label_tokens": float(n)}
