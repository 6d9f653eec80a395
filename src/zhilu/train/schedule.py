"""Learning-rate schedules as LambdaLR multipliers (per-group base lrs are kept, e.g. LoRA+).

Warmup convention (differs from Hugging Face's ``get_*_schedule_with_warmup``): optimizer step ``k``
(0-based) of a ``w``-step warmup uses ``lr * (k + 1) / w``, so the first step already trains at
``lr / w`` and step ``w - 1`` reaches the full ``lr``. HF's multiplier is ``k / w``: its first step
runs at lr 0, where AdamW updates its moment estimates but moves no weight, a step of compute spent on
nothing (and a ``w = 1`` warmup is a lost step). With ``warmup_steps=0`` both start at the full lr.
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR

from zhilu.errors import ConfigError


def warmup_lambda(total_steps: int, warmup_steps: int, kind: str = "cosine", min_lr_ratio: float = 0.0):
    if kind not in ("cosine", "linear", "constant"):
        raise ConfigError(f"scheduler.kind={kind!r}: expected cosine, linear or constant")

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return f


def warmup_schedule(
    optimizer,
    total_steps: int,
    kind: str = "cosine",
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.0,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """Linear warmup (``warmup_steps``, or ``warmup_ratio`` of the run), then cosine/linear decay."""
    warm = warmup_steps if warmup_steps is not None else int(round(warmup_ratio * total_steps))
    return LambdaLR(optimizer, warmup_lambda(total_steps, warm, kind, min_lr_ratio))
