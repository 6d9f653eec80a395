"""The adapter interface: which parameters train, their optimizer groups, the reference, export.

An adapter is a small object chosen by ``conf/adapter/*.yaml``; the LightningModule calls these
methods and nothing else, so it holds no per-adapter branches. Its name and abilities are stated
in that config (and checked by the class against what it can do), so nothing tests names:

- ``name``: what ``metrics.json``, the logs and ``python -m zhilu.report`` call it;
- ``reference``: how an objective gets the reference policy (:mod:`zhilu.objectives.reference`):
  ``disabled`` (the adapter switched off is the starting model), ``copy`` (a frozen copy) or
  ``precomputed`` (only log-probs scored by the policy at fit start);
- ``shardable``: whether DDP/FSDP/ZeRO can split its training across devices;
- ``adapter_on_base``: whether ``export/adapter/`` applies to the original base model as saved
  (``false``: the export converts it; ``null`` for adapters that export only a full model).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

from zhilu.errors import ConfigError
from zhilu.model.export import link_into, save_hf_model  # noqa: F401 - the adapters' export helpers

log = logging.getLogger(__name__)


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases and other vectors get no weight decay (decoupled AdamW convention)."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


REFERENCES = ("disabled", "copy", "precomputed")


class Adapter:
    """Base class. Subclasses set up the trainable parameters in :meth:`apply`.

    The class attributes are the defaults of the stated abilities (a config that states nothing
    gets them); :meth:`state` takes a config's statements and refuses those the class cannot honour.
    """

    name = "adapter"
    reference = "copy"
    shardable = True
    adapter_on_base: bool | None = None
    #: the references this class can give
    references: tuple[str, ...] = ("copy", "precomputed")
    #: why the adapter cannot be sharded (the refusal's reason, when ``shardable`` is false)
    unshardable_reason = ""

    def state(self, name: str | None = None, reference: str | None = None, shardable: bool | None = None,
              adapter_on_base: bool | None = None) -> None:
        """Record the config's ``name`` and abilities (``None``: the class default)."""
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"adapter.name={name!r}: must be a non-empty string")
            self.name = name
        if reference is not None:
            if reference not in REFERENCES:
                raise ConfigError(f"adapter.reference={reference!r}: expected one of {', '.join(REFERENCES)}")
            if reference not in self.references:
                raise ConfigError(
                    f"adapter.reference={reference}: adapter={self.name} can give only "
                    f"{' or '.join(self.references)} ({self.reference_note()})"
                )
            self.reference = reference
        if shardable is not None:
            if shardable and not type(self).shardable:
                raise ConfigError(f"adapter.shardable=true: adapter={self.name} cannot be sharded ({self.unshardable_reason})")
            self.shardable = bool(shardable)
        if adapter_on_base is not None and adapter_on_base != self.adapter_on_base:
            raise ConfigError(
                f"adapter.adapter_on_base={adapter_on_base}: adapter={self.name} "
                + ("exports no separate adapter" if self.adapter_on_base is None else
                   "saves an adapter that applies to the original base" if self.adapter_on_base else
                   "trains on a changed base, so its export converts the adapter (adapter_on_base: false)")
            )

    def reference_note(self) -> str:
        """Why only some references are possible (for the refusal of another)."""
        return "it trains the base weights: there is no adapter to switch off"

    @property
    def has_disabled_reference(self) -> bool:
        """True when the starting model is the adapter switched off (no copy needed)."""
        return self.reference == "disabled"

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        return decay_groups(model.named_parameters(), lr, weight_decay)

    def build_optimizer(self, model: nn.Module, optimizer_factory: Callable, lr: float, weight_decay: float):
        return optimizer_factory(self.param_groups(model, lr, weight_decay))

    def disabled(self, model: nn.Module) -> ContextManager:
        """A context in which ``model`` computes the starting (reference) model's function."""
        raise ConfigError(f"adapter={self.name} has no disabled reference (adapter.reference={self.reference})")

    def checkpoint_keys(self, model: nn.Module) -> set[str] | None:
        """Parameter names a Lightning checkpoint must hold; ``None`` = the whole state dict."""
        return None

    def base_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full-model weights in Hugging Face names (adapters merged)."""
        return model.state_dict()

    # --------------------------------------------------------------- export
    def export(self, model: nn.Module, tokenizer, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``out_dir/merged`` (a full HF model + tokenizer, weights in ``dtype``); return it."""
        out = Path(out_dir)
        merged = out / "merged"
        save_hf_model(model, merged, tokenizer, dtype=dtype)
        link_into(merged, out)
        return merged


