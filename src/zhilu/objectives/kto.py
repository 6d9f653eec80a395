"""KTO: alignment from unpaired desirable/undesirable completions against a reference policy.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
https://arxiv.org/abs/2402.01306 (eq. 7-8; the same objective as TRL's ``KTOTrainer`` and
LLaMA-Factory's ``stage: kto``). Each example is one prompt ``x`` with one completion ``y``
labelled desirable or undesirable. With the implied reward ``r = log pi(y|x) - log pi_ref(y|x)``
(sums over the completion's tokens) and the reference point ``z0``:

    desirable:    lambda_D * (1 - sigmoid(beta * (r - z0)))
    undesirable:  lambda_U * (1 - sigmoid(beta * (z0 - r)))

and the loss is the mean over the batch's examples. ``z0`` estimates ``KL(pi || pi_ref)`` from
*mismatched* pairs: each prompt ``x_i`` is also scored with another example's completion ``y_j``
(drawn per batch by :func:`zhilu.data.unpaired.with_mismatched`), and ``z0 = max(0, mean_i (log pi(y_j|x_i) -
log pi_ref(y_j|x_i)))`` over the batch (all ranks); it is not back-propagated through (the paper
and TRL detach it). The reference is the shared :class:`~zhilu.objectives.reference.ReferencePolicy`,
scored online (the adapter's stated reference: the adapter switched off, or a frozen copy): the
mismatched pairs change with every batch, so their reference log-probs cannot be precomputed.

Data: ``data.kind=unpaired`` (``conf/data/finance_kto.yaml``): rows with ``completion`` and
``label``, or preference pairs, each pair giving one desirable and one undesirable row. Sequences
``2i`` and ``2i + 1`` of a batch are example ``i``'s completion and its mismatched completion (the
``unpaired`` kind's batch step adds the second).

Logged (``train/``, ``val/``): ``rewards/chosen`` and ``rewards/rejected`` (``beta * r`` of the
desirable and the undesirable completions), ``rewards/margins`` (their difference, when the batch
has both), ``kl`` (``z0``), ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

from typing import Any

import torch


from zhilu.errors import ConfigError, DataError
from zhilu.objectives.base import Objective
from zhilu.objectives.logps import DEFAULT_LOGITS_BUDGET_MB, budget_chunk
from zhilu.objectives.reference import CACHE_NAME, ReferencePolicy, ReferenceScoring


# ----------------------------------------------------------------------------- the loss
def kl_baseline(kl_logratios: torch.Tensor) -> torch.Tensor:
    """``z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))`` over mismatched pairs, detached (a scalar)."""
    if kl_logratios.numel() == 0:
        return kl_logratios.new_zeros(())
    return kl_logratios.detach().mean().clamp(min=0)


def kto_losses(
    logratios: torch.Tensor,
    desirable: torch.Tensor,
    z0: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example losses ``[N]`` from the log-ratios ``[N]`` and the labels ``desirable`` ``[N]`` (bool)."""
    z0 = torch.as_tensor(z0, dtype=logratios.dtype, device=logratios.device)
    desirable = desirable.to(torch.bool)
    good = desirable_weight * torch.sigmoid(-beta * (logratios - z0))  # 1 - s(t) = s(-t)
    bad = undesirable_weight * torch.sigmoid(-beta * (z0 - logratios))
    return torch.where(desirable, good, bad)


# ------------------------------------------------------------------------- the objective
class KTO(ReferenceScoring, Objective):
    """KTO against the reference policy (the adapter switched off, or a frozen copy).

    Args:
        beta: the reward scale (paper default 0.1).
        desirable_weight, undesirable_weight: ``lambda_D`` and ``lambda_U``; the paper advises
            ``lambda_D n_D / (lambda_U n_U)`` in ``[1, 4/3]`` (``n``: example counts).
        loss_impl, logits_budget_mb, chunk_size: how label log-probs are computed (see :func:`label_logps`).
    """

    data_kind = "unpaired"
    needs_reference = True

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        loss_impl: str = "auto",
        logits_budget_mb: float = DEFAULT_LOGITS_BUDGET_MB,
        chunk_size: int | None = None,
    ) -> None:
        budget_chunk(1, logits_budget_mb)  # validate at instantiation
        if not beta > 0:
            raise ConfigError(f"objective.beta={beta}: must be positive")
        for key, value in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
            if not value > 0:
                raise ConfigError(f"objective.{key}={value}: must be positive")
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)
        self.loss_impl = loss_impl
        self.chunk_size = chunk_size
        self.logits_budget_mb = logits_budget_mb
        self.reference: ReferencePolicy | None = None  # built in setup()

    def setup(self, module) -> None:
        if module.adapter.reference == "precomputed":
            raise ConfigError(f"objective=kto with adapter={module.adapter.name}: the adapter's reference can only be "
                              "precomputed, and KTO's mismatched pairs are drawn per batch (use another adapter)")
        self.reference = ReferencePolicy(module.adapter.reference, self._logps)
        self.reference.setup(module)

    @property
    def name(self) -> str:
        return "kto"

    def unpaired_loss(self, sums: torch.Tensor, ref_sums: torch.Tensor, desirable: torch.Tensor,
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Loss and logs from the policy's and the reference's per-sequence sums ``[2E]``
        (completion, mismatched completion interleaved) and the labels ``[E]``."""
        if sums.shape[0] % 2 or sums.shape[0] // 2 != desirable.shape[0]:
            raise DataError(f"objective=kto: {sums.shape[0]} sequences for {desirable.shape[0]} labelled examples "
                            "(expected a completion and a mismatched completion per example)")
        logratios = sums - ref_sums.to(sums.dtype)
        r, kl = logratios[0::2], logratios[1::2]
        z0 = self._all_ranks_mean(kl)
        desirable = desirable.to(device=sums.device).bool()
        loss = kto_losses(r, desirable, z0, self.beta, self.desirable_weight, self.undesirable_weight).mean()
        rewards = self.beta * r.detach()
        policy = sums[0::2].detach()
        logs: dict[str, Any] = {"kl": z0}
        if desirable.any():
            logs["rewards/chosen"] = rewards[desirable].mean()
            logs["logps/chosen"] = policy[desirable].mean()
        if (~desirable).any():
            logs["rewards/rejected"] = rewards[~desirable].mean()
            logs["logps/rejected"] = policy[~desirable].mean()
        if desirable.any() and (~desirable).any():
            logs["rewards/margins"] = logs["rewards/chosen"] - logs["rewards/rejected"]
        logs["loss"] = loss.detach()
        return loss, logs

    @staticmethod
    def _all_ranks_mean(kl: torch.Tensor) -> torch.Tensor:
        """``z0`` over the mismatched pairs of every rank's batch (as TRL gathers them), clamped at 0."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return kl_baseline(kl)
        total = torch.stack([kl.detach().sum(), kl.new_tensor(float(kl.numel()))])
        torch.distributed.all_reduce(total)
        return (total[0] / total[1].clamp(min=1)).clamp(min=0)

    def loss(self, module, batch: dict, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        if "example_labels" not in batch:
            raise DataError("objective=kto needs unpaired data (data.kind=unpaired, e.g. data=finance_kto)")
        if self.reference is None:
            raise ConfigError("objective=kto: setup(module) was not called, so there is no reference")
        ref_sums, ref_counts = self.reference(module, batch, stage)  # first: no policy graph held yet
        sums, counts = self._logps(module.model, batch)
        if not torch.equal(ref_counts.to(counts.dtype), counts):
            raise DataError(f"objective=kto: reference and policy completion lengths differ in a {stage} batch "
                            f"(stale {CACHE_NAME}? delete it to recompute)")
        return self.unpaired_loss(sums, ref_sums, batch["example_labels"])
