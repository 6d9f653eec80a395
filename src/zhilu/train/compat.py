"""Adapter x objective x strategy pairs that an engine cannot run, refused before anything loads.

Reads what adapters and objectives state (``adapter.shardable``, ``adapter.reference``,
``objective.needs_reference``, ``objective.precompute_ref``), never their names.
"""

from __future__ import annotations

from omegaconf import DictConfig

from zhilu.errors import ConfigError
from zhilu.objectives import reference
from zhilu.train.strategies import strategy_name


def _devices(cfg: DictConfig) -> int:
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1) or 1
    if isinstance(devices, int):
        return devices * nodes
    if isinstance(devices, str) and devices.isdigit():
        return int(devices) * nodes
    if devices in ("auto", -1, "-1"):
        import torch

        return max(1, torch.cuda.device_count()) * nodes
    return len(devices) * nodes  # a list of device ids


def _on_cpu(cfg: DictConfig) -> bool:
    accelerator = cfg.trainer.get("accelerator", "auto")
    if accelerator == "auto":
        import torch

        return not torch.cuda.is_available()
    return accelerator == "cpu"


def check(cfg: DictConfig, adapter, objective) -> None:
    strategy = cfg.trainer.get("strategy") or "auto"
    target = strategy.get("_target_", "") if hasattr(strategy, "get") else str(strategy)
    kind = strategy_name(target)
    stage = strategy.get("stage", None) if hasattr(strategy, "get") else None
    n = _devices(cfg)
    if cfg.get("model") is not None and cfg.model.get("attn_implementation") == "flex_attention" and _on_cpu(cfg):
        raise ConfigError(
            "model.attn_implementation=flex_attention cannot train on CPU: torch's FlexAttention has no CPU "
            "backward; use auto (sdpa_varlen: per-document attention for packed rows) or sdpa"
        )
    if kind == "fsdp" and strategy.get("state_dict_type") == "full" and _on_cpu(cfg):
        raise ConfigError(
            "trainer.strategy.state_dict_type=full with trainer=fsdp on CPU is not supported: gathering the full "
            "state dict offloads it to CPU, which frees the gathered weights when they are on CPU already "
            "(a segfault in torch's FSDP); use state_dict_type=sharded (the default)"
        )
    if not adapter.shardable and kind == "fsdp":
        raise ConfigError(f"adapter={adapter.name} with trainer=fsdp is not supported: {adapter.unshardable_reason}")
    if not adapter.shardable and kind != "single" and n > 1:
        raise ConfigError(
            f"adapter={adapter.name} with trainer={kind} on {n} devices is not supported: {adapter.unshardable_reason}"
        )
    reference.check(adapter, objective, engine=kind, sharded=kind == "fsdp" or (kind == "deepspeed" and stage == 3))
