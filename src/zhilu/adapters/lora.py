"""LoRA, DoRA and LoRA+ through peft; DoRA is a flag on LoRA, LoRA+ an optimizer grouping.

- LoRA: Hu et al. 2021, https://arxiv.org/abs/2106.09685 (rsLoRA scaling: Kalajdzievski 2023,
  https://arxiv.org/abs/2312.03732)
- DoRA: Liu et al. 2024, https://arxiv.org/abs/2402.09353 (peft ``use_dora=True``: the weight is
  split into a trainable magnitude vector and a LoRA-updated direction)
- LoRA+: Hayou et al. 2024, https://arxiv.org/abs/2402.12354 (B matrices learn ``lr_ratio``
  times faster than A; the paper's default ratio is 16)
- PiSSA: Meng et al. 2024, https://arxiv.org/abs/2404.02948 (``init_lora_weights: pissa`` or
  ``pissa_niter_N``: A and B start from the top-r singular vectors, the base keeps the residual)
- OLoRA: Büyükakyüz 2024, https://arxiv.org/abs/2406.01775 (``init_lora_weights: olora``: A and B
  from a QR decomposition, the base keeps the residual)

PiSSA and OLoRA change the base weights, so the adapter switched off is not the starting model
(their DPO reference is a frozen copy or precomputed), and the trained adapter applies to the
residual base only: their export converts it into a plain LoRA of rank 2r on the original base
(peft's ``path_initial_model_for_weight_conversion``: delta W = BA - B0A0 = [B | -B0][A; A0]).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from zhilu.adapters.base import Adapter, is_no_decay, link_into, save_hf_model
from zhilu.model.export import save_peft_adapter
from zhilu.errors import ConfigError

log = logging.getLogger(__name__)

#: ``init_lora_weights`` values that keep the base as it is (B starts at zero)
PLAIN_INITS = (True, False, "gaussian")
#: values that move the top of the base weights into the adapter (the base keeps the residual)
RESIDUAL_INIT = re.compile(r"^(pissa|pissa_niter_[1-9][0-9]*|olora)$")
#: residual inits (randomised SVD) draw from this seed, so a resumed run rebuilds the same residual base
INIT_SEED = 0


def changes_base(init_lora_weights) -> bool:
    """True for PiSSA/OLoRA inits; a ConfigError for a value this adapter does not support."""
    if isinstance(init_lora_weights, bool) or init_lora_weights in PLAIN_INITS:
        return False
    if isinstance(init_lora_weights, str) and RESIDUAL_INIT.match(init_lora_weights):
        return True
    raise ConfigError(
        f"adapter.init_lora_weights={init_lora_weights!r}: expected true, false, gaussian, pissa, "
        "pissa_niter_<N> or olora"
    )


class LoRA(Adapter):
    """Args:
    r, alpha, dropout: LoRA rank, scaling numerator and dropout.
    target_modules: module names, or ``all-linear`` (every linear layer of the decoder, not ``lm_head``).
    use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
    use_dora: weight-decomposed LoRA (trainable magnitude vectors).
    lean_dora: with ``use_dora``, keep one activation per adapted layer for the magnitude's
        gradient instead of peft's two (:mod:`zhilu.adapters.dora`; same numbers, less memory).
    modules_to_save: modules trained in full next to the adapters (e.g. ``[lm_head]``).
    autocast_adapter_dtype: keep adapter weights in fp32 when the base is bf16/fp16 (peft's
        default; precise updates, but every adapter input is cast to fp32). ``false`` keeps them
        in the base dtype.
    init_lora_weights: ``true`` (B = 0), ``gaussian``, or ``pissa`` / ``pissa_niter_N`` / ``olora``
        (the base keeps the residual; see the module docstring).
    name, reference, shardable, adapter_on_base: the stated abilities (:class:`~zhilu.adapters.base.Adapter`);
        a residual init can give only a ``copy`` or ``precomputed`` reference and ``adapter_on_base: false``.
    """

    name = "lora"
    reference = "disabled"
    adapter_on_base = True
    references = ("disabled", "copy", "precomputed")

    def __init__(
        self,
        r: int = 16,
        alpha: float = 32,
        dropout: float = 0.05,
        target_modules: str | Sequence[str] = "all-linear",
        use_rslora: bool = False,
        use_dora: bool = False,
        modules_to_save: Sequence[str] | None = None,
        init_lora_weights: bool | str = True,
        autocast_adapter_dtype: bool = True,
        lean_dora: bool = True,
        name: str | None = None,
        reference: str | None = None,
        shardable: bool | None = None,
        adapter_on_base: bool | None = None,
    ) -> None:
        if r <= 0:
            raise ConfigError(f"adapter.r={r}: must be a positive integer")
        if not 0 <= dropout < 1:
            raise ConfigError(f"adapter.dropout={dropout}: must be in [0, 1)")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.use_rslora, self.use_dora, self.lean_dora = use_rslora, use_dora, lean_dora
        self.modules_to_save = list(modules_to_save) if modules_to_save else None
        self.init_lora_weights = init_lora_weights
        self.autocast_adapter_dtype = autocast_adapter_dtype
        self.residual = changes_base(init_lora_weights)
        if use_dora:
            self.name = "dora"
        if self.residual:
            if use_dora:
                raise ConfigError(f"adapter.use_dora=true with init_lora_weights={init_lora_weights}: not supported "
                                  "(the export's conversion to a plain LoRA has no magnitude vectors)")
            self.name = init_lora_weights.split("_")[0]
            self.reference, self.adapter_on_base = "copy", False
            self.references = ("copy", "precomputed")
        self.initial_adapter: dict[str, torch.Tensor] | None = None  # residual inits: A0, B0 for the export
        self.state(name, reference, shardable, adapter_on_base)

    def reference_note(self) -> str:
        return (f"init_lora_weights={self.init_lora_weights} leaves the residual in the base, so the adapter "
                "switched off is not the starting model")

    def peft_config(self):
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            modules_to_save=self.modules_to_save,
            init_lora_weights=self.init_lora_weights,
        )

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model, get_peft_model_state_dict

        try:
            with torch.random.fork_rng(devices=[], enabled=self.residual):
                if self.residual:  # pissa_niter's randomised SVD: the same residual base on every build
                    torch.manual_seed(INIT_SEED)
                peft_model = get_peft_model(model, self.peft_config(),
                                            autocast_adapter_dtype=self.autocast_adapter_dtype)
        except ValueError as exc:
            raise ConfigError(f"adapter.target_modules={self.target_modules}: {str(exc).splitlines()[0]}") from None
        if self.residual:
            self.initial_adapter = {k: v.detach().to("cpu", copy=True).contiguous()
                                    for k, v in get_peft_model_state_dict(peft_model).items()}
        if self.use_dora and self.lean_dora:
            from zhilu.adapters.dora import make_lean

            make_lean(peft_model)
        return peft_model

    def disabled(self, model: nn.Module):
        return model.disable_adapter()

    def checkpoint_keys(self, model: nn.Module) -> set[str]:
        """Lightning checkpoints hold only the adapter weights (the base is rebuilt from config)."""
        return {n for n, p in model.named_parameters() if p.requires_grad}

    def base_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Merged weights under the base model's names; the live model is left as it was."""
        model.merge_adapter(safe_merge=True)
        try:
            sd = model.get_base_model().state_dict()
            out = {}
            for k, v in sd.items():
                if "lora_" in k or ".original_module." in k:
                    continue
                k = k.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
                out[k] = v.detach().clone()
        finally:
            model.unmerge_adapter()
        return out

    def export(self, model: nn.Module, tokenizer, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
        out = Path(out_dir)
        adapter_dir = out / "adapter"
        out.mkdir(parents=True, exist_ok=True)
        if self.adapter_on_base:
            save_peft_adapter(model, adapter_dir, tokenizer)
        else:
            self.save_converted(model, adapter_dir, tokenizer)
        merged = out / "merged"
        save_hf_model(model.get_base_model(), merged, tokenizer, state_dict=self.base_state_dict(model), dtype=dtype)
        link_into(merged, out)
        return merged

    def save_converted(self, model: nn.Module, adapter_dir: Path, tokenizer=None) -> None:
        """Save the trained residual-init adapter as a plain LoRA (rank 2r) on the original base."""
        from safetensors.torch import save_file

        if self.initial_adapter is None:
            raise ConfigError(f"adapter={self.name}: export before apply(); no initial adapter to convert from")
        init_dir = adapter_dir.parent / "adapter_init"  # peft loads it as an adapter named after the folder
        shutil.rmtree(init_dir, ignore_errors=True)
        init_dir.mkdir(parents=True)
        try:
            save_file(self.initial_adapter, str(init_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
            save_peft_adapter(model, adapter_dir, tokenizer, path_initial_model_for_weight_conversion=str(init_dir))
        finally:
            shutil.rmtree(init_dir, ignore_errors=True)


class LoRAPlus(LoRA):
    """LoRA+ : the optimizer gives every B matrix ``lr * lr_ratio``.

    Groups (weight decay kept per group): A matrices (and other matrices) at ``lr``; B matrices
    at ``lr * lr_ratio``; embedding B matrices at ``lr_embedding``; vectors (DoRA magnitudes,
    norms, biases) at ``lr`` without decay.
    """

    name = "loraplus"

    def __init__(self, lr_ratio: float = 16.0, lr_embedding: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        if lr_ratio <= 0:
            raise ConfigError(f"adapter.lr_ratio={lr_ratio}: must be positive")
        self.lr_ratio = lr_ratio
        self.lr_embedding = lr_embedding
        if kwargs.get("name") is None and not self.residual:
            self.name = "loraplus_dora" if self.use_dora else "loraplus"

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        groups = {
            "A": {"params": [], "lr": lr, "weight_decay": weight_decay},
            "B": {"params": [], "lr": lr * self.lr_ratio, "weight_decay": weight_decay},
            "embedding_B": {"params": [], "lr": self.lr_embedding, "weight_decay": weight_decay},
            "no_decay": {"params": [], "lr": lr, "weight_decay": 0.0},
        }
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_embedding_B" in name:
                key = "embedding_B"
            elif "lora_B" in name:
                key = "B"
            elif is_no_decay(name, p):
                key = "no_decay"
            else:
                key = "A"
            groups[key]["params"].append(p)
        return [dict(g, name=k) for k, g in groups.items() if g["params"]]

