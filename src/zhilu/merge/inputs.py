"""The models a merge reads: resolved to Hugging Face folders and checked against each other.

Everything here reads ``config.json`` and tokenizer files only: a merge that cannot work fails
before a single weight tensor is loaded.

Accepted inputs: a Hugging Face folder, a training run dir or its ``export/`` dir (for LoRA/DoRA
runs ``export/merged`` already holds the adapter merged into its base), the ``export/adapter``
folder of such a run (its sibling ``merged/`` is used), or any peft adapter folder whose
``base_model_name_or_path`` is a local model (mergekit merges the adapter into that base first).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from zhilu.errors import ConfigError, ModelPathError
from zhilu.model import ModelBuilder, resolve_model_path

log = logging.getLogger(__name__)

#: config.json fields that decide which tensors exist and their shapes
SHAPE_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
              "attention_bias", "mlp_bias")
RUN_CONFIGS = ("config_resolved.yaml", ".hydra/config.yaml")


@dataclass
class ModelInput:
    """One model of a merge.

    Attributes:
        given: what the user wrote (for messages).
        folder: the Hugging Face folder holding ``config.json`` (the base, for a bare adapter).
        adapter: a peft adapter folder merged into ``folder`` first (mergekit ``base+adapter``).
        params: per-model merge parameters written on the entry itself.
    """

    given: str
    folder: Path
    adapter: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """The model as mergekit's YAML names it (absolute, so the config runs from anywhere)."""
        ref = str(self.folder.resolve())
        return f"{ref}+{self.adapter.resolve()}" if self.adapter is not None else ref

    def config(self) -> dict[str, Any]:
        return json.loads((self.folder / "config.json").read_text(encoding="utf-8"))


def resolve_input(entry: Any, where: str) -> ModelInput:
    """``entry``: a path, or a mapping ``{path: ..., <per-model parameter>: ...}``."""
    if isinstance(entry, Mapping):
        params = {str(k): v for k, v in entry.items() if k != "path"}
        if "path" not in entry or not entry["path"]:
            raise ConfigError(f"{where}: a model entry needs a path (got keys {sorted(entry)})")
        given = str(entry["path"])
    elif isinstance(entry, (str, Path)):
        params, given = {}, str(entry)
    else:
        raise ConfigError(f"{where}={entry!r}: expected a path or {{path: ..., weight: ...}}")
    p = Path(given).expanduser()
    adapter_cfg = p / "adapter_config.json"
    if p.is_dir() and adapter_cfg.is_file() and not (p / "config.json").is_file():
        return _adapter_input(given, p, adapter_cfg, params, where)
    try:
        folder = resolve_model_path(p)
    except ModelPathError as exc:
        raise ModelPathError(str(exc).replace("model.path=", f"{where}=", 1)) from None
    check_weights(folder, f"{where}={given}", WEIGHT_FILES)
    return ModelInput(given=given, folder=folder, params=params)


#: file names that hold a model's (or an adapter's) weights
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def check_weights(folder: Path, what: str, patterns) -> None:
    """A folder with a config but no weight file fails here, before any model is read or built."""
    if not any(any(folder.glob(p)) for p in patterns):
        raise ModelPathError(f"{what}: no weights in {folder} (expected {' or '.join(patterns)})")


def _adapter_input(given: str, p: Path, adapter_cfg: Path, params: dict, where: str) -> ModelInput:
    sibling = p.parent / "merged"
    if (sibling / "config.json").is_file():  # export/adapter of a zhilu run: use export/merged
        log.info("%s=%s: using the merged export %s", where, given, sibling)
        check_weights(sibling, f"{where}={given}", WEIGHT_FILES)
        return ModelInput(given=given, folder=sibling, params=params)
    check_weights(p, f"{where}={given}", ADAPTER_WEIGHT_FILES)
    try:
        base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPathError(f"{where}={given}: {adapter_cfg} is not valid JSON ({exc})") from None
    if not base or not Path(base).expanduser().is_dir():
        raise ModelPathError(
            f"{where}={given}: a peft adapter whose base ({base or 'not recorded'}) is not a local folder; "
            "pass its run's export dir (export/merged holds the merged model)"
        )
    folder = resolve_model_path(base)
    check_weights(folder, f"{where}={given} (its base)", WEIGHT_FILES)
    return ModelInput(given=given, folder=folder, adapter=p, params=params)


def base_from_run(run_dir: str | Path, cache_dir: str | Path) -> ModelInput:
    """The weights a training run started from.

    ``model.path`` of the run's config when it had one; for a model built from ``model.config``
    (the tiny default) the same seeded initialisation is rebuilt, with the tokenizer of the run's
    export (so the vocabulary, hence the init, is the run's), and saved to ``cache_dir``.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    run = Path(run_dir).expanduser()
    cfg_file = next((run / name for name in RUN_CONFIGS if (run / name).is_file()), None)
    if cfg_file is None:
        raise ModelPathError(f"base_from_run={run_dir}: not a training run dir (no {' or '.join(RUN_CONFIGS)})")
    cfg = OmegaConf.load(cfg_file)
    model_cfg = cfg.get("model")
    if model_cfg is None or "_target_" not in model_cfg:
        raise ConfigError(f"base_from_run={run_dir}: {cfg_file} has no model section")
    if model_cfg.get("path"):
        return resolve_input(str(model_cfg.path), "base_from_run (its model.path)")
    export = run / "export" / "merged"
    # the dtype the run's weights were made in (the init is cast to it before training)
    saved = json.loads((export / "config.json").read_text()).get("dtype") if (export / "config.json").is_file() else None
    overrides: dict[str, Any] = {"dtype": saved if saved in ("float32", "bfloat16", "float16") else "float32",
                                 "attn_implementation": "sdpa", "gradient_checkpointing": False}
    if not model_cfg.get("tokenizer_path") and _has_tokenizer(export):
        # the tokenizer the run trained with (the shipped one may have changed since): same vocab, same init
        overrides["tokenizer_path"] = str(export)
    builder: ModelBuilder = instantiate(model_cfg, **overrides)
    tokenizer = builder.load_tokenizer()
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = builder.build(tokenizer, device_type="cpu")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    log.info("rebuilt the initial weights of %s (seed %s) in %s", run_dir, builder.seed, out)
    return ModelInput(given=f"base_from_run={run_dir}", folder=out)


def check_compatible(models: list[ModelInput], base: ModelInput | None) -> None:
    """Same architecture, tensor shapes and vocabulary everywhere; no model given twice."""
    inputs = ([base] if base is not None else []) + models
    names = (["base"] if base is not None else []) + [f"models[{i}]" for i in range(len(models))]
    seen: dict[str, str] = {}
    for name, m in zip(names, inputs):
        if m.reference in seen:
            raise ConfigError(f"{name}={m.given} is the same model as {seen[m.reference]}")
        seen[m.reference] = name
    ref_name, ref = names[0], inputs[0]
    ref_shape = _shape_fields(ref)
    for name, m in zip(names[1:], inputs[1:]):
        shape = _shape_fields(m)
        for key in SHAPE_KEYS:
            if ref_shape[key] != shape[key]:
                raise ConfigError(
                    f"{name}={m.given} does not match {ref_name}={ref.given}: "
                    f"{key}={shape[key]!r} vs {ref_shape[key]!r} (different architectures cannot be merged)"
                )
    vocabs = [(name, m, _vocab(m)) for name, m in zip(names, inputs)]
    if vocabs[0][2] is None:
        raise ModelPathError(f"{ref_name}={ref.given}: no tokenizer in {ref.folder} (the merged model copies it)")
    ref_vocab = vocabs[0][2]
    for name, m, vocab in vocabs[1:]:
        if vocab is None:
            log.warning("%s=%s: no tokenizer files; its vocabulary is assumed to match", name, m.given)
        elif vocab != ref_vocab:
            diff = sorted(set(vocab.items()) ^ set(ref_vocab.items()), key=lambda kv: kv[1])[:1]
            raise ConfigError(
                f"{name}={m.given} has a different vocabulary from {ref_name}={ref.given} "
                f"({len(vocab)} vs {len(ref_vocab)} tokens; first difference {diff[0] if diff else '?'})"
            )


def _shape_fields(m: ModelInput) -> dict[str, Any]:
    """SHAPE_KEYS as transformers reads them (defaults filled in, e.g. a head_dim left out of the file)."""
    from transformers import AutoConfig

    raw = m.config()
    try:
        cfg = AutoConfig.from_pretrained(str(m.folder)).to_dict()
    except (OSError, ValueError, KeyError):  # unknown model_type: compare the file as written
        cfg = raw
    out = {key: cfg.get(key, raw.get(key)) for key in SHAPE_KEYS}
    out["model_type"], out["architectures"] = raw.get("model_type"), raw.get("architectures")
    return out


def _vocab(m: ModelInput) -> dict[str, int] | None:
    folder = m.adapter if m.adapter is not None and _has_tokenizer(m.adapter) else m.folder
    if not _has_tokenizer(folder):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    except (OSError, ValueError) as exc:
        raise ModelPathError(f"tokenizer at {folder}: cannot be loaded ({str(exc).splitlines()[0]})") from None


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
