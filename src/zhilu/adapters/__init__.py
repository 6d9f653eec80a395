"""Adapters (full, LoRA, LoRA+, DoRA, BAdam), each a small object chosen by ``adapter=``."""

from zhilu.adapters.badam import BAdam
from zhilu.adapters.base import Adapter
from zhilu.adapters.full import FullFineTune
from zhilu.adapters.lora import LoRA, LoRAPlus

__all__ = ["Adapter", "BAdam", "FullFineTune", "LoRA", "LoRAPlus"]
