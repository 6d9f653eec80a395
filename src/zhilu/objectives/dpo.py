"""Preference alignment against a reference model: DPO, cDPO, IPO, SLiC hinge, SimPO, ORPO.

- DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290 (the losses and their papers are in
  :mod:`zhilu.objectives.preference_losses`)

Chosen and rejected answers are sequences ``2i`` and ``2i + 1`` of one batch (padded or packed),
so the policy scores both in one forward pass; only answer tokens carry labels. The reference:

- peft adapters (LoRA, DoRA, LoRA+): the same network with the adapter switched off, so there is
  no second copy of the weights;
- ``full`` and ``badam``: a frozen copy of the model made when the model is built, before any
  checkpoint is restored; it lives on this object, outside the LightningModule, so it never
  enters a checkpoint;
- ``precompute_ref=true``: the reference log-probs of every train and val example are computed
  once at fit start and cached in ``<run dir>/ref_logps.pt`` (reused when the data and the base
  model match); the frozen copy is then dropped, so training holds one model;
- ``simpo`` and ``orpo`` are reference-free and use no reference at all.

Logged (the module prefixes ``train/`` and ``val/``): ``rewards/chosen``, ``rewards/rejected``
(``beta`` times the score: the log-ratio for reference losses, the policy log-prob for
SimPO/ORPO), ``rewards/accuracies`` (share of pairs whose chosen reward is higher),
``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (policy log-probs as the loss uses
them: sums over answer tokens, means for the length-normalised IPO/SimPO/ORPO) and ``nll`` when
the SFT term is on.
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

from zhilu.data.encode import Example
from zhilu.errors import ConfigError, DataError
from zhilu.objectives.base import Objective
from zhilu.objectives.logps import DEFAULT_LOGITS_BUDGET_MB, budget_chunk, label_logps
from zhilu.objectives.preference_losses import LOSS_TYPES

log = logging.getLogger(__name__)

CACHE_NAME = "ref_logps.pt"
CACHE_VERSION = 1

#: ``(sums, counts)`` of the answer tokens' log-probs per sequence, ``[S]`` each
SeqLogps = tuple[torch.Tensor, torch.Tensor]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no gradients: the reference for adapters that train the base."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def reference_identity(builder) -> dict[str, Any]:
    """What the reference model is made from: the builder's fields (and its weight files' stats)."""
    ident: dict[str, Any] = {k: getattr(builder, k, None) for k in ("path", "config", "seed", "dtype")}
    if ident["path"]:
        from zhilu.model.builder import resolve_model_path

        folder = resolve_model_path(ident["path"])
        ident["path"] = str(folder.resolve())
        ident["weights"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
            if f.suffix in (".safetensors", ".bin")
        )
    return ident


def examples_digest(h, examples: Sequence[Example]) -> None:
    """Feed every token id and label of ``examples`` (in order) to the hash ``h``."""
    for ex in examples:
        for ids, labels in zip(ex.input_ids, ex.labels):
            h.update(array.array("q", ids).tobytes())
            h.update(array.array("q", labels).tobytes())
        h.update(b"|")


class DPO(Objective):
    """Preference optimisation of the policy against a reference (or none, for SimPO/ORPO).

    Args:
        loss_type: ``sigmoid`` (DPO), ``ipo``, ``hinge`` (SLiC), ``simpo`` or ``orpo``.
        beta: DPO's KL strength; IPO's tau; ``1/margin`` for hinge; SimPO's reward scale;
            ORPO's lambda (weight of the odds-ratio term).
        label_smoothing: assumed share of flipped labels (conservative DPO; ``sigmoid``, ``simpo``).
        sft_weight: weight of an added NLL term on the chosen answers (token mean); ``None`` =
            1 for ``orpo`` (its paper's SFT term), 0 otherwise.
        gamma: SimPO's target reward margin.
        precompute_ref: compute reference log-probs once at fit start, cache them in the run dir
            and keep no reference model while training.
        ref_batch_size: pairs per batch for the precomputation (default: ``data.eval_batch_size``).
        loss_impl, logits_budget_mb, chunk_size: how label log-probs are computed (see :func:`label_logps`).
    """

    data_kind = "preference"

    def __init__(
        self,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        sft_weight: float | None = None,
        gamma: float = 0.5,
        precompute_ref: bool = False,
        ref_batch_size: int | None = None,
        loss_impl: str = "auto",
        logits_budget_mb: float = DEFAULT_LOGITS_BUDGET_MB,
        chunk_size: int | None = None,
    ) -> None:
        budget_chunk(1, logits_budget_mb)  # validate at instantiation
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"objective.loss_type={loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
        spec = LOSS_TYPES[loss_type]
        if not beta > 0:
            raise ConfigError(f"objective.beta={beta}: must be positive")
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"objective.label_smoothing={label_smoothing}: must be in [0, 0.5)")
        if label_smoothing and "label_smoothing" not in spec.options:
            users = [k for k, s in LOSS_TYPES.items() if "label_smoothing" in s.options]
            raise ConfigError(
                f"objective.label_smoothing={label_smoothing}: loss_type={loss_type} has no label smoothing "
                f"(only {', '.join(users)})"
            )
        if sft_weight is not None and sft_weight < 0:
            raise ConfigError(f"objective.sft_weight={sft_weight}: must be >= 0")
        if ref_batch_size is not None and ref_batch_size < 1:
            raise ConfigError(f"objective.ref_batch_size={ref_batch_size}: must be a positive integer")
        self.loss_type = loss_type
        self.spec = spec
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)
        self.gamma = float(gamma)
        self.sft_weight = spec.sft_weight if sft_weight is None else float(sft_weight)
        self.precompute_ref = bool(precompute_ref) and spec.uses_reference
        self.ref_batch_size = ref_batch_size
        self.loss_impl = loss_impl
        self.chunk_size = chunk_size
        self.logits_budget_mb = logits_budget_mb
        self.ref_model: nn.Module | None = None  # the frozen copy, when one is needed
        self.ref_cache: dict[str, dict[str, torch.Tensor]] = {}
        self.ref_cache_path: Path | None = None
        self.precompute_s: float | None = None  # None: not computed in this process (or reused)
        self._reference: Callable[[Any, dict, str], SeqLogps] | None = None

    # ------------------------------------------------------------------ reference
    def needs_reference_copy(self, adapter) -> bool:
        """True when training keeps (or precomputes from) a frozen copy of the policy."""
        return self.spec.uses_reference and not adapter.has_disabled_reference

    def setup(self, module) -> None:
        if not self.spec.uses_reference:
            return
        if module.adapter.has_disabled_reference:
            self._reference = self._disabled_reference
        else:
            self.ref_model = frozen_copy(module.model)
            self._reference = self._copy_reference

    def on_fit_start(self, module) -> None:
        if self.ref_model is not None:
            self.ref_model.to(module.device)
        if self.precompute_ref:
            self._precompute(module)

    def _logps(self, model: nn.Module, batch: dict) -> SeqLogps:
        lp = label_logps(model, batch, self.loss_impl, self.chunk_size, self.logits_budget_mb)
        return lp.seq_logps, lp.seq_counts

    def _disabled_reference(self, module, batch: dict, stage: str) -> SeqLogps:
        with module.adapter.disabled(module.model), torch.no_grad():
            return self._logps(module.model, batch)

    def _copy_reference(self, module, batch: dict, stage: str) -> SeqLogps:
        if self.ref_model is None:
            raise ConfigError("objective=dpo: the frozen reference copy was already released")
        with torch.no_grad():
            return self._logps(self.ref_model, batch)

    def _cached_reference(self, module, batch: dict, stage: str) -> SeqLogps:
        table = self.ref_cache.get(stage)
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
        h = hashlib.sha256(json.dumps(reference_identity(module.builder), sort_keys=True, default=str).encode())
        for name, examples in splits.items():
            h.update(name.encode())
            examples_digest(h, examples)
        key = h.hexdigest()
        path = Path(trainer.default_root_dir) / CACHE_NAME
        self.ref_cache_path = path
        cached = self._load_cache(path, key)
        if cached is not None:
            self.ref_cache = cached
            log.info("reference log-probs: reusing %s", path)
        else:
            t0 = time.perf_counter()
            collate = dm.collator(False)
            batch_size = self.ref_batch_size or dm.eval_batch_size
            self.ref_cache = {
                name: self._reference_table(module, examples, collate, batch_size)
                for name, examples in splits.items()
            }
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)
            self.precompute_s = time.perf_counter() - t0
            if trainer.is_global_zero:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                torch.save({"version": CACHE_VERSION, "key": key, "splits": self.ref_cache}, tmp)
                os.replace(tmp, path)
            log.info("reference log-probs: %d train + %d val pairs in %.1f s, cached in %s",
                     len(splits["train"]), len(splits["val"]), self.precompute_s, path)
        self._reference = self._cached_reference
        if self.ref_model is not None:  # training keeps one model in memory
            self.ref_model = None
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
            log.info("reference log-probs: %s is for other data or another base model; recomputing", path)
            return None
        return saved["splits"]

    def _reference_table(self, module, examples: Sequence[Example], collate, batch_size: int) -> dict:
        """Reference ``sums``/``counts`` ``[N, 2]`` (chosen, rejected) indexed by example id."""
        n = len(examples)
        sums = torch.zeros(n, 2, dtype=torch.float32)
        counts = torch.zeros(n, 2, dtype=torch.float32)
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
                batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with module.trainer.precision_plugin.forward_context():
                    s, c = self._reference(module, batch, "precompute")
                sums[ids] = s.float().view(-1, 2).cpu()
                counts[ids] = c.float().view(-1, 2).cpu()
                seen[ids] = True
        finally:
            model.train(was_training)
        return {"sums": sums, "counts": counts}

    # ---------------------------------------------------------------------- loss
    def pair_loss(
        self, sums: torch.Tensor, counts: torch.Tensor, ref_sums: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Loss and logs from per-sequence log-prob sums ``[2P]`` (chosen, rejected interleaved).

        ``counts`` are the answer lengths (the same for policy and reference); ``ref_sums`` are the
        reference's sums, required by the reference-based losses.
        """
        if sums.shape[0] % 2:
            raise ConfigError(f"objective=dpo: a batch of {sums.shape[0]} sequences is not (chosen, rejected) pairs")
        norm = counts.clamp(min=1) if self.spec.length_normalised else torch.ones_like(counts)
        logps = sums / norm
        scores = logps
        if self.spec.uses_reference:
            if ref_sums is None:
                raise ConfigError(f"objective.loss_type={self.loss_type} needs reference log-probs")
            scores = logps - ref_sums.to(logps.dtype) / norm
        chosen, rejected = scores[0::2], scores[1::2]
        options = {k: getattr(self, k) for k in self.spec.options}
        loss = self.spec.fn(chosen, rejected, beta=self.beta, **options).mean()
        r_chosen, r_rejected = self.beta * chosen.detach(), self.beta * rejected.detach()
        logs: dict[str, Any] = {
            "rewards/chosen": r_chosen.mean(),
            "rewards/rejected": r_rejected.mean(),
            "rewards/accuracies": (r_chosen > r_rejected).float().mean(),
            "rewards/margins": (r_chosen - r_rejected).mean(),
            "logps/chosen": logps[0::2].detach().mean(),
            "logps/rejected": logps[1::2].detach().mean(),
        }
        if self.sft_weight:
            nll = -sums[0::2].sum() / counts[0::2].sum().clamp(min=1)
            loss = loss + self.sft_weight * nll
            logs["nll"] = nll.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def loss(self, module, batch: dict, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        ref_sums = None
        if self.spec.uses_reference:
            if self._reference is None:
                raise ConfigError("objective=dpo: setup(module) was not called, so there is no reference")
            ref_sums, ref_counts = self._reference(module, batch, stage)  # first: no policy graph held yet
        sums, counts = self._logps(module.model, batch)
        if ref_sums is not None and not torch.equal(ref_counts.to(counts.dtype), counts):
            raise DataError(
                f"objective=dpo: reference and policy answer lengths differ in a {stage} batch "
                f"(stale {CACHE_NAME}? delete it to recompute)"
            )
        return self.pair_loss(sums, counts, ref_sums)

