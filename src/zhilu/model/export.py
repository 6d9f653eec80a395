"""Hugging Face folders that every downstream tool reads the same way, not only transformers 5.

transformers 5 writes ``config.json`` with RoPE only under ``rope_parameters`` and tokenizers with
``tokenizer_class: TokenizersBackend``; transformers 4.x then loads the model with the default
``rope_theta`` (10000 instead of Llama-3's 500000: a different model, silently) and cannot load the
tokenizer at all, and vLLM, SGLang, TGI and llama.cpp's GGUF converter read these files themselves.
Every export of the project (training ``export/``, ``export/adapter/``, ``python -m zhilu.merge``)
goes through here:

- ``config.json``: transformers 5's ``rope_parameters`` *and* the flat ``rope_theta`` (and
  ``rope_scaling`` for non-default RoPE) that the rest of the ecosystem reads; ``torch_dtype`` and
  ``dtype`` of the saved weights; ``use_cache: true`` (training turns the cache off in memory).
- Weights in ``export.dtype`` (default: the dtype the base model was stored in).
- Tokenizer: when training left it as loaded, the base folder's tokenizer and generation files are
  copied byte for byte; otherwise (or when the source is itself in a transformers-5-only format) a
  ``PreTrainedTokenizerFast`` layout is written that transformers 4.40+ and 5.x both load (chat
  template inside ``tokenizer_config.json`` for 4.4x and in ``chat_template.jinja``,
  ``special_tokens_map.json``, ``added_tokens_decoder``).
- peft adapters: ``adapter_config.json`` without the fields that hold their default value (newer
  peft releases write dozens, which older ones reject as unknown); a field set to anything else is
  kept, so an adapter that needs a newer peft says so when loaded by an older one.

Format references: https://huggingface.co/docs/transformers/main_classes/configuration,
https://huggingface.co/docs/transformers/main_classes/tokenizer,
https://huggingface.co/docs/peft/package_reference/lora.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from zhilu.errors import ConfigError

log = logging.getLogger(__name__)

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
EXPORT_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
#: tokenizer and generation files copied verbatim from the base when the tokenizer is unchanged
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "added_tokens.json")
GENERATION_FILE = "generation_config.json"
#: tokenizer classes that only transformers 5 knows (4.x raises "Tokenizer class ... does not exist")
V5_ONLY_TOKENIZER_CLASSES = ("TokenizersBackend",)
#: adapter_config.json keys kept even at their default value (what every peft release needs to read)
PEFT_CORE_KEYS = ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                  "base_model_name_or_path", "inference_mode", "use_dora", "use_rslora", "modules_to_save",
                  "fan_in_fan_out", "init_lora_weights", "revision")


# ------------------------------------------------------------------------------------ dtype
def export_dtype(choice: str | None, default: torch.dtype) -> torch.dtype:
    """``export.dtype``: ``null`` = ``default`` (the base model's), else float32/bfloat16/float16."""
    if choice in (None, "", "auto", "null"):
        return default
    if choice not in EXPORT_DTYPES:
        raise ConfigError(f"export.dtype={choice!r}: expected null (the base model's) or one of "
                          f"{', '.join(EXPORT_DTYPES)}")
    return EXPORT_DTYPES[choice]


def saved_dtype(folder: str | Path) -> torch.dtype | None:
    """The dtype a Hugging Face folder's ``config.json`` says its weights are stored in."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return EXPORT_DTYPES.get(name) if isinstance(name, str) else None


def cast_state_dict(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating tensors to ``dtype``; tensors that shared storage (tied weights) still share it."""
    if dtype is None:
        return dict(sd)
    out, done = {}, {}
    for k, v in sd.items():
        if not v.is_floating_point() or v.dtype == dtype:
            out[k] = v
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if key not in done:
            done[key] = v.detach().to(dtype)
        out[k] = done[key]
    return out


# ----------------------------------------------------------------------------------- config
def portable_config(cfg: Mapping[str, Any], dtype_name: str | None = None) -> dict[str, Any]:
    """``config.json`` as transformers 4.x, 5.x, vLLM and the GGUF converter all read it."""
    out = dict(cfg)
    rope = out.get("rope_parameters")
    if isinstance(rope, Mapping) and "rope_theta" in rope:  # a per-layer-type dict has no rope_theta
        out["rope_theta"] = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            out["rope_scaling"] = {**scaling, "type": scaling["rope_type"]}
        else:
            out.pop("rope_scaling", None)
    if dtype_name is not None:
        out["torch_dtype"] = out["dtype"] = dtype_name
    out["use_cache"] = True
    return out


def write_portable_config(folder: str | Path, dtype_name: str | None = None) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    cfg = portable_config(json.loads(path.read_text(encoding="utf-8")), dtype_name)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return cfg


# -------------------------------------------------------------------------------- tokenizer
def tokenizer_source(tokenizer) -> Path | None:
    """The folder the tokenizer was loaded from (``name_or_path``), if it is a local tokenizer folder."""
    p = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if str(p) and p.is_dir() and any((p / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return p
    return None


def _fingerprint(tok) -> tuple:
    specials = tuple(getattr(tok, n, None) for n in ("bos_token", "eos_token", "unk_token"))
    return tok.get_vocab(), specials, tok.chat_template


def tokenizer_unchanged(tokenizer, source: Path) -> bool:
    """Same vocabulary, BOS/EOS/UNK and chat template as the files in ``source``.

    The pad token is not compared: :func:`zhilu.model.builder.prepare_tokenizer` sets one in memory
    for batching (Llama-3 ships none), which is not a change the export should carry.
    """
    from transformers import AutoTokenizer

    try:
        fresh = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError):
        return False
    return _fingerprint(fresh) == _fingerprint(tokenizer)


def portable_source(source: Path) -> bool:
    """Whether transformers 4.x can load the tokenizer files in ``source`` as they are."""
    try:
        cfg = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return cfg.get("tokenizer_class") not in V5_ONLY_TOKENIZER_CLASSES


def copy_files(source: Path, folder: Path, names) -> list[str]:
    copied = []
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
            copied.append(name)
    return copied


def _added_token(tok) -> dict[str, Any]:
    return {"content": tok.content, "lstrip": tok.lstrip, "normalized": tok.normalized, "rstrip": tok.rstrip,
            "single_word": tok.single_word, "special": tok.special}


def write_portable_tokenizer(tokenizer, folder: Path, same_as: Path | None = None) -> None:
    """A ``PreTrainedTokenizerFast`` folder (transformers 4.40+ and 5.x): tokenizer.json + config + map.

    ``same_as``: a folder holding this very tokenizer, whose ``tokenizer.json`` is copied verbatim.
    """
    folder = Path(folder)
    if same_as is not None and (same_as / "tokenizer.json").is_file():
        shutil.copyfile(same_as / "tokenizer.json", folder / "tokenizer.json")
    else:
        (folder / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(pretty=True), encoding="utf-8")
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                if getattr(tokenizer, k, None) is not None}
    extra = list(getattr(tokenizer, "extra_special_tokens", None) or getattr(tokenizer, "additional_special_tokens",
                                                                             None) or [])
    cfg: dict[str, Any] = {
        "added_tokens_decoder": {str(i): _added_token(t) for i, t in sorted(tokenizer.added_tokens_decoder.items())},
        **specials,
        "clean_up_tokenization_spaces": bool(tokenizer.clean_up_tokenization_spaces),
        "model_input_names": list(tokenizer.model_input_names),
        "model_max_length": int(tokenizer.model_max_length),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if extra:
        cfg["additional_special_tokens"] = extra
    if isinstance(tokenizer.chat_template, str):
        cfg["chat_template"] = tokenizer.chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    smap = dict(specials, **({"additional_special_tokens": extra} if extra else {}))
    (folder / "special_tokens_map.json").write_text(json.dumps(smap, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
    if isinstance(tokenizer.chat_template, str):  # transformers >= 4.50 and 5.x read this file first
        (folder / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    for stale in ("tokenizer.model", "added_tokens.json"):
        (folder / stale).unlink(missing_ok=True)


def save_tokenizer(tokenizer, folder: str | Path) -> str:
    """Write the tokenizer (and, if it is unchanged, the base's generation config) into ``folder``.

    Returns what was done: ``copied`` (the base's files verbatim), ``portable`` (the base's
    ``tokenizer.json`` verbatim, a portable config written) or ``written`` (everything written).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = tokenizer_source(tokenizer)
    unchanged = source is not None and tokenizer_unchanged(tokenizer, source)
    if unchanged and portable_source(source):
        copy_files(source, folder, TOKENIZER_FILES)
        copy_generation_config(source, folder)
        return "copied"
    write_portable_tokenizer(tokenizer, folder, source if unchanged else None)
    if unchanged:
        copy_generation_config(source, folder)
    return "portable" if unchanged else "written"


def copy_generation_config(source: Path | None, folder: Path) -> bool:
    """The base's ``generation_config.json`` verbatim (its stop tokens and sampling defaults)."""
    if source is not None and (source / GENERATION_FILE).is_file():
        shutil.copyfile(source / GENERATION_FILE, Path(folder) / GENERATION_FILE)
        return True
    return False


# ---------------------------------------------------------------------------------- folders
def save_hf_model(model: nn.Module, folder: str | Path, tokenizer, state_dict: dict | None = None,
                  dtype: torch.dtype | None = None) -> Path:
    """A complete Hugging Face folder, atomically (``folder.tmp`` then a rename).

    ``dtype``: the saved weights' dtype (``None``: as they are in memory).
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = cast_state_dict(sd, dtype)
    first = next((v for v in sd.values() if v.is_floating_point()), None)  # save_pretrained empties sd
    model.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
    write_portable_config(tmp, DTYPE_NAMES.get(first.dtype) if first is not None else None)
    if tokenizer is not None:
        save_tokenizer(tokenizer, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def portable_adapter_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``adapter_config.json`` that older peft releases load: fields at their default value dropped.

    A loader fills a missing field with its default, so dropping one changes nothing for a release
    that knows it and spares a release that does not (peft < 0.18 raises on unknown LoraConfig fields).
    """
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(cfg.get("peft_type"))
    if config_cls is None:
        return dict(cfg)
    defaults = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    out = {}
    for k, v in cfg.items():
        if k == "peft_version":  # metadata newer releases add; older ones take it for an unknown field
            continue
        if k in PEFT_CORE_KEYS or k not in defaults or _jsonish(defaults[k]) != v:
            out[k] = v
    return out


def _jsonish(value: Any) -> Any:
    """A dataclass default as it reads back from JSON (enums as their value, tuples as lists)."""
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def save_peft_adapter(model: nn.Module, folder: str | Path, tokenizer, **save_kwargs) -> Path:
    """peft's ``save_pretrained(**save_kwargs)`` with a portable ``adapter_config.json`` and the tokenizer beside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), **save_kwargs)
    path = folder / "adapter_config.json"
    if path.is_file():
        cfg = portable_adapter_config(json.loads(path.read_text(encoding="utf-8")))
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder)
    return folder


def make_portable(folder: str | Path, tokenizer_from: str | Path | None) -> None:
    """Rewrite a folder another tool wrote (mergekit): portable config, the base's tokenizer files."""
    folder = Path(folder)
    write_portable_config(folder, _weights_dtype_name(folder))
    if tokenizer_from is None:
        return
    from transformers import AutoTokenizer

    src = Path(tokenizer_from)
    for name in TOKENIZER_FILES:  # whatever the other tool re-saved goes; the source's files come back
        (folder / name).unlink(missing_ok=True)
    if portable_source(src):
        copy_files(src, folder, TOKENIZER_FILES)
    else:
        write_portable_tokenizer(AutoTokenizer.from_pretrained(str(src)), folder, same_as=src)
    copy_generation_config(src, folder)


def _weights_dtype_name(folder: Path) -> str | None:
    """The dtype of the first floating tensor stored in the folder's safetensors files."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                t = fh.get_slice(key)
                name = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(t.get_dtype())
                if name:
                    return name
    return None


def link_into(src: Path, dst: Path) -> None:
    """Hard-link ``src``'s files into ``dst`` so ``dst`` itself loads as a HF model (no extra disk)."""
    for f in Path(src).iterdir():
        if not f.is_file():
            continue
        target = Path(dst) / f.name
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
