"""Plan a merge (checks, the mergekit config), then run it through mergekit's Python API.

:func:`plan_merge` does every check and writes nothing; :func:`run_plan` writes the merged
Hugging Face model (weights, config, tokenizer, generation config) and ``merge_config.yaml``,
which ``mergekit-yaml merge_config.yaml OUT`` turns into the same tensors. The folder is then put
in the layout of :mod:`zhilu.model.export` (the base's tokenizer files verbatim, a config.json
that transformers 4.x and other tools read the same way).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from zhilu.errors import ConfigError
from zhilu.merge.inputs import ModelInput, base_from_run, check_compatible, resolve_input
from zhilu.merge.methods import MergeMethod
from zhilu.model.export import make_portable

log = logging.getLogger(__name__)

CONFIG_NAME = "merge_config.yaml"
DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass
class MergePlan:
    """A checked merge: what to write where, and the mergekit config that does it."""

    method: MergeMethod
    models: list[ModelInput]
    base: ModelInput | None
    config: dict[str, Any]
    output_dir: Path
    options: dict[str, Any]

    def cli_command(self, out: str = "OUT") -> str:
        flags = [f"--random-seed {self.options['random_seed']}"] if self.options.get("random_seed") is not None else []
        if self.options.get("device") not in (None, "cpu"):
            flags.append(f"--device {self.options['device']}")
        if self.options.get("lora_merge_cache"):
            flags.append(f"--lora-merge-cache {self.options['lora_merge_cache']}")
        return " ".join(["mergekit-yaml", CONFIG_NAME, out, *flags])

    def yaml_text(self) -> str:
        head = (
            f"# zhilu merge={self.method.name}: {', '.join(m.given for m in self.models)}"
            f"{' onto base ' + self.base.given if self.base else ''}\n"
            f"# reproduce with the mergekit CLI: {self.cli_command()}\n"
        )
        return head + yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True)


def plan_merge(
    method: MergeMethod,
    models: Sequence[Any],
    output_dir: str | Path,
    base: str | Mapping | None = None,
    base_from_run_dir: str | None = None,
    dtype: str = "float32",
    out_dtype: str | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    overwrite: bool = False,
) -> MergePlan:
    """Check everything that can be checked without loading a weight, and build the config.

    Args:
        method: a :class:`~zhilu.merge.methods.MergeMethod` (``conf/merge/*.yaml``).
        models: fine-tuned models: paths (HF folder, run dir, export dir) or ``{path, weight, ...}``.
        output_dir: where the merged model goes (must be empty or absent unless ``overwrite``).
        base: the model the fine-tunes started from.
        base_from_run_dir: instead of ``base``: a training run whose starting weights are the base
            (rebuilt into ``<output_dir>-base`` when the run built its model from config).
        dtype: the dtype mergekit computes in; ``out_dtype``: the saved one (default: the base's).
        options: extra :class:`mergekit.options.MergeOptions` fields (``device``, ``lazy_unpickle``...).
        seed: mergekit's ``random_seed`` (DARE's random drop).
    """
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)):
        models = [models] if models else []
    if base is not None and base_from_run_dir:
        raise ConfigError("give base=<path> or base_from_run=<run dir>, not both")
    for name, value in (("dtype", dtype), ("out_dtype", out_dtype)):
        if value is not None and value not in DTYPES:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(DTYPES)}")
    opts = {"random_seed": seed, "device": "cpu", "copy_tokenizer": True, "quiet": True, **dict(options or {})}
    _validate_options(opts)
    inputs = [resolve_input(m, f"models[{i}]") for i, m in enumerate(models)]
    out = Path(output_dir).expanduser()
    _check_output(out, overwrite)
    base_input: ModelInput | None = resolve_input(base, "base") if base is not None else None
    if base_input is not None and base_input.params:
        raise ConfigError(f"base: takes no merge parameters (got {', '.join(sorted(base_input.params))})")
    has_base = base_input is not None or bool(base_from_run_dir)
    params = method.model_parameters([m.params for m in inputs], has_base=has_base)
    if base_from_run_dir:  # after every cheap check: this one writes the rebuilt base
        base_input = base_from_run(base_from_run_dir, out.parent / f"{out.name}-base")
    check_compatible(inputs, base_input)

    entries = [{"model": m.reference, "parameters": p} for m, p in zip(inputs, params)]
    if base_input is not None:
        base_params = method.base_parameters(params)
        entries.append({"model": base_input.reference, **({"parameters": base_params} if base_params else {})})
    config: dict[str, Any] = {"merge_method": method.mergekit_name}
    if base_input is not None:
        config["base_model"] = base_input.reference
    config["models"] = entries
    if globals_ := method.global_parameters(has_base):
        config["parameters"] = globals_
    config["dtype"] = dtype
    config["out_dtype"] = out_dtype or _saved_dtype((base_input or inputs[0]).config(), dtype)
    if any(m.adapter is not None for m in inputs) and not opts.get("lora_merge_cache"):
        opts["lora_merge_cache"] = str((out.parent / f"{out.name}-lora").resolve())  # adapter merged into its base
    return MergePlan(method=method, models=inputs, base=base_input, config=config, output_dir=out, options=opts)


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output_dir={out}: not empty (set overwrite=true to replace it)")


def _saved_dtype(cfg: Mapping[str, Any], compute: str) -> str:
    saved = cfg.get("dtype") or cfg.get("torch_dtype")
    return saved if saved in DTYPES else compute


def require_mergekit() -> None:
    """mergekit is an optional dependency (``pip install 'zhilu[merge]'``)."""
    import importlib.util

    if importlib.util.find_spec("mergekit") is None:
        raise ConfigError("merging needs mergekit: pip install mergekit (or pip install -e '.[merge]')")


def _validate_options(opts: dict[str, Any]) -> None:
    require_mergekit()
    from mergekit.options import MergeOptions
    from pydantic import ValidationError

    unknown = sorted(set(opts) - set(MergeOptions.model_fields))
    if unknown:
        raise ConfigError(f"options.{unknown[0]}: not a mergekit option (see mergekit-yaml --help)")
    try:
        MergeOptions(**opts)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"options.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def run_plan(plan: MergePlan) -> Path:
    """Run mergekit; write the merged model and ``merge_config.yaml`` into ``plan.output_dir``."""
    require_mergekit()
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    text = plan.yaml_text()
    merge_config = MergeConfiguration.model_validate(yaml.safe_load(text))
    out = plan.output_dir
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    options = MergeOptions(**plan.options)
    run_merge(merge_config, str(tmp), options=options, config_source=text)
    # the layout every tool reads (zhilu.model.export): flat rope_theta, use_cache, the base's tokenizer files
    make_portable(tmp, (plan.base or plan.models[0]).folder if options.copy_tokenizer else None)
    (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("merged %s (%s) -> %s", plan.method.name, ", ".join(m.given for m in plan.models), out)
    return out


def merge(method: MergeMethod, models: Sequence[Any], output_dir: str | Path, **kwargs: Any) -> Path:
    """:func:`plan_merge` then :func:`run_plan`; returns the merged model's folder."""
    return run_plan(plan_merge(method, models, output_dir, **kwargs))
