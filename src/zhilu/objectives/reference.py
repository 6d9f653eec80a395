"""The reference policy: the fixed model an objective compares the policy with (DPO, KTO, ...).

An objective that needs one sets ``needs_reference`` (see :class:`zhilu.objectives.base.Objective`),
builds a :class:`ReferencePolicy` in its ``setup(module)`` with a ``score`` function (its own
per-sequence log-probs), forwards ``on_fit_start`` to it, and calls it in ``loss``::

    self.reference = ReferencePolicy(module.adapter.reference, self.score, precompute=self.precompute_ref)
    self.reference.setup(module)
    ...
    ref_sums, ref_counts = self.reference(module, batch, stage)   # no gradients; before the policy pass

Where the reference comes from is the adapter's stated ``reference`` (``conf/adapter/*.yaml``):

- ``disabled``: the same network with the adapter switched off (``adapter.disabled(model)``), so no
  second copy of the weights (LoRA, DoRA, LoRA+: the base is untouched);
- ``copy``: a frozen copy of the policy made when the model is built, before any checkpoint is
  restored (full, BAdam; PiSSA and OLoRA, whose base holds residual weights, so switching their
  adapter off is *not* the starting model). The copy lives on this object, outside the
  LightningModule, so it never enters a checkpoint;
- ``precomputed``: no second model at all; the policy itself, at fit start before any step, scores
  every train and val example once (a resumed run needs the cache of its first start).

``precompute=True`` (``objective.precompute_ref``) works with each: reference log-probs of every
train and val example are computed once at fit start, cached in ``<run dir>/ref_logps.pt`` (reused
when the data, the base model and the adapter's reference match) and looked up by
``batch["example_ids"]``; a frozen copy is then dropped, so training holds one model.
:func:`check` refuses impossible pairs at config time (called by :mod:`zhilu.train.compat`).
"""

from __future__ import annotations

import array
import copy
import gc
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from zhilu.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: how an adapter's reference is obtained (``adapter.reference``)
REFERENCES = ("disabled", "copy", "precomputed")
CACHE_NAME = "ref_logps.pt"
CACHE_VERSION = 2

#: ``(sums, counts)`` of the labelled tokens' log-probs per sequence, ``[S]`` each
SeqLogps = tuple[torch.Tensor, torch.Tensor]
#: an objective's scoring function: ``(model, batch) -> SeqLogps``
Score = Callable[[nn.Module, dict], SeqLogps]


def check(adapter, objective, engine: str = "single", sharded: bool = False) -> None:
    """Refuse, in one line, a reference the adapter cannot give under this engine (config time).

    ``sharded``: the engine splits the weights across ranks (FSDP, DeepSpeed ZeRO-3). An object that
    is not an :class:`~zhilu.objectives.base.Objective` declares no needs.
    """
    from zhilu.objectives.base import Objective

    if not isinstance(objective, Objective) or not objective.needs_reference:
        return
    kind, obj = adapter.reference, objective.name
    if kind == "precomputed" and not objective.precompute_ref:
        raise ConfigError(
            f"objective={obj} with adapter={adapter.name}: the adapter's reference can only be precomputed "
            "(adapter.reference=precomputed); set objective.precompute_ref=true"
        )
    if kind == "copy" and sharded:
        raise ConfigError(
            f"objective={obj} with adapter={adapter.name} needs a frozen copy of the policy as reference, which "
            f"cannot be copied from a model sharded by trainer={engine}; use a peft adapter (its reference is "
            "the adapter switched off), a reference-free loss (simpo, orpo), or ZeRO stage 2"
        )
    if kind == "precomputed" and sharded:
        raise ConfigError(
            f"objective={obj} with adapter={adapter.name}: adapter.reference=precomputed scores the data with "
            f"the unsharded policy at fit start, which trainer={engine} does not support; use trainer=gpu or ddp"
        )


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no gradients."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def reference_identity(builder, adapter=None) -> dict[str, Any]:
    """What the reference is made from: the builder's fields (its weight files' stats) and the adapter's reference."""
    ident: dict[str, Any] = {k: getattr(builder, k, None) for k in ("path", "config", "seed", "dtype")}
    if ident["path"]:
        from zhilu.model.builder import resolve_model_path

        folder = resolve_model_path(ident["path"])
        ident["path"] = str(folder.resolve())
        ident["weights"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
            if f.suffix in (".safetensors", ".bin")
        )
    if adapter is not None:
        ident["adapter"] = (adapter.name, adapter.reference)
    return ident


def examples_digest(h, examples: Sequence) -> None:
    """Feed every token id and label of ``examples`` (in order) to the hash ``h``."""
    for ex in examples:
        for ids, labels in zip(ex.input_ids, ex.labels):
            h.update(array.array("q", ids).tobytes())
            h.update(array.array("q", labels).tobytes())
        h.update(b"|")


class ReferencePolicy:
    """Reference log-probs for a batch: ``reference(module, batch, stage) -> (sums, counts)`` per sequence.

    Args:
        kind: ``disabled``, ``copy`` or ``precomputed`` (the adapter's ``reference``).
        score: the objective's ``(model, batch) -> (sums, counts)``; run here under ``no_grad``.
        precompute: score every train and val example once at fit start and cache the table.
        batch_size: examples per precomputation batch (default: the data module's ``eval_batch_size``).

    Attributes: ``model`` (the frozen copy, or ``None``), ``precompute_s`` (seconds spent precomputing
    in this process; ``None`` when reused or not precomputed), ``cache_path``, ``table`` (per split:
    ``sums``/``counts`` ``[N, sequences per example]``).
    """

    def __init__(self, kind: str, score: Score, precompute: bool = False, batch_size: int | None = None) -> None:
        if kind not in REFERENCES:
            raise ConfigError(f"adapter.reference={kind!r}: expected one of {', '.join(REFERENCES)}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"objective.ref_batch_size={batch_size}: must be a positive integer")
        self.kind = kind
        self.score = score
        self.precompute = precompute or kind == "precomputed"
        self.batch_size = batch_size
        self.model: nn.Module | None = None
        self.table: dict[str, dict[str, torch.Tensor]] = {}
        self.cache_path: Path | None = None
        self.precompute_s: float | None = None
        self._ready = False

    # ------------------------------------------------------------------ lifecycle
    def setup(self, module) -> None:
        """Once the policy exists (``configure_model``), before any checkpoint is restored."""
        if self.kind == "copy":
            self.model = frozen_copy(module.model)
        self._ready = not self.precompute

    def on_fit_start(self, module) -> None:
        if self.model is not None:
            self.model.to(module.device)
        if self.precompute:
            self._precompute(module)

    def __call__(self, module, batch: dict, stage: str) -> SeqLogps:
        if self.precompute and self._ready:
            return self._lookup(batch, stage)
        return self._online(module, batch)

    # ------------------------------------------------------------------- sources
    def _online(self, module, batch: dict) -> SeqLogps:
        if self.kind == "disabled":
            with module.adapter.disabled(module.model), torch.no_grad():
                return self.score(module.model, batch)
        if self.kind == "copy":
            if self.model is None:
                raise ConfigError("the frozen reference copy was already released (precomputed log-probs replace it)")
            with torch.no_grad():
                return self.score(self.model, batch)
        if self._ready or not self.precompute:
            raise ConfigError("adapter.reference=precomputed: reference log-probs exist only for the train and val "
                              "splits precomputed at fit start")
        with torch.no_grad():  # precomputing: the policy before its first step is the reference
            return self.score(module.model, batch)

    def _lookup(self, batch: dict, stage: str) -> SeqLogps:
        table = self.table.get(stage)
        if table is None:
            raise ConfigError(
                f"objective.precompute_ref: no reference log-probs for the {stage} split "
                f"(they are computed at fit start for train and val only)"
            )
        ids = batch["example_ids"].cpu()
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= table["sums"].shape[0]:
            raise DataError(
                f"objective.precompute_ref: {stage} batch example ids {ids.tolist()} do not index the "
                f"{table['sums'].shape[0]} cached examples"
            )
        device = batch["input_ids"].device
        return table["sums"][ids].reshape(-1).to(device), table["counts"][ids].reshape(-1).to(device)

    # ------------------------------------------------------------ precomputation
    def _precompute(self, module) -> None:
        trainer = module.trainer
        dm = getattr(trainer, "datamodule", None)
        if dm is None or getattr(dm, "train_examples", None) is None:
            raise ConfigError("objective.precompute_ref=true needs the ChatDataModule (train.py's data=)")
        splits = {"train": dm.train_examples, "val": dm.val_examples or []}
        ident = reference_identity(module.builder, module.adapter)
        h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
        for name, examples in splits.items():
            h.update(name.encode())
            examples_digest(h, examples)
        key = h.hexdigest()
        path = Path(trainer.default_root_dir) / CACHE_NAME
        self.cache_path = path
        cached = self._load_cache(path, key)
        if cached is not None:
            self.table = cached
            log.info("reference log-probs: reusing %s", path)
        else:
            if self.kind == "precomputed" and getattr(trainer, "ckpt_path", None):
                raise ConfigError(
                    f"adapter.reference=precomputed: resuming from {trainer.ckpt_path} without the first start's "
                    f"{path} (the restored policy is no longer the reference); restore that file or start afresh"
                )
            t0 = time.perf_counter()
            collate = dm.collator(False)
            batch_size = self.batch_size or dm.eval_batch_size
            self.table = {name: self._table(module, examples, collate, batch_size) for name, examples in splits.items()}
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)
            self.precompute_s = time.perf_counter() - t0
            if trainer.is_global_zero:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                torch.save({"version": CACHE_VERSION, "key": key, "splits": self.table}, tmp)
                os.replace(tmp, path)
            log.info("reference log-probs: %d train + %d val examples in %.1f s, cached in %s",
                     len(splits["train"]), len(splits["val"]), self.precompute_s, path)
        self._ready = True
        if self.model is not None:  # training keeps one model in memory
            self.model = None
            gc.collect()
            if module.device.type == "cuda":
                torch.cuda.empty_cache()

    @staticmethod
    def _load_cache(path: Path, key: str) -> dict | None:
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file is recomputed, not trusted
            log.warning("reference log-probs: cannot read %s (%s); recomputing", path, exc)
            return None
        if not isinstance(saved, dict) or saved.get("version") != CACHE_VERSION or saved.get("key") != key:
            log.info("reference log-probs: %s is for other data, base model or reference; recomputing", path)
            return None
        return saved["splits"]

    def _table(self, module, examples: Sequence, collate, batch_size: int) -> dict:
        """Reference ``sums``/``counts`` ``[N, k]`` (k sequences per example) indexed by example id."""
        n = len(examples)
        k = len(examples[0].input_ids) if n else 1
        if any(len(ex.input_ids) != k for ex in examples):
            raise DataError("objective.precompute_ref: every example of a split needs the same number of sequences")
        sums = torch.zeros(n, k, dtype=torch.float32)
        counts = torch.zeros(n, k, dtype=torch.float32)
        seen = torch.zeros(n, dtype=torch.bool)
        order = sorted(range(n), key=lambda i: examples[i].total_length, reverse=True)  # less padding
        model = module.model
        was_training = model.training
        model.eval()
        try:
            for start in range(0, n, batch_size):
                batch = collate([examples[i] for i in order[start : start + batch_size]])
                ids = batch["example_ids"]
                if int(ids.min()) < 0 or int(ids.max()) >= n or seen[ids].any():
                    raise DataError("objective.precompute_ref: examples need unique ids 0..N-1 (Example.meta['id'])")
                batch = {key: v.to(module.device) if torch.is_tensor(v) else v for key, v in batch.items()}
                with module.trainer.precision_plugin.forward_context():
                    s, c = self._online(module, batch)
                sums[ids] = s.float().view(-1, k).cpu()
                counts[ids] = c.float().view(-1, k).cpu()
                seen[ids] = True
        finally:
            model.train(was_training)
        return {"sums": sums, "counts": counts}


class ReferenceScoring:
    """Mixin for an objective scored against a :class:`ReferencePolicy` (DPO, KTO): the fit-start hook
    and the per-sequence label log-probs with the objective's LM-head settings (``loss_impl``,
    ``chunk_size``, ``logits_budget_mb``), which the policy and its reference share."""

    reference: ReferencePolicy | None = None

    def on_fit_start(self, module) -> None:
        if self.reference is not None:
            self.reference.on_fit_start(module)

    def _logps(self, model: nn.Module, batch: dict) -> SeqLogps:
        from zhilu.objectives.logps import label_logps

        lp = label_logps(model, batch, self.loss_impl, self.chunk_size, self.logits_budget_mb)
        return lp.seq_logps, lp.seq_counts
