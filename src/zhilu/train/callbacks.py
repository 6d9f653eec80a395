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
    """Logs throughput and writes ``metrics.json`` (losses, speed, MFU, memory, sizes).

    Every ``log_every_n_steps``: ``train/tokens_per_s`` (all devices), ``perf/tokens_per_s_per_device``
    and, on a GPU with a known peak (or ``peak_flops`` given), ``perf/mfu``
    (see :mod:`zhilu.train.flops`). ``metrics.json`` is rewritten at every validation and at the
    end, atomically, so a crash leaves the last complete record.

    A resumed run continues the whole run's record: the tokens, training time and wall time so far
    travel in the checkpoint (this callback's state), and ``resumed_from`` lists the checkpoints.
    """

    def __init__(self, output_dir: str, log_every_n_steps: int = 10, peak_flops: float | None = None) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.log_every = max(1, log_every_n_steps)
        self.peak = peak_flops
        self._flops_args: dict | None = None
        self._window_seqs = 0
        self.metrics: dict[str, Any] = {}
        self._t0 = None
        self._window_t = None
        self._window_tokens = 0
        self.tokens = 0
        self.train_time = 0.0
        self._step_t = None
        self._wall_before = 0.0  # wall time of the run's earlier parts (before the checkpoint resumed from)
        self._resumed_from: list[str] = []

    def state_dict(self) -> dict[str, Any]:
        wall = self._wall_before + (time.perf_counter() - self._t0 if self._t0 else 0.0)
        return {"tokens": self.tokens, "train_time": self.train_time, "wall_time": wall,
                "resumed_from": list(self._resumed_from)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens = int(state.get("tokens", 0))
        self.train_time = float(state.get("train_time", 0.0))
        self._wall_before = float(state.get("wall_time", 0.0))
        self._resumed_from = list(state.get("resumed_from", []))

    def on_fit_start(self, trainer, pl_module) -> None:
        reset_peak_memory()
        self._t0 = time.perf_counter()
        trainable, total = pl_module.param_counts
        self.metrics.update({"trainable_params": trainable, "total_params": total,
                             "adapter": pl_module.adapter.name,
                             "objective": pl_module.objective.name,
                             "model": pl_module.builder.name, "status": "running"})
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and getattr(dm, "stats", None):
            self.metrics["data"] = dict(dm.stats)
        self._setup_flops(trainer, pl_module, trainable, total)

    def _setup_flops(self, trainer, pl_module, trainable: int, total: int) -> None:
        from zhilu.model.runtime import base_causal_lm
        from zhilu.train import flops
        from zhilu.train.strategies import is_fsdp_wrapped

        lm = base_causal_lm(pl_module.model)
        cfg = lm.config
        if self.peak is None and trainer.strategy.root_device.type == "cuda":
            self.peak = flops.peak_flops(torch.cuda.get_device_name(trainer.strategy.root_device))
        if is_fsdp_wrapped(lm):  # parameters are flat shards: all but the embedding table, from the counts
            embed = lm.get_input_embeddings()
            n = total - embed.num_embeddings * embed.embedding_dim
        else:
            n = flops.matmul_params(lm)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self._flops_args = {"n_params": n, "n_layers": cfg.num_hidden_layers,
                            "attn_width": cfg.num_attention_heads * head_dim,
                            "n_trainable": None if trainable >= n else trainable}
        self.metrics["peak_flops"] = self.peak

    def on_train_start(self, trainer, pl_module) -> None:
        # after the checkpoint is restored, whichever strategy (FSDP restores after on_fit_start)
        if trainer.ckpt_path:
            self._resumed_from.append(str(trainer.ckpt_path))
            self.metrics["resumed_from"] = list(self._resumed_from)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._window_t is None:
            self._window_t = time.perf_counter()
        self._step_t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = int(batch.get("num_tokens", 0))
        self.tokens += n
        self._window_tokens += n
        self._window_seqs += int(batch.get("num_sequences", 1))
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self.train_time += now - self._step_t
        if (batch_idx + 1) % self.log_every == 0:
            tps = self._window_tokens / max(now - self._window_t, 1e-9)  # this device
            world = trainer.world_size
            pl_module.log("train/tokens_per_s", tps * world, batch_size=1, rank_zero_only=True)
            pl_module.log("perf/tokens_per_s_per_device", tps, batch_size=1, rank_zero_only=True)
            if self.peak and self._flops_args:
                from zhilu.train.flops import flops_per_token, mfu

                mean_len = self._window_tokens / max(self._window_seqs, 1)
                value = mfu(tps, flops_per_token(seq_len=mean_len, **self._flops_args), self.peak)
                pl_module.log("perf/mfu", value, batch_size=1, rank_zero_only=True)
                self.metrics["mfu"] = value
            self._window_t, self._window_tokens, self._window_seqs = now, 0, 0

    def _collect(self, trainer) -> None:
        for key in ("train/loss", "val/loss"):
            value = trainer.callback_metrics.get(key)
            if value is not None:
                self.metrics[key.replace("/", "_")] = float(value)
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/") and key != "val/loss":
                self.metrics[key.replace("/", "_")] = float(value)
        wall = self._wall_before + (time.perf_counter() - self._t0 if self._t0 else 0.0)
        self.metrics.update({
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "wall_time_s": wall,
            "train_time_s": self.train_time,
            "train_tokens": self.tokens,
            "tokens_per_s": trainer.world_size * self.tokens / self.train_time if self.train_time else 0.0,
            "tokens_per_s_per_device": self.tokens / self.train_time if self.train_time else 0.0,
            "world_size": trainer.world_size,
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
    """At the end of fit, write ``export/``: a merged Hugging Face model (+ ``adapter/`` for peft).

    ``dtype`` (``export.dtype``): the saved weights' dtype; ``None`` keeps the base model's
    (:meth:`zhilu.model.ModelBuilder.base_dtype`). Layout: :mod:`zhilu.model.export`.
    """

    def __init__(self, output_dir: str, enabled: bool = True, dtype: str | None = None) -> None:
        from zhilu.model.export import export_dtype

        self.out = Path(output_dir) / "export"
        self.enabled = enabled
        export_dtype(dtype, torch.float32)  # a bad value stops the run before any model is built
        self.dtype = dtype

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        from zhilu.train.strategies import full_state_dict, gathered, strategy_name

        if strategy_name(trainer.strategy) == "fsdp":
            # the live model's module names carry FSDP's wrappers, which peft's adapter export does not
            # see through (it writes an empty adapter): export a plain copy holding the gathered weights
            state = full_state_dict(trainer)  # every rank (a collective); the weights land on rank 0
            if trainer.is_global_zero:
                self._export(pl_module, pl_module.plain_copy(state))
        else:
            with gathered(trainer):  # every rank enters (a collective); rank 0 writes full weights
                if trainer.is_global_zero:
                    self._export(pl_module, pl_module.model)
        trainer.strategy.barrier("export")

    def _export(self, pl_module, model) -> None:
        from zhilu.model.export import export_dtype

        dtype = export_dtype(self.dtype, pl_module.builder.base_dtype())
        merged = pl_module.adapter.export(model, pl_module.tokenizer, self.out, dtype=dtype)
        log.info("exported %s", merged)
