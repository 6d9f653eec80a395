"""Callbacks: throughput and run metrics (``metrics.json``), and the Hugging Face export."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from zhilu.utils.io import write_json_atomic
from zhilu.utils.memory import peak_memory_mb, reset_peak_memory

log = logging.getLogger(__name__)


class RunMetrics(L.Callback):
    """Logs ``train/tokens_per_s`` and writes ``metrics.json`` (losses, speed, memory, sizes).

    ``metrics.json`` is rewritten at every validation and at the end, atomically, so a crash
    leaves the last complete record.
    """

    def __init__(self, output_dir: str, log_every_n_steps: int = 10) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.log_every = max(1, log_every_n_steps)
        self.metrics: dict[str, Any] = {}
        self._t0 = None
        self._window_t = None
        self._window_tokens = 0
        self.tokens = 0
        self.train_time = 0.0
        self._step_t = None

    def on_fit_start(self, trainer, pl_module) -> None:
        reset_peak_memory()
        self._t0 = time.perf_counter()
        trainable, total = pl_module.param_counts
        self.metrics.update({"trainable_params": trainable, "total_params": total,
                             "adapter": pl_module.adapter.name,
                             "objective": type(pl_module.objective).__name__.lower(),
                             "model": pl_module.builder.name, "status": "running"})
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and getattr(dm, "stats", None):
            self.metrics["data"] = dict(dm.stats)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._window_t is None:
            self._window_t = time.perf_counter()
        self._step_t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = int(batch.get("num_tokens", 0))
        self.tokens += n
        self._window_tokens += n
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self.train_time += now - self._step_t
        if (batch_idx + 1) % self.log_every == 0:
            tps = self._window_tokens / max(now - self._window_t, 1e-9)
            pl_module.log("train/tokens_per_s", tps, batch_size=1)
            self._window_t, self._window_tokens = now, 0

    def _collect(self, trainer) -> None:
        for key in ("train/loss", "val/loss"):
            value = trainer.callback_metrics.get(key)
            if value is not None:
                self.metrics[key.replace("/", "_")] = float(value)
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/") and key != "val/loss":
                self.metrics[key.replace("/", "_")] = float(value)
        wall = time.perf_counter() - self._t0 if self._t0 else 0.0
        self.metrics.update({
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "wall_time_s": wall,
            "train_time_s": self.train_time,
            "train_tokens": self.tokens,
            "tokens_per_s": self.tokens / self.train_time if self.train_time else 0.0,
        })
        self.metrics.update(peak_memory_mb(trainer.strategy.root_device))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._t0 is None:
            return
        self._collect(trainer)
        if trainer.is_global_zero:
            write_json_atomic(self.path, self.metrics)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._collect(trainer)
        self.metrics["status"] = "finished"
        if trainer.is_global_zero:
            write_json_atomic(self.path, self.metrics)

    def update(self, trainer, **extra) -> None:
        """Add figures computed after fit (final validation, generation speed, scores)."""
        self.metrics.update(extra)
        if trainer.is_global_zero:
            write_json_atomic(self.path, self.metrics)


class ExportHF(L.Callback):
    """At the end of fit, write ``export/``: a merged Hugging Face model (+ ``adapter/`` for peft)."""

    def __init__(self, output_dir: str, enabled: bool = True) -> None:
        self.out = Path(output_dir) / "export"
        self.enabled = enabled

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        merged = pl_module.adapter.export(pl_module.model, pl_module.tokenizer, self.out)
        log.info("exported %s", merged)
