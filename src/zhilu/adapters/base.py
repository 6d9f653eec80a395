"""The adapter interface: which parameters train, their optimizer groups, the reference, export.

An adapter is a small object chosen by ``conf/adapter/*.yaml``; the LightningModule calls these
methods and nothing else, so it holds no per-adapter branches.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

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


class Adapter:
    """Base class. Subclasses set up the trainable parameters in :meth:`apply`."""

    name = "adapter"
    #: True when the frozen base is reachable by switching the adapter off (no copy needed)
    has_disabled_reference = False

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        return decay_groups(model.named_parameters(), lr, weight_decay)

    def build_optimizer(self, model: nn.Module, optimizer_factory: Callable, lr: float, weight_decay: float):
        return optimizer_factory(self.param_groups(model, lr, weight_decay))

    def disabled(self, model: nn.Module) -> ContextManager:
        """A context in which ``model`` computes the base (reference) model's function."""
        raise NotImplementedError(f"adapter {self.name} has no disabled reference; use a frozen copy")

    def on_train_batch_start(self, module, batch_idx: int) -> None:
        pass

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


@contextlib.contextmanager
def nullcontext_model(model):
    yield model
