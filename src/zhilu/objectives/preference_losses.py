"""Preference losses: one pure function per ``objective.loss_type``, on per-pair scores.

Every function takes the scores of the chosen and the rejected answers of ``P`` pairs (tensors
``[P]``) and returns the per-pair losses ``[P]``. For the reference-based losses the scores are
log-ratios ``log pi(y|x) - log pi_ref(y|x)``; for the reference-free ones they are the policy's
log-probabilities. Sums over answer tokens or means (length-normalised) are chosen by the
objective, following each paper (see :data:`LOSS_TYPES`).

- ``sigmoid`` -- DPO, Rafailov et al. 2023, https://arxiv.org/abs/2305.18290; with
  ``label_smoothing`` it is conservative DPO (cDPO), Mitchell 2023, "A note on DPO with noisy
  preferences", https://ericmitchell.ai/cdpo.pdf
- ``ipo`` -- Azar et al. 2023, https://arxiv.org/abs/2310.12036 (``beta`` is the paper's tau)
- ``hinge`` -- SLiC, Zhao et al. 2023, https://arxiv.org/abs/2305.10425, on reference-normalised
  likelihoods as in RSO, Liu et al. 2023, https://arxiv.org/abs/2309.06657 (``beta = 1/delta``)
- ``simpo`` -- Meng et al. 2024, https://arxiv.org/abs/2405.14734 (reference-free, length-normalised)
- ``orpo`` -- Hong et al. 2024, https://arxiv.org/abs/2403.07691 (reference-free odds ratio;
  ``beta`` is the paper's lambda and the objective adds the paper's SFT term on the chosen answer)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def dpo_sigmoid(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """``-(1-e) log s(beta h) - e log s(-beta h)`` with ``h`` the log-ratio margin (``e = 0``: plain DPO)."""
    logits = beta * (chosen_logratios - rejected_logratios)
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """``(h - 1/(2 tau))^2``: regresses the log-ratio margin onto a fixed target (tau = ``beta``)."""
    h = chosen_logratios - rejected_logratios
    return (h - 1.0 / (2.0 * beta)) ** 2


def hinge(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """``max(0, 1 - beta h)``: SLiC's calibration hinge with margin ``1/beta`` on the log-ratio margin."""
    return torch.relu(1.0 - beta * (chosen_logratios - rejected_logratios))


def simpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``-log s(beta (c - r) - gamma)`` on length-normalised log-probs (``gamma``: target margin)."""
    logits = beta * (chosen_logps - rejected_logps) - gamma
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and far from it (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """``-beta log s(log odds(c) - log odds(r))``, ``odds = p / (1 - p)``, ``p = exp(mean log-prob)``.

    Mean log-probs are capped just below 0 so a certain answer (``p = 1``) gives a finite loss.
    """
    c = chosen_logps.clamp(max=-1e-6)
    r = rejected_logps.clamp(max=-1e-6)
    log_odds = (c - log1mexp(c)) - (r - log1mexp(r))
    return -beta * F.logsigmoid(log_odds)


@dataclass(frozen=True)
class PreferenceLoss:
    """How the objective feeds a loss function.

    Attributes:
        fn: the loss function (scores in, per-pair losses out).
        uses_reference: scores are log-ratios against the reference model (else policy log-probs).
        length_normalised: scores use the mean log-prob over answer tokens (else the sum).
        options: the objective's hyper-parameters it takes besides ``beta``.
        sft_weight: the default weight of the added NLL term on the chosen answer.
    """

    fn: Callable[..., torch.Tensor]
    uses_reference: bool
    length_normalised: bool
    options: tuple[str, ...] = ()
    sft_weight: float = 0.0


LOSS_TYPES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(dpo_sigmoid, uses_reference=True, length_normalised=False, options=("label_smoothing",)),
    "ipo": PreferenceLoss(ipo, uses_reference=True, length_normalised=True),
    "hinge": PreferenceLoss(hinge, uses_reference=True, length_normalised=False),
    "simpo": PreferenceLoss(simpo, uses_reference=False, length_normalised=True, options=("gamma", "label_smoothing")),
    "orpo": PreferenceLoss(orpo, uses_reference=False, length_normalised=True, sft_weight=1.0),
}
