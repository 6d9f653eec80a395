"""BAdam: block coordinate descent with Adam over the decoder layers.

Luo et al. 2024, "BAdam: A Memory Efficient Full Parameter Optimization Method for Large
Language Models", https://arxiv.org/abs/2404.02827.

The parameters are split into blocks (one per decoder layer, optionally the embeddings and the
LM head as blocks of their own). Only the active block has ``requires_grad``, so only it gets
gradients and Adam state; every ``switch_interval`` optimizer steps the next block (by
``switch_mode``) becomes active and Adam's state starts afresh for it, as in the paper. Memory
is the model's weights plus one block's gradients and optimizer state, close to LoRA's, while
every weight of the model is trained over a full sweep.

Written here rather than wrapping the ``badam`` package so it runs inside Lightning's optimizer
loop (closures, gradient clipping, LR schedulers, checkpoint save/restore of the active block).
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from zhilu.adapters.base import Adapter, is_no_decay
from zhilu.errors import ConfigError

log = logging.getLogger(__name__)

SWITCH_MODES = ("ascending", "descending", "random", "fixed")
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def find_blocks(model: nn.Module, include_embedding: bool, include_lm_head: bool) -> list[list[str]]:
    """Parameter names per block: decoder layers in order, then embeddings and LM head if asked."""
    layers: dict[int, list[str]] = defaultdict(list)
    embed, head = [], []
    for name, _ in model.named_parameters():
        m = LAYER.search(name)
        if m:
            layers[int(m.group(1))].append(name)
        elif "embed_tokens" in name:
            embed.append(name)
        elif "lm_head" in name:
            head.append(name)
    if not layers:
        raise ConfigError("adapter=badam: the model has no '.layers.<i>.' decoder layers to use as blocks")
    blocks = [layers[i] for i in sorted(layers)]
    if include_embedding and embed:
        blocks.append(embed)
    if include_lm_head and head:
        blocks.append(head)
    return blocks


class BlockOrder:
    """The sequence of active blocks for a switch mode; random reshuffles every sweep (seeded)."""

    def __init__(self, n_blocks: int, mode: str, start_block: int | None, seed: int) -> None:
        if mode not in SWITCH_MODES:
            raise ConfigError(f"adapter.switch_mode={mode!r}: expected one of {', '.join(SWITCH_MODES)}")
        if start_block is not None and not 0 <= start_block < n_blocks:
            raise ConfigError(f"adapter.start_block={start_block}: must be in [0, {n_blocks - 1}]")
        self.n, self.mode, self.seed = n_blocks, mode, seed
        self.sweep = 0
        self.position = 0
        self._perm = self._permutation(0)
        if mode == "random":
            if start_block is not None:  # the first sweep starts with it, then the rest in random order
                self._perm.remove(start_block)
                self._perm.insert(0, start_block)
            start_block = self._perm[0]
        elif start_block is None:
            start_block = n_blocks - 1 if mode == "descending" else 0
        self.current = start_block

    def _permutation(self, sweep: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed + sweep).shuffle(order)
        return order

    def next(self) -> int:
        if self.mode == "fixed":
            return self.current
        if self.mode == "ascending":
            self.current = (self.current + 1) % self.n
        elif self.mode == "descending":
            self.current = (self.current - 1) % self.n
        else:
            self.position += 1
            if self.position == self.n:
                self.sweep += 1
                self.position = 0
                self._perm = self._permutation(self.sweep)
            self.current = self._perm[self.position]
        return self.current

    def load_state_dict(self, state: dict) -> None:
        self.current, self.sweep, self.position = state["current"], state["sweep"], state["position"]
        self._perm = state["perm"]

    def state_dict(self) -> dict:
        return {"current": self.current, "sweep": self.sweep, "position": self.position, "perm": list(self._perm)}


class BlockOptimizer(torch.optim.Optimizer):
    """Wraps an inner optimizer (AdamW) that only ever sees the active block's parameters.

    The two parameter groups (decay / no decay) persist across switches (LR schedulers hold
    them); a switch swaps their ``params`` and drops the old block's state and gradients.
    """

    def __init__(self, model: nn.Module, blocks: list[list[str]], factory: Callable, lr: float,
                 weight_decay: float, switch_interval: int, order: BlockOrder) -> None:
        if switch_interval < 1:
            raise ConfigError(f"adapter.switch_interval={switch_interval}: must be >= 1")
        self.named = dict(model.named_parameters())
        self.blocks = blocks
        self.switch_interval = switch_interval
        self.order = order
        self.steps_in_block = 0
        self.global_steps = 0
        self._activate(order.current)
        decay, no_decay = self._split(order.current)
        self.inner = factory([
            {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
        ])
        # Share the inner optimizer's groups/state/defaults: schedulers and clipping see them.
        self.param_groups = self.inner.param_groups
        self.defaults = self.inner.defaults
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    @property
    def state(self):  # noqa: D102 - the inner optimizer's state (active block only)
        return self.inner.state

    @state.setter
    def state(self, value):
        pass  # torch.optim.Optimizer.__init__ is not called; nothing to set

    @property
    def active_block(self) -> int:
        return self.order.current

    def _split(self, block: int) -> tuple[list, list]:
        decay, no_decay = [], []
        for name in self.blocks[block]:
            p = self.named[name]
            (no_decay if is_no_decay(name, p) else decay).append(p)
        return decay, no_decay

    def _activate(self, block: int) -> None:
        active = set(self.blocks[block])
        for name, p in self.named.items():
            p.requires_grad_(name in active)
            if name not in active:
                p.grad = None

    def switch(self, block: int) -> None:
        self._activate(block)
        decay, no_decay = self._split(block)
        self.inner.param_groups[0]["params"] = decay
        self.inner.param_groups[1]["params"] = no_decay
        self.inner.state = defaultdict(dict)  # Adam's moments start afresh for the new block
        self.steps_in_block = 0
        log.debug("badam: block %d active", block)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.inner.step(closure)
        self.steps_in_block += 1
        self.global_steps += 1
        if self.steps_in_block >= self.switch_interval:
            self.switch(self.order.next())
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "order": self.order.state_dict(),
                "steps_in_block": self.steps_in_block, "global_steps": self.global_steps}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["order"])
        self.switch(self.order.current)
        self.steps_in_block = state["steps_in_block"]
        self.global_steps = state["global_steps"]
        self.inner.load_state_dict(state["inner"])

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("BlockOptimizer manages its own parameter groups")


class BAdam(Adapter):
    """Args:
    switch_mode: ``ascending`` | ``descending`` | ``random`` | ``fixed`` block order.
    switch_interval: optimizer steps spent on a block before switching.
    start_block: first active block (default: first for ascending/random, last for descending).
    include_embedding / include_lm_head: train the embeddings / LM head as blocks of their own.
    seed: seed of the random order.
    name, reference, shardable, adapter_on_base: the stated abilities (:class:`~zhilu.adapters.base.Adapter`).
    """

    name = "badam"
    shardable = False
    unshardable_reason = (
        "BAdam switches which parameters train (requires_grad) and swaps its optimizer's parameters every "
        "adapter.switch_interval steps, which DDP/FSDP/ZeRO gradient buckets and FSDP's flat parameters cannot "
        "follow once wrapped; train BAdam on one device with trainer=cpu|gpu (its memory is close to LoRA's)"
    )

    def __init__(self, switch_mode: str = "ascending", switch_interval: int = 50, start_block: int | None = None,
                 include_embedding: bool = False, include_lm_head: bool = False, seed: int = 0,
                 **abilities) -> None:
        self.state(**abilities)
        if switch_mode not in SWITCH_MODES:
            raise ConfigError(f"adapter.switch_mode={switch_mode!r}: expected one of {', '.join(SWITCH_MODES)}")
        if switch_interval < 1:
            raise ConfigError(f"adapter.switch_interval={switch_interval}: must be >= 1")
        self.switch_mode = switch_mode
        self.switch_interval = switch_interval
        self.start_block = start_block
        self.include_embedding = include_embedding
        self.include_lm_head = include_lm_head
        self.seed = seed
        self.blocks: list[list[str]] | None = None
        self.optimizer: BlockOptimizer | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        self.blocks = find_blocks(model, self.include_embedding, self.include_lm_head)
        order = BlockOrder(len(self.blocks), self.switch_mode, self.start_block, self.seed)
        active = set(self.blocks[order.current])
        for name, p in model.named_parameters():
            p.requires_grad_(name in active)
        return model

    def build_optimizer(self, model: nn.Module, optimizer_factory: Callable, lr: float, weight_decay: float):
        if self.blocks is None:
            self.apply(model)
        order = BlockOrder(len(self.blocks), self.switch_mode, self.start_block, self.seed)
        self.optimizer = BlockOptimizer(model, self.blocks, optimizer_factory, lr, weight_decay,
                                        self.switch_interval, order)
        return self.optimizer
