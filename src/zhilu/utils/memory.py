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
