"""Distributed strategies through existing engines (Lightning's DDP, DeepSpeed ZeRO, FSDP).

Factories referenced by ``conf/trainer/*.yaml``; each imports its engine lazily and says what
to install when it is missing. ``gathered(trainer)`` gives rank 0 the full weights of a sharded
model for export.
"""

from __future__ import annotations

import contextlib
from typing import Any

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
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=stage, offload_optimizer=offload_optimizer,
                             offload_parameters=offload_parameters, **kwargs)


def decoder_layer_classes() -> set[type]:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return {LlamaDecoderLayer}


def fsdp(sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = True,
         state_dict_type: str = "sharded", cpu_offload: bool = False, **kwargs: Any):
    """Lightning's ``FSDPStrategy``: auto-wrap (and optionally checkpoint) each Llama decoder layer.

    ``use_orig_params=True`` lets frozen and trainable parameters share a flat parameter, which
    adapters (LoRA, DoRA) need.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    choices = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
    if sharding_strategy not in choices:
        raise ConfigError(f"trainer.strategy.sharding_strategy={sharding_strategy!r}: expected one of {', '.join(choices)}")
    if state_dict_type not in ("full", "sharded"):
        raise ConfigError(f"trainer.strategy.state_dict_type={state_dict_type!r}: expected full or sharded")
    layers = decoder_layer_classes()
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,
        **kwargs,
    )


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
    """Every rank enters; inside, the LightningModule's parameters are full (not sharded)."""
    strategy = trainer.strategy
    kind = strategy_name(strategy)
    if kind == "deepspeed" and getattr(strategy, "zero_stage_3", False):
        import deepspeed as ds

        with ds.zero.GatheredParameters(list(trainer.lightning_module.parameters()), modifier_rank=None):
            yield
    elif kind == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(strategy.model, writeback=False, offload_to_cpu=True, rank0_only=False):
            yield
    else:
        yield
