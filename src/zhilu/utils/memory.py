"""Peak memory: CUDA max allocated on GPU, peak resident set size on CPU."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb(device: torch.device | None = None) -> dict[str, float]:
    out = {}
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
    out["peak_memory_mb"] = out.get("peak_cuda_allocated_mb", out["peak_rss_mb"])
    return out


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def training_state_mb(module: torch.nn.Module, optimizers=()) -> dict[str, float]:
    """The bytes a method keeps for training, counted from its tensors (deterministic, any device).

    ``weights``: every parameter (frozen ones too); ``grads``: one gradient buffer per parameter
    that requires grad (for BAdam only the active block's); ``optimizer``: every tensor in the
    optimizers' state (Adam: two moments and a step per trained parameter). Activations and
    allocator slack are not included: those are what peak memory adds on top.
    """
    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    params = list(module.parameters())
    weights = sum(nbytes(p) for p in params)
    grads = sum(nbytes(p) for p in params if p.requires_grad)
    state = 0
    for opt in optimizers:
        for per_param in opt.state.values():
            state += sum(nbytes(v) for v in per_param.values() if isinstance(v, torch.Tensor))
    mb = {"weights": weights / 2**20, "grads": grads / 2**20, "optimizer": state / 2**20}
    return {**{f"train_state_{k}_mb": v for k, v in mb.items()}, "train_state_mb": sum(mb.values())}


def release_freed_heap() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; elsewhere nothing, ``False``).

    Setting up a large data set frees many arrays of a few to tens of MB (index arrays, the packing's
    sort keys). glibc raises its mmap threshold to the largest chunk freed so far (up to 32 MB), so
    after the first such free the next ones come from the heap, and what they leave stays resident
    in every rank for the whole run. Measured on 3M examples: 84 of 185 MB (``bench/data_scale.py``).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
