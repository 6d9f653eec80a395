"""Preference alignment against a reference model: DPO, cDPO, IPO, SLiC hinge, SimPO, ORPO.

- DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290 (the losses and their papers are in
  :mod:`zhilu.objectives.preference_losses`)

Chosen and rejected answers are sequences ``2i`` and ``2i + 1`` of one batch (padded or packed),
so the policy scores both in one forward pass; only answer tokens carry labels. The reference
policy (the adapter switched off, a frozen copy, or log-probs precomputed at fit start, as the
adapter states) is :class:`zhilu.objectives.reference.ReferencePolicy`; ``simpo`` and ``orpo`` are
reference-free and use none.

Logged (the module prefixes ``train/`` and ``val/``): ``rewards/chosen``, ``rewards/rejected``
(``beta`` times the score: the log-ratio for reference losses, the policy log-prob for
SimPO/ORPO), ``rewards/accuracies`` (share of pairs whose chosen reward is higher),
``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (policy log-probs as the loss uses
them: sums over answer tokens, means for the length-normalised IPO/SimPO/ORPO) and ``nll`` when
the SFT term is on.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from zhilu.errors import ConfigError, DataError
from zhilu.objectives.base import Objective
from zhilu.objectives.logps import DEFAULT_LOGITS_BUDGET_MB, budget_chunk
from zhilu.objectives.preference_losses import LOSS_TYPES
from zhilu.objectives.reference import CACHE_NAME, ReferencePolicy, ReferenceScoring

log = logging.getLogger(__name__)


class DPO(ReferenceScoring, Objective):
    """Preference optimisation of the policy against a reference (or none, for SimPO/ORPO).

    Args:
        loss_type: ``sigmoid`` (DPO), ``ipo``, ``hinge`` (SLiC), ``simpo`` or ``orpo``.
        beta: DPO's KL strength; IPO's tau; ``1/margin`` for hinge; SimPO's reward scale;
            ORPO's lambda (weight of the odds-ratio term).
        label_smoothing: assumed share of flipped labels (conservative DPO; ``sigmoid``, ``simpo``).
        sft_weight: weight of an added NLL term on the chosen answers (token mean); ``None`` =
            1 for ``orpo`` (its paper's SFT term), 0 otherwise.
        gamma: SimPO's target reward margin.
        precompute_ref: compute reference log-probs once at fit start, cache them in the run dir
            and keep no reference model while training.
        ref_batch_size: pairs per batch for the precomputation (default: ``data.eval_batch_size``).
        loss_impl, logits_budget_mb, chunk_size: how label log-probs are computed (see :func:`label_logps`).
    """

    data_kind = "preference"

    def __init__(
        self,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        sft_weight: float | None = None,
        gamma: float = 0.5,
        precompute_ref: bool = False,
        ref_batch_size: int | None = None,
        loss_impl: str = "auto",
        logits_budget_mb: float = DEFAULT_LOGITS_BUDGET_MB,
        chunk_size: int | None = None,
    ) -> None:
        budget_chunk(1, logits_budget_mb)  # validate at instantiation
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"objective.loss_type={loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
        spec = LOSS_TYPES[loss_type]
        if not beta > 0:
            raise ConfigError(f"objective.beta={beta}: must be positive")
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"objective.label_smoothing={label_smoothing}: must be in [0, 0.5)")
        if label_smoothing and "label_smoothing" not in spec.options:
            users = [k for k, s in LOSS_TYPES.items() if "label_smoothing" in s.options]
            raise ConfigError(
                f"objective.label_smoothing={label_smoothing}: loss_type={loss_type} has no label smoothing "
                f"(only {', '.join(users)})"
            )
        if sft_weight is not None and sft_weight < 0:
            raise ConfigError(f"objective.sft_weight={sft_weight}: must be >= 0")
        if ref_batch_size is not None and ref_batch_size < 1:
            raise ConfigError(f"objective.ref_batch_size={ref_batch_size}: must be a positive integer")
        self.loss_type = loss_type
        self.spec = spec
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)
        self.gamma = float(gamma)
        self.sft_weight = spec.sft_weight if sft_weight is None else float(sft_weight)
        self.needs_reference = spec.uses_reference
        self.precompute_ref = bool(precompute_ref) and spec.uses_reference
        self.ref_batch_size = ref_batch_size
        self.loss_impl = loss_impl
        self.chunk_size = chunk_size
        self.logits_budget_mb = logits_budget_mb
        self.reference: ReferencePolicy | None = None  # built in setup(), when the loss uses one

    @property
    def name(self) -> str:
        """``dpo`` for the sigmoid loss, else the loss type (``ipo``, ``hinge``, ``simpo``, ``orpo``)."""
        return "dpo" if self.loss_type == "sigmoid" else self.loss_type

    # ------------------------------------------------------------------ reference
    def setup(self, module) -> None:
        if self.needs_reference:
            self.reference = ReferencePolicy(module.adapter.reference, self._logps,
                                             precompute=self.precompute_ref, batch_size=self.ref_batch_size)
            self.reference.setup(module)

    @property
    def _reference(self) -> ReferencePolicy | None:
        return self.reference

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference copy, while one is held."""
        return self.reference.model if self.reference is not None else None

    @property
    def precompute_s(self) -> float | None:
        """Seconds spent precomputing reference log-probs here (``None``: reused, or not precomputed)."""
        return self.reference.precompute_s if self.reference is not None else None

    # ---------------------------------------------------------------------- loss
    def pair_loss(
        self, sums: torch.Tensor, counts: torch.Tensor, ref_sums: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Loss and logs from per-sequence log-prob sums ``[2P]`` (chosen, rejected interleaved).

        ``counts`` are the answer lengths (the same for policy and reference); ``ref_sums`` are the
        reference's sums, required by the reference-based losses.
        """
        if sums.shape[0] % 2:
            raise ConfigError(f"objective=dpo: a batch of {sums.shape[0]} sequences is not (chosen, rejected) pairs")
        norm = counts.clamp(min=1) if self.spec.length_normalised else torch.ones_like(counts)
        logps = sums / norm
        scores = logps
        if self.spec.uses_reference:
            if ref_sums is None:
                raise ConfigError(f"objective.loss_type={self.loss_type} needs reference log-probs")
            scores = logps - ref_sums.to(logps.dtype) / norm
        chosen, rejected = scores[0::2], scores[1::2]
        options = {k: getattr(self, k) for k in self.spec.options}
        loss = self.spec.fn(chosen, rejected, beta=self.beta, **options).mean()
        r_chosen, r_rejected = self.beta * chosen.detach(), self.beta * rejected.detach()
        logs: dict[str, Any] = {
            "rewards/chosen": r_chosen.mean(),
            "rewards/rejected": r_rejected.mean(),
            "rewards/accuracies": (r_chosen > r_rejected).float().mean(),
            "rewards/margins": (r_chosen - r_rejected).mean(),
            "logps/chosen": logps[0::2].detach().mean(),
            "logps/rejected": logps[1::2].detach().mean(),
        }
        if self.sft_weight:
            nll = -sums[0::2].sum() / counts[0::2].sum().clamp(min=1)
            loss = loss + self.sft_weight * nll
            logs["nll"] = nll.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def loss(self, module, batch: dict, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        ref_sums = None
        if self.spec.uses_reference:
            if self.reference is None:
                raise ConfigError("objective=dpo: setup(module) was not called, so there is no reference")
            ref_sums, ref_counts = self.reference(module, batch, stage)  # first: no policy graph held yet
        sums, counts = self._logps(module.model, batch)
        if ref_sums is not None and not torch.equal(ref_counts.to(counts.dtype), counts):
            raise DataError(
                f"objective=dpo: reference and policy answer lengths differ in a {stage} batch "
                f"(stale {CACHE_NAME}? delete it to recompute)"
            )
        return self.pair_loss(sums, counts, ref_sums)

