"""DoRA with one saved activation per adapted layer instead of two, and fewer elementwise passes.

DoRA: Liu et al. 2024, https://arxiv.org/abs/2402.09353. An adapted linear layer computes

    y = g * (W x + s * B A x)          g = m / ||W + s B A||_c   (the norm detached, paper §4.3)

and, with LoRA dropout on the adapter input ``x'``, ``y = W x - W x' + g * (W x' + s * B A x')``.
peft writes this as ``W x + (g - 1) * W x' + g * s * B A x'``: two products, for which autograd keeps
both ``W x'`` and ``B A x'`` (two ``tokens x out`` tensors per layer), and five elementwise passes
over the output. The magnitude's gradient needs only the sum ``W x' + s * B A x'``, so
:class:`_DoraScale` keeps that one tensor; without dropout the layer output is that function alone.
In eval mode without autograd, ``g`` is cached until its weights change (generation with an unmerged adapter).

Under bf16 autocast the sum is held in the activation dtype (bf16), as peft holds its two terms:
one more rounding before the fp32 scale, of the size of the output's own cast back to bf16.

Everything else (parameters, the norm, merging, the state dict) is peft's: :func:`make_lean` swaps
the classes of peft's DoRA objects in place, adding no state, so checkpoints and exports are
unchanged and ``adapter.lean_dora=false`` gives peft's own layer back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from peft.tuners.lora.dora import DoraLinearLayer
from peft.tuners.lora.variants import DoraLinearVariant
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import transpose


class _DoraScale(torch.autograd.Function):
    """``g * (base + s * lora)``, saving ``base + s * lora`` and ``g`` for backward."""

    @staticmethod
    def forward(ctx, base: torch.Tensor, lora: torch.Tensor, g: torch.Tensor, s: float) -> torch.Tensor:
        combined = torch.add(base, lora, alpha=s)
        ctx.save_for_backward(combined, g)
        ctx.s = s
        ctx.dtypes = (base.dtype, lora.dtype)
        return combined * g

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        combined, g = ctx.saved_tensors
        base_dtype, lora_dtype = ctx.dtypes
        grad_base = grad_lora = grad_g = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_combined = grad * g
            if ctx.needs_input_grad[0]:
                grad_base = grad_combined.to(base_dtype)
            if ctx.needs_input_grad[1]:
                grad_lora = (grad_combined * ctx.s).to(lora_dtype)
        if ctx.needs_input_grad[2]:
            flat = (grad * combined).reshape(-1, combined.shape[-1])
            grad_g = flat.sum(0, dtype=g.dtype).reshape(g.shape)
        return grad_base, grad_lora, grad_g, None


class LeanDoraLinearLayer(DoraLinearLayer):
    """peft's DoRA layer (same parameter and state) whose output goes through :class:`_DoraScale`."""

    def scale(self, *, lora_A, lora_B, scaling, base_layer, dtype, adapter_name="default") -> torch.Tensor:
        """``g = m / ||W + s B A||_c`` as a ``(1, out)`` row; gradient flows to ``m`` only.

        In eval mode without autograd (validation, generation) ``g`` is kept until the module goes back
        to train mode, or one of the tensors it comes from is replaced, moved or changed in place
        (identity, storage, version counter): an unmerged DoRA adapter then decodes without
        recomputing a weight-sized norm per layer and token. (Train mode clears it because sharding
        engines swap parameter storage without bumping version counters.)
        """
        cacheable = not self.training and not torch.is_grad_enabled()
        if cacheable:
            sources = (self.weight, lora_A.weight, lora_B.weight, base_layer.weight)
            key = (adapter_name, dtype, scaling, *((id(t), t.data_ptr(), t._version) for t in sources))
            cached = getattr(self, "_scale_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1]
        weight = dequantize_module_weight(base_layer).to(dtype)
        with torch.no_grad():  # a constant (DoRA §4.3): no graph, no weight-sized saved tensors
            lora_weight = self.get_lora_weight(lora_A=lora_A, lora_B=lora_B, adapter_name=adapter_name)
            norm = self.get_weight_norm(weight=weight, lora_weight=lora_weight.to(dtype), scaling=scaling,
                                        adapter_name=adapter_name)
        g = (self.weight / norm).view(1, -1)
        if cacheable:
            self._scale_cache = (key, g)
        return g

    def train(self, mode: bool = True):
        if mode:
            self._scale_cache = None
        return super().train(mode)

    def forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None, adapter_name="default"):
        """peft's contract: the amount to add to the base layer's output."""
        g = self.scale(lora_A=lora_A, lora_B=lora_B, scaling=scaling, base_layer=base_layer, dtype=x.dtype,
                       adapter_name=adapter_name)
        if base_result is None:  # dropout: the base projection of the dropped-out input
            weight = dequantize_module_weight(base_layer).to(x.dtype)
            base_result = F.linear(x, transpose(weight, self.fan_in_fan_out))
        elif base_layer.bias is not None:
            base_result = base_result - base_layer.bias
        return _DoraScale.apply(base_result, lora_B(lora_A(x)), g, scaling) - base_result

    def __repr__(self) -> str:
        return "lora.dora_lean." + nn.Module.__repr__(self)


class LeanDoraLinearVariant(DoraLinearVariant):
    """Without dropout and bias (Llama's case) the output is ``_DoraScale`` of the base output alone."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        dora = module.lora_magnitude_vector[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        base_layer = module.get_base_layer()
        no_dropout = isinstance(dropout, nn.Identity) or not module.training
        if not (isinstance(dora, LeanDoraLinearLayer) and no_dropout and base_layer.bias is None):
            return DoraLinearVariant.forward(module, active_adapter, x, result, **kwargs)
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        scaling = module.scaling[active_adapter]
        g = dora.scale(lora_A=lora_A, lora_B=lora_B, scaling=scaling, base_layer=base_layer, dtype=x.dtype,
                       adapter_name=active_adapter)
        return _DoraScale.apply(result, lora_B(lora_A(x)), g, scaling)


def make_lean(model: nn.Module) -> int:
    """Give every peft DoRA linear layer in ``model`` the lean forward; returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is DoraLinearLayer:
            module.__class__ = LeanDoraLinearLayer
            n += 1
        for name, variant in getattr(module, "lora_variant", {}).items():
            if type(variant) is DoraLinearVariant:
                module.lora_variant[name].__class__ = LeanDoraLinearVariant
    return n
