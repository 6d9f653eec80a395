"""Adapter x objective x strategy pairs that an engine cannot run, refused before anything loads."""

from __future__ import annotations

from omegaconf import DictConfig

from zhilu.errors import ConfigError
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
    if adapter.name == "badam" and kind == "fsdp":
        raise ConfigError(
            "adapter=badam with trainer=fsdp is not supported: BAdam switches which parameters train "
            "(requires_grad) and swaps its optimizer's parameters during the run, which FSDP's flat "
            "parameters cannot follow once wrapped; train BAdam with trainer=cpu|gpu (its memory is close to LoRA's)"
        )
    if adapter.name == "badam" and kind != "single" and n > 1:
        raise ConfigError(
            f"adapter=badam with trainer={kind} on {n} devices is not supported: BAdam switches which "
            "parameters have gradients every adapter.switch_interval steps, which DDP/FSDP/ZeRO gradient "
            "buckets cannot follow; train BAdam on one device (its memory is close to LoRA's)"
        )
    needs_copy = getattr(objective, "needs_reference_copy", None)
    if callable(needs_copy) and needs_copy(adapter) and (kind == "fsdp" or (kind == "deepspeed" and stage == 3)):
        raise ConfigError(
            f"objective=dpo with adapter={adapter.name} needs a frozen copy of the policy as reference, which "
            f"cannot be copied from a model sharded by trainer={kind}; use a peft adapter (its reference is "
            "the adapter switched off), a reference-free loss (simpo, orpo), or ZeRO stage 2"
        )
