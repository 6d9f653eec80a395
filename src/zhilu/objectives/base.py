"""The objective interface: what the one LightningModule asks of SFT, DPO and the rest."""

from __future__ import annotations

from typing import Any

import torch


class Objective:
    """A training objective; small, and not a subclass of the trainer.

    What it needs is declared, so config checks (:mod:`zhilu.train.compat`, ``train.run.build``)
    read it instead of probing:

    - ``data_kind``: which data it reads (a data module ``kind``: ``sft``, ``preference``, ``unpaired``);
    - ``needs_reference``: whether ``loss`` compares the policy with a reference policy
      (:class:`zhilu.objectives.reference.ReferencePolicy`, built in ``setup``);
    - ``precompute_ref``: whether that reference is scored once at fit start and cached.

    ``setup(module)`` runs once the model (with its adapter) exists; ``on_fit_start(module)`` once
    the trainer has placed it; ``loss(module, batch, stage)`` returns the scalar loss and a dict of
    scalars to log under ``{stage}/``.
    """

    data_kind = "sft"
    needs_reference = False
    precompute_ref = False

    @property
    def name(self) -> str:
        """The objective's name in messages and ``metrics.json`` (its class name, lower case)."""
        return type(self).__name__.lower()

    def setup(self, module) -> None:  # pragma: no cover - default does nothing
        pass

    def on_fit_start(self, module) -> None:  # pragma: no cover - default does nothing
        pass

    def loss(self, module, batch: dict, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError
