"""Full fine-tuning: every parameter trains, except those matching ``freeze`` patterns."""

from __future__ import annotations

import fnmatch
import logging
from typing import Sequence

from torch import nn

from zhilu.adapters.base import Adapter
from zhilu.errors import ConfigError

log = logging.getLogger(__name__)


class FullFineTune(Adapter):
    """Args: freeze: glob patterns of parameter names to keep frozen (e.g. ``model.embed_tokens.*``);
    name, reference, shardable, adapter_on_base: the stated abilities (:class:`~zhilu.adapters.base.Adapter`)."""

    name = "full"

    def __init__(self, freeze: Sequence[str] = (), **abilities) -> None:
        self.state(**abilities)
        self.freeze = list(freeze or [])

    def apply(self, model: nn.Module) -> nn.Module:
        matched = {pat: 0 for pat in self.freeze}
        for name, p in model.named_parameters():
            hit = [pat for pat in self.freeze if fnmatch.fnmatch(name, pat)]
            for pat in hit:
                matched[pat] += 1
            p.requires_grad_(not hit)
        unused = [pat for pat, n in matched.items() if n == 0]
        if unused:
            raise ConfigError(f"adapter.freeze: pattern(s) {unused} match no parameter")
        return model
