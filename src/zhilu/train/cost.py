"""Training cost that stays comparable between the jobs of one sweep (``callbacks=ablation``).

The model card compares methods on training time and GPU memory. Two things blur that in a Hydra
multirun on a shared machine, and this callback records figures that resist both:

- the jobs run one after another in **one process**: a process-wide peak (``ru_maxrss``) carries
  the largest earlier job, and memory left over by earlier jobs raises every later baseline. So the
  peak is reset at fit start (CUDA peak stats; on Linux the RSS high-water mark through
  ``/proc/self/clear_refs``) and the peak *above the fit-start level* is recorded too
  (``train_memory_over_start_mb``: gradients, optimizer state and activations, the part a PEFT
  method saves; the loaded model itself is in the baseline);
- other processes compete for the CPU: wall time per step then measures the machine's load more
  than the method. ``train_cpu_time_s`` sums this process's CPU time (all threads) over the
  training steps, which load from other processes barely changes.

Written into ``metrics.json`` (via :class:`~zhilu.train.callbacks.RunMetrics` when present) at the
end of training: ``train_peak_memory_mb``, ``train_memory_over_start_mb``, ``train_cpu_time_s``,
``train_tokens_per_cpu_s``, and ``train_state_mb`` (weights + gradients + optimizer state,
counted from the tensors after each step, the largest kept: what a PEFT method saves, free of allocator and activation noise; its
parts as ``train_state_{weights,grads,optimizer}_mb``).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from zhilu.utils.io import write_json_atomic
from zhilu.utils.memory import peak_memory_mb, training_state_mb

log = logging.getLogger(__name__)
MB = 2**20


class TrainCost(L.Callback):
    """Args:
        output_dir: where ``metrics.json`` lives when no ``RunMetrics`` callback is present.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir
        self.results: dict[str, Any] = {}
        self._start_mb: float | None = None
        self._rss_reset = False
        self._cpu = 0.0
        self._tokens = 0
        self._t = 0.0
        self._state: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        gc.collect()  # what earlier jobs of this process left behind, before the baseline
        self._state = {}
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._start_mb = torch.cuda.memory_allocated(device) / MB
        else:
            self._rss_reset = reset_peak_rss()
            self._start_mb = current_rss_mb() if self._rss_reset else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._cpu += time.process_time() - self._t
        self._tokens += int(batch.get("num_tokens", 0))
        state = training_state_mb(pl_module, trainer.optimizers)  # the largest over steps (BAdam's varies)
        if state["train_state_mb"] > self._state.get("train_state_mb", -1.0):
            self._state = state

    def on_train_end(self, trainer, pl_module) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / MB
        else:
            peak = peak_rss_mb() if self._rss_reset else None
        if peak is None:  # no resettable peak here: the process-wide figure
            peak = peak_memory_mb(device)["peak_memory_mb"]
        self.results.update(train_peak_memory_mb=peak, train_cpu_time_s=self._cpu,
                            train_tokens_per_cpu_s=self._tokens / self._cpu if self._cpu else 0.0)
        if self._start_mb is not None:
            self.results["train_memory_over_start_mb"] = max(0.0, peak - self._start_mb)
        self.results.update(self._state or training_state_mb(pl_module, trainer.optimizers))
        merge_metrics(trainer, self.results, self.output_dir)


def merge_metrics(trainer, results: dict[str, Any], output_dir: str | None) -> None:
    """Add ``results`` to the run's metrics: through ``RunMetrics`` if present, else into the file."""
    from zhilu.train.callbacks import RunMetrics

    run_metrics = next((c for c in trainer.callbacks if isinstance(c, RunMetrics)), None)
    if run_metrics is not None:
        run_metrics.update(trainer, **results)
    elif output_dir and trainer.is_global_zero:
        path = Path(output_dir) / "metrics.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        data.update(results)
        write_json_atomic(path, data)


def reset_peak_rss() -> bool:
    """Linux: set this process's RSS high-water mark to its current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        return True
    except OSError:
        return False


def _proc_status_mb(field: str) -> float | None:
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb() -> float | None:
    """This process's RSS high-water mark (``VmHWM``) in MiB, or ``None`` off Linux."""
    return _proc_status_mb("VmHWM")


def current_rss_mb() -> float | None:
    """This process's resident set size (``VmRSS``) in MiB, or ``None`` off Linux."""
    return _proc_status_mb("VmRSS")
