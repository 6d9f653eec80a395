"""Build a Llama-3 ``LlamaForCausalLM``: from a config (the embedded default) or a local folder.

The embedded default (``model=llama3_tiny``) has Llama-3's architecture (GQA, RoPE theta 500000,
SwiGLU MLP, RMSNorm, untied embeddings) at a size that trains on a laptop CPU, with the project's
own tokenizer. ``model.path`` points at a Hugging Face folder (Meta-Llama-3-8B-Instruct, or any
export of this project); a training run dir or its ``export/`` folder is accepted too.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from zhilu.errors import ConfigError, ModelPathError
from zhilu.model import attention as _attention  # registers attn_implementation="sdpa_varlen"
from zhilu.model.chat_template import meta_template

log = logging.getLogger(__name__)

ATTN_CHOICES = ("auto", "eager", "sdpa", "sdpa_varlen", "flex_attention", "flash_attention_2")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def shipped_tokenizer_dir() -> Path:
    return Path(str(resources.files("zhilu") / "assets" / "tokenizer"))


def resolve_model_path(path: str | Path) -> Path:
    """The Hugging Face folder for ``path``: itself, or ``export/merged`` of a run dir or export dir."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelPathError(f"model.path={path}: no such directory")
    if not p.is_dir():
        raise ModelPathError(f"model.path={path}: not a directory")
    for candidate in (p, p / "merged", p / "export" / "merged"):
        if (candidate / "config.json").is_file():
            cfg_file = candidate / "config.json"
            try:
                json.loads(cfg_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelPathError(f"model.path={path}: {cfg_file} is not valid JSON ({exc})") from None
            return candidate
    raise ModelPathError(
        f"model.path={path}: not a Hugging Face model folder (no config.json, nor export/merged/config.json)"
    )


def pick_attn_implementation(choice: str, device_type: str | None = None) -> str:
    """``auto``: FlashAttention-2 on CUDA when flash-attn is installed, else PyTorch sdpa.

    On CPU ``auto`` is ``sdpa_varlen``: sdpa, plus per-document attention for packed batches
    (:mod:`zhilu.model.attention`); on CUDA without flash-attn, sdpa with a block-diagonal mask.
    """
    if choice not in ATTN_CHOICES:
        raise ConfigError(f"model.attn_implementation={choice!r}: expected one of {', '.join(ATTN_CHOICES)}")
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "flash_attention_2" or (choice == "auto" and device_type == "cuda"):
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            if choice == "flash_attention_2":
                raise ConfigError(
                    "model.attn_implementation=flash_attention_2 needs flash-attn: "
                    "pip install -r requirements-gpu.txt (CUDA only); or use sdpa"
                ) from None
            return "sdpa"
        if device_type != "cuda":
            if choice == "flash_attention_2":
                raise ConfigError("model.attn_implementation=flash_attention_2 needs a CUDA device")
            return "sdpa"
        return "flash_attention_2"
    if choice == "auto":
        return _attention.NAME if device_type == "cpu" else "sdpa"
    return choice


def pick_dtype(choice: str) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that supports it, fp32 otherwise (CPU training is fp32)."""
    if choice == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if choice not in DTYPES:
        raise ConfigError(f"model.dtype={choice!r}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[choice]


class ModelBuilder:
    """What ``conf/model/*.yaml`` instantiates: knows how to make the tokenizer and the model.

    Args:
        path: local Hugging Face folder with weights and tokenizer; ``None`` builds from ``config``.
        config: ``LlamaConfig`` fields for a model built from scratch (random init from the seed).
        tokenizer_path: tokenizer folder; defaults to ``path``, else the tokenizer shipped with zhilu.
        dtype: ``auto`` | ``float32`` | ``bfloat16`` | ``float16``.
        attn_implementation: ``auto`` | ``sdpa`` | ``sdpa_varlen`` | ``eager`` | ``flex_attention`` |
            ``flash_attention_2``.
        gradient_checkpointing: recompute decoder-layer activations in the backward pass.
        seed: initialisation seed of a model built from ``config``.
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        dtype: str = "auto",
        attn_implementation: str = "auto",
        gradient_checkpointing: bool = False,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        if path is None and not config:
            raise ConfigError("model: give model.path (a local Hugging Face folder) or model.config")
        self.path = str(path) if path is not None else None
        self.config = dict(config or {})
        self.tokenizer_path = tokenizer_path
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing
        self.name = name or (Path(self.path).name if self.path else "llama3_tiny")
        self.seed = seed
        pick_dtype(dtype)  # validate early
        if attn_implementation not in ATTN_CHOICES:
            pick_attn_implementation(attn_implementation)

    def base_dtype(self) -> torch.dtype:
        """The dtype the base weights are stored in (``model.path``'s config.json), else the built one.

        An export keeps it by default (``export.dtype``): a bf16 checkpoint fine-tuned in fp32 on a CPU
        is exported in bf16, the embedded default in the dtype it was built in (fp32 on a CPU).
        """
        from zhilu.model.export import saved_dtype

        if self.path is not None:
            stored = saved_dtype(resolve_model_path(self.path))
            if stored is not None:
                return stored
        return pick_dtype(self.dtype)

    # ---------------------------------------------------------------- tokenizer
    def load_tokenizer(self):
        from transformers import AutoTokenizer

        if self.tokenizer_path is not None:
            tok_dir = Path(self.tokenizer_path).expanduser()
            if not (tok_dir / "tokenizer_config.json").is_file() and not (tok_dir / "tokenizer.json").is_file():
                raise ModelPathError(f"model.tokenizer_path={self.tokenizer_path}: no tokenizer files there")
        elif self.path is not None:
            tok_dir = resolve_model_path(self.path)
        else:
            tok_dir = shipped_tokenizer_dir()
        try:
            tok = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError) as exc:
            raise ModelPathError(f"tokenizer at {tok_dir}: cannot be loaded ({str(exc).splitlines()[0]})") from None
        return prepare_tokenizer(tok)

    # -------------------------------------------------------------------- model
    def build(self, tokenizer=None, device_type: str | None = None):
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

        dtype = pick_dtype(self.dtype)
        attn = pick_attn_implementation(self.attn_implementation, device_type)
        if self.path is not None:
            folder = resolve_model_path(self.path)
            try:
                model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation=attn)
            except (OSError, ValueError) as exc:
                raise ModelPathError(
                    f"model.path={self.path}: cannot load weights from {folder} ({str(exc).splitlines()[0]})"
                ) from None
            log.info("loaded %s from %s (%s, %s)", type(model).__name__, folder, dtype, attn)
            # from_pretrained returns the model in eval mode; a model built from a config is in training
            # mode. Eval mode would silently switch off dropout and gradient checkpointing (transformers
            # checkpoints a layer only while it trains), so both builds return a training-mode model.
            model.train()
        else:
            fields = dict(self.config)
            if fields.get("vocab_size") is None:
                if tokenizer is None:
                    raise ConfigError("model.config.vocab_size is null: pass the tokenizer to build()")
                fields["vocab_size"] = len(tokenizer)
            if tokenizer is not None:
                # no pad_token_id, as in Llama-3's own config: the embedding then has no padding_idx
                # (padding never carries labels or attention), which ZeRO-3's partitioned init needs
                fields.setdefault("bos_token_id", tokenizer.bos_token_id)
                fields.setdefault("eos_token_id", tokenizer.eos_token_id)
            config = LlamaConfig(**fields)
            config._attn_implementation = attn
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # the same weights for the same seed, whatever ran before
                model = LlamaForCausalLM(config).to(dtype)
        model.config.use_cache = False
        if tokenizer is not None:
            _set_generation_ids(model, tokenizer)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        return model


def prepare_tokenizer(tok):
    """Llama-3 has no pad token: pad with ``<|finetune_right_pad_id|>`` if present, else EOS. The chat
    template an earlier version of this project wrote becomes Meta's exact string.

    Padding positions never carry labels and are masked out of attention, so the choice only
    matters for the tensors' contents.
    """
    if tok.pad_token is None:
        for candidate in ("<|finetune_right_pad_id|>", "<|end_of_text|>"):
            if candidate in tok.get_vocab():
                tok.pad_token = candidate
                break
        else:
            tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    tok.chat_template = meta_template(tok.chat_template)  # an earlier export's variant -> Meta's bytes
    return tok


def _set_generation_ids(model, tokenizer) -> None:
    """Stop generation at ``<|eot_id|>`` as well as at end-of-text (the Llama-3 instruct setup)."""
    stops = []
    for token in ("<|eot_id|>", "<|end_of_text|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid < model.config.vocab_size:
            stops.append(tid)
    if stops and model.generation_config is not None:
        model.generation_config.eos_token_id = stops
        model.generation_config.pad_token_id = tokenizer.pad_token_id
