"""OmegaConf resolvers used by the configs (registered on import of ``zhilu.cli``)."""

from __future__ import annotations

from omegaconf import OmegaConf


def auto_precision() -> str:
    """``bf16-mixed`` on a CUDA device that supports bf16, ``32-true`` otherwise (CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def register() -> None:
    if not OmegaConf.has_resolver("zhilu.auto_precision"):
        OmegaConf.register_new_resolver("zhilu.auto_precision", auto_precision)


register()
