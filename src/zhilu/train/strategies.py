"""Distributed strategies through existing engines (Lightning's DDP, DeepSpeed ZeRO, FSDP).

Factories referenced by ``conf/trainer/*.yaml``; each imports its engine lazily and says what
to install when it is missing. ``gathered(trainer)`` (ZeRO-3) and ``full_state_dict(trainer)``
(FSDP) give rank 0 the full weights of a sharded model for export.
"""

from __future__ import annotations

import contextlib
import shutil
from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from zhilu.errors import ConfigError


def deepspeed(stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False,
              **kwargs: Any):
    """Lightning's ``DeepSpeedStrategy`` (ZeRO stage 2 or 3, optional CPU offload)."""
    try:
        import deepspeed as _  # noqa: F401
    except ImportError:
        raise ConfigError("trainer=deepspeed_* needs deepspeed: pip install -r requirements-gpu.txt") from None
    if stage not in (1, 2, 3):
        raise ConfigError(f"trainer.strategy.stage={stage}: DeepSpeed ZeRO stages are 1, 2 and 3")
    if offload_parameters and stage != 3:
        raise ConfigError("trainer.strategy.offload_parameters needs ZeRO stage 3")
    return ZhiluDeepSpeedStrategy(stage=stage, offload_optimizer=offload_optimizer,
                                  offload_parameters=offload_parameters, **kwargs)


class ZhiluDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` whose checkpoint directories are committed by rename
    (:func:`save_directory_checkpoint`), like FSDP's sharded ones."""

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        save_directory_checkpoint(self, lambda tmp: super(ZhiluDeepSpeedStrategy, self).save_checkpoint(
            checkpoint, tmp, storage_options), filepath)


def decoder_layer_classes() -> set[type]:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return {LlamaDecoderLayer}


def fsdp(sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = True,
         state_dict_type: str = "sharded", cpu_offload: bool = False, **kwargs: Any):
    """Lightning's ``FSDPStrategy``: auto-wrap (and optionally checkpoint) each Llama decoder layer.

    ``use_orig_params=True`` lets frozen and trainable parameters share a flat parameter, which
    adapters (LoRA, DoRA) need. Runs on CPU too (``trainer.accelerator=cpu``, gloo), which is how
    the tests check it (tests/test_fsdp_cpu.py).
    """
    choices = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
    if sharding_strategy not in choices:
        raise ConfigError(f"trainer.strategy.sharding_strategy={sharding_strategy!r}: expected one of {', '.join(choices)}")
    if state_dict_type not in ("full", "sharded"):
        raise ConfigError(f"trainer.strategy.state_dict_type={state_dict_type!r}: expected full or sharded")
    layers = decoder_layer_classes()
    return ZhiluFSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,
        **kwargs,
    )


class ZhiluFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with two fixes.

    - CPU (gloo): Lightning passes ``device_id=None`` (the device's index), which torch's FSDP
      refuses on a machine without an accelerator; the CPU device is passed instead.
    - ``trainer.validate``/``test`` after ``fit`` reuses fit's root wrapper. Lightning would skip
      it (the decoder layers are wrapped already) and leave the parameters the root owns
      (embeddings, final norm, LM head) as flat shards: ``"weight" must be 2-D``
      (Lightning-AI/pytorch-lightning#19015).
    """

    _root = None

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        """Sharded checkpoints (directories) are committed by rename (:func:`save_directory_checkpoint`);
        full state dicts go through the trainer's ``CheckpointIO`` (``AtomicCheckpointIO``)."""
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        save_directory_checkpoint(self, lambda tmp: super(ZhiluFSDPStrategy, self).save_checkpoint(
            checkpoint, tmp, storage_options), filepath)

    def _setup_model(self, model):
        if self._root is not None and self._root.module is model:
            return self._root
        if self.root_device.type == "cpu" and not is_fsdp_wrapped(model):
            from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
            from torch.distributed.fsdp import FullyShardedDataParallel

            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
            _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        else:
            model = super()._setup_model(model)
        self._root = model
        return model


def save_directory_checkpoint(strategy: Any, write, filepath) -> None:
    """Write a checkpoint directory with ``write(tmp)`` (every rank, a collective) into
    ``.<name>.<host>.<pid>.tmp/`` beside ``filepath``, then commit it by rename on rank 0 once every
    rank's shard and the metadata are complete (:func:`zhilu.utils.atomic.commit_dir`): a kill or a
    full disk mid-save leaves the previous ``last.ckpt/`` whole, and a failed save leaves no temp folder."""
    from pathlib import Path

    from zhilu.utils.atomic import _tmp_name, commit_dir, recover_dir, sweep_stale

    path = Path(strategy.broadcast(str(filepath)))
    tmp = Path(strategy.broadcast(str(_tmp_name(path))))  # rank 0's name, shared by every rank
    if strategy.global_rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        sweep_stale(path.parent, path.name)
        shutil.rmtree(tmp, ignore_errors=True)
    strategy.barrier("zhilu_ckpt_prepare")
    try:
        write(tmp)
        strategy.barrier("zhilu_ckpt_written")
        if strategy.global_rank == 0:
            commit_dir(tmp, path)
    finally:
        if strategy.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    strategy.barrier("zhilu_ckpt_committed")


def sharded_checkpoints(strategy: Any) -> bool:
    """Whether checkpoints are written and read by ``torch.distributed.checkpoint`` (FSDP sharded).

    Its loader needs every key of the model's state dict, so such checkpoints hold the whole model
    (each rank its shard), adapters included.
    """
    return strategy_name(strategy) == "fsdp" and getattr(strategy, "_state_dict_type", None) == "sharded"


def is_fsdp_wrapped(module: Any) -> bool:
    """Whether ``module`` holds FSDP units (its parameters are then flat shards outside forward)."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch build without distributed
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules())


def clean_name(name: str) -> str:
    """A parameter name without the FSDP and activation-checkpointing wrappers' prefixes."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


def strategy_name(strategy: Any) -> str:
    """``ddp``, ``deepspeed``, ``fsdp`` or ``single`` for a strategy object or config string."""
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    name = name.lower()
    for key in ("deepspeed", "fsdp", "ddp"):
        if key in name:
            return key
    return "single"


@contextlib.contextmanager
def gathered(trainer):
    """Every rank enters (a collective); inside, the LightningModule's parameters are full (not sharded).

    For DeepSpeed ZeRO-3; FSDP exports use :func:`full_state_dict` instead.
    """
    strategy = trainer.strategy
    if strategy_name(strategy) == "deepspeed" and getattr(strategy, "zero_stage_3", False):
        import deepspeed as ds

        with ds.zero.GatheredParameters(list(trainer.lightning_module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def full_state_dict(trainer) -> dict:
    """FSDP: the LightningModule's full state dict on rank 0 (``{}`` on the others); every rank calls it.

    Names are the unwrapped module's (no FSDP or activation-checkpointing prefixes). Gathered to
    CPU on GPUs; on a CPU device FSDP's ``offload_to_cpu`` would free the very storage it returns.
    """
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    strategy = trainer.strategy
    config = FullStateDictConfig(offload_to_cpu=strategy.root_device.type != "cpu", rank0_only=True)
    with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
        return strategy.model.state_dict()
