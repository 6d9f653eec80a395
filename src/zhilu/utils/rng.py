"""Random-number state in checkpoints, so a resumed run draws the dropout masks it would have drawn.

Lightning checkpoints hold weights, optimizer, schedulers and loop counters, not the RNG state;
a run resumed from step k then trains with other LoRA-dropout masks than an uninterrupted one.
:func:`collect` returns this process's states (torch CPU, CUDA when initialised, numpy, Python),
gathered over all ranks when a process group is up (every rank calls it: Lightning builds the
checkpoint dict on every rank); :func:`restore` gives each rank its own back.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def local_states() -> dict:
    """Tensors and plain Python values only, so Lightning's ``weights_only`` checkpoint loading accepts them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    numpy_state = (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # the current device's generator
    return states


def collect() -> list[dict]:
    """One entry per rank, in rank order."""
    _, world = _dist()
    mine = local_states()
    if world == 1:
        return [mine]
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return gathered


def restore(states: list[dict] | None) -> bool:
    """Set this rank's states from a :func:`collect` list; False (and a warning) when it cannot."""
    if not states:
        return False
    rank, world = _dist()
    if len(states) != world:
        log.warning("checkpoint RNG state is for %d rank(s), this run has %d: not restored (dropout masks will "
                    "differ from an uninterrupted run)", len(states), world)
        return False
    s = states[rank]
    torch.set_rng_state(s["torch"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
    return True
