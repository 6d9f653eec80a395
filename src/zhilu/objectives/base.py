"""The objective interface: what the one LightningModule asks of SFT, DPO and the rest."""

from __future__ import annotations

from typing import Any

import torch


class Objective:
    """A training objective; small, and not a subclass of the trainer.

    ``data_kind`` tells which data the objective reads (``sft`` or ``preference``).
    ``setup(module)`` runs once the model (with its adapter) exists; ``loss(module, batch,
    stage)`` returns the scalar loss and a dict of scalars to log under ``{stage}/``.
    """

    data_kind = "sft"

    def setup(self, module) -> None:  # pragma: no cover - default does nothing
        pass

    def on_fit_start(self, module) -> None:  # pragma: no cover - default does nothing
        pass

    def loss(self, module, batch: dict, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError
