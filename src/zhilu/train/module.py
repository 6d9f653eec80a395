"""The one LightningModule that serves every adapter x objective."""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from zhilu.adapters.base import Adapter, count_parameters
from zhilu.objectives.base import Objective
from zhilu.train.strategies import clean_name, is_fsdp_wrapped, sharded_checkpoints, strategy_name
from zhilu.utils import rng

log = logging.getLogger(__name__)


class ZhiluModule(L.LightningModule):
    """Wraps a Hugging Face causal LM with an adapter and trains it with an objective.

    Args:
        model: a :class:`zhilu.model.ModelBuilder` (``conf/model``).
        adapter: an :class:`~zhilu.adapters.base.Adapter` (``conf/adapter``).
        objective: an :class:`~zhilu.objectives.base.Objective` (``conf/objective``).
        optimizer: a partial optimizer (``conf/train.yaml: optimizer``); its ``lr`` and
            ``weight_decay`` are the defaults the adapter's parameter groups start from.
        scheduler: a partial of :func:`zhilu.train.schedule.warmup_schedule`, or ``None``.
        tokenizer: the model's tokenizer (for export and objectives that need it).
    """

    def __init__(
        self,
        model,
        adapter: Adapter,
        objective: Objective,
        optimizer: Callable = partial(torch.optim.AdamW, lr=2e-4, weight_decay=0.0),
        scheduler: Callable | None = None,
        tokenizer=None,
    ) -> None:
        super().__init__()
        self.builder = model
        self.adapter = adapter
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tokenizer = tokenizer
        self.model = None
        self.strict_loading = False  # adapters checkpoint only what trains
        self._built_counts: tuple[int, int] | None = None
        self._modes: dict[str, bool] = {}  # each module's mode before a validation outside fit

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = self._build()
        self.objective.setup(self)
        trainable, total = self._built_counts = count_parameters(self.model)
        log.info("%s + %s: %s trainable of %s parameters", self.builder.name, self.adapter.name,
                 f"{trainable:,}", f"{total:,}")

    def _build(self) -> torch.nn.Module:
        """The model with its adapter, on CPU (attention picked for the trainer's device)."""
        device_type = self.trainer.strategy.root_device.type if self._trainer is not None else None
        return self.adapter.apply(self.builder.build(self.tokenizer, device_type=device_type))

    def plain_copy(self, state_dict: dict) -> torch.nn.Module:
        """A fresh, unwrapped copy of ``self.model`` holding ``state_dict``, this module's full state dict
        (``model.`` keys), e.g. gathered from FSDP shards for export."""
        net = self._build()
        net.load_state_dict({k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")})
        return net

    @property
    def param_counts(self) -> tuple[int, int]:
        """(trainable, total); under FSDP the counts as built (each rank then holds only shards)."""
        if self._built_counts is not None and is_fsdp_wrapped(self.model):
            return self._built_counts
        return count_parameters(self.model)

    # ------------------------------------------------------------ train/eval mode
    # Lightning never switches a model to training mode: it only warns when fit starts with modules in
    # eval mode, and after validation it restores each submodule's mode as it found it. A model loaded
    # with from_pretrained starts in eval mode, where dropout (LoRA's included) is off and transformers
    # skips gradient checkpointing. So while fitting, the whole wrapped model (DDP, FSDP or DeepSpeed
    # wrappers and every submodule) is put in training mode at fit start and after every validation.
    def on_validation_model_eval(self) -> None:
        self._modes = {name: m.training for name, m in self.trainer.model.named_modules()}
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.trainer.model.train()
            return
        for name, m in self.trainer.model.named_modules():  # trainer.validate() alone: every module as it was
            m.training = self._modes.get(name, m.training)

    # -------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        self.trainer.model.train()
        trainable, total = self.param_counts
        for lg in self.loggers:
            lg.log_hyperparams({"params/trainable": trainable, "params/total": total})
        self.objective.on_fit_start(self)

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            stats = dm.set_epoch(self.current_epoch)
            if stats:
                log.info("epoch %d packing: %s", self.current_epoch, stats)
                for lg in self.loggers:
                    lg.log_metrics({f"packing/{k}": float(v) for k, v in stats.items()}, step=self.global_step)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.objective.loss(self, batch, "train")
        bs = int(batch["num_sequences"])
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for k, v in logs.items():
            if k != "loss":
                self.log(f"train/{k}", v, batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, logs = self.objective.loss(self, batch, "val")
        bs = int(batch["num_sequences"])
        self.log("val/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        for k, v in logs.items():
            if k != "loss":
                self.log(f"val/{k}", v, batch_size=bs, sync_dist=True)

    def configure_optimizers(self):
        kw = getattr(self.optimizer_factory, "keywords", {}) or {}
        lr = kw.get("lr", 1e-3)
        wd = kw.get("weight_decay", 0.0)
        optimizer = self.adapter.build_optimizer(self.model, self.optimizer_factory, lr, wd)
        if self.scheduler_factory is None:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """FSDP: the norm over every rank's shards (Lightning's own clipping refuses ``norm`` under FSDP)."""
        if gradient_clip_val and strategy_name(self.trainer.strategy) == "fsdp" and gradient_clip_algorithm != "value":
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.adapter.checkpoint_keys(self.model)
        if keep is not None and not sharded_checkpoints(self.trainer.strategy):
            keep = {clean_name(k) for k in keep}  # FSDP/activation-checkpointing wrappers in the names
            sd = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in sd.items() if k.removeprefix("model.") in keep}
        checkpoint["rng_states"] = rng.collect()  # every rank's: a resumed run draws the same dropout masks

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng.restore(checkpoint.get("rng_states"))
