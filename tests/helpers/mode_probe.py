"""Test-only probes of the model's train/eval mode during a real ``trainer.fit`` (issue 21).

``ProbeSFT`` is the SFT objective plus, inside every ``training_step``/``validation_step``, a record of
which modules are in training mode, of whether two forward passes of the same batch differ (dropout
on), and of the bytes autograd saves for the backward pass (activations only: storages of the
model's parameters are not counted). ``ProbeCounts`` (a callback) counts how often each decoder
layer's forward body runs with gradients on per optimizer step (2 when the layer is recomputed in the
backward pass). Every rank writes ``out_dir/rank{r}.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from zhilu.objectives.logps import label_logps
from zhilu.objectives.sft import SFT


def decoder_layers(model) -> list[torch.nn.Module]:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return [m for m in model.modules() if isinstance(m, LlamaDecoderLayer)]


class ProbeSFT(SFT):
    def __init__(self, out_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out = Path(out_dir)
        self.steps: list[dict] = []
        self.val: list[dict] = []
        self.calls: list[int] = []

    def setup(self, module) -> None:
        layers = decoder_layers(module.model)
        self.calls = [0] * len(layers)
        for i, layer in enumerate(layers):
            # transformers checkpoints the layer's ``forward``, not its ``__call__``, so the layer's own hooks run
            # once; the body's first module call marks each run of the body (a recomputation may stop early,
            # after that call, once it has rebuilt what the backward pass needs)
            layer.input_layernorm.register_forward_pre_hook(self._counter(i))

    def _counter(self, i: int):
        def hook(mod, args):
            if torch.is_grad_enabled():  # the training forward and its recomputation, not the probes
                self.calls[i] += 1

        return hook

    def loss(self, module, batch, stage):
        not_training = [n for n, m in module.named_modules() if not m.training]
        if stage != "train":
            self.val.append({"training": [n for n, m in module.named_modules() if m.training][:5]})
            return super().loss(module, batch, stage)
        with torch.no_grad():
            a = label_logps(module.model, batch, "torch").token_logps
            b = label_logps(module.model, batch, "torch").token_logps
        params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        saved: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, logs = super().loss(module, batch, stage)
        self.steps.append({"not_training": not_training[:5], "n_not_training": len(not_training),
                           "forwards_differ": not torch.equal(a, b), "saved_bytes": sum(saved.values()),
                           "tokens": batch["input_ids"].numel()})
        return loss, logs


class ProbeCounts(L.Callback):
    """Decoder-layer forward calls (with gradients on) per optimizer step; writes the JSON at fit end."""

    def __init__(self, out_dir: str) -> None:
        self.out = Path(out_dir)
        self.per_step: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        probe = pl_module.objective
        probe.calls = [0] * len(probe.calls)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.per_step.append(list(pl_module.objective.calls))

    def on_fit_end(self, trainer, pl_module) -> None:
        probe = pl_module.objective
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"steps": probe.steps, "val": probe.val, "layer_calls": self.per_step}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
