"""Merge methods, each a small object that checks its own weights and writes its mergekit entry.

``conf/merge/<name>.yaml`` instantiates one of these; mergekit (Goddard et al. 2024,
https://arxiv.org/abs/2403.13257) does the tensor arithmetic. With ``θ_b`` the base and
``δ_i = θ_i - θ_b`` the task vector of fine-tune ``i``:

- linear (model soups, Wortsman et al. 2022, https://arxiv.org/abs/2203.05482):
  ``θ = Σ w_i θ_i + (1 - Σ w_i) θ_b``; weight 1 is the fine-tune, 0 the base.
- task_arithmetic (Ilharco et al. 2022, https://arxiv.org/abs/2212.04089):
  ``θ = θ_b + λ Σ w_i δ_i``.
- ties (Yadav et al. 2023, https://arxiv.org/abs/2306.01708): keep the top ``density`` fraction
  of each ``δ_i`` by magnitude, elect a sign per parameter (sign of ``Σ w_i δ_i``), add only the
  agreeing entries: ``θ = θ_b + λ Σ_i w_i m_i δ_i`` (divided by ``Σ w_i m_i`` when ``normalize``).
- dare_ties (Yu et al. 2023, https://arxiv.org/abs/2311.03099): drop each entry of ``δ_i`` with
  probability ``1 - density`` and rescale the rest (L1 norm kept), then the TIES sign election.
- slerp (Shoemake 1985, https://doi.org/10.1145/325165.325242): spherical interpolation from the
  base (``t = 0``) to one fine-tune (``t = 1``), per output row.

Every per-model parameter (``weight``, ``density``) is a scalar for all models, a list with one
value per model, or set on a model entry itself (``models=[{path: ..., weight: 0.3}]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from zhilu.errors import ConfigError

PerModel = float | Sequence[float]


def _per_model(name: str, value: PerModel, n: int) -> list[float]:
    """Expand a scalar to ``n`` values, or check that a list has ``n``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != n:
            raise ConfigError(f"merge.{name}={values}: {len(values)} values for {n} model(s); give one per model or a scalar")
        return [_number(f"merge.{name}[{i}]", v) for i, v in enumerate(values)]
    raise ConfigError(f"merge.{name}={value!r}: expected a number or a list of numbers")


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}={value!r}: expected a number")
    if not math.isfinite(value):
        raise ConfigError(f"{where}={value}: must be finite")
    return float(value)


class MergeMethod:
    """Base class. Subclasses name their mergekit method and check their parameters.

    Attributes:
        mergekit_name: the ``merge_method`` written to ``merge_config.yaml``.
        needs_base: the method is defined relative to a base model.
        per_model: parameters that each fine-tuned model carries.
        max_models: most fine-tuned models the method accepts (``None``: any number).
    """

    mergekit_name: ClassVar[str]
    needs_base: ClassVar[bool] = True
    per_model: ClassVar[tuple[str, ...]] = ("weight",)
    max_models: ClassVar[int | None] = None

    def __init__(self, **per_model_defaults: PerModel) -> None:
        self.defaults = per_model_defaults

    @property
    def name(self) -> str:
        return self.mergekit_name

    # ------------------------------------------------------------------ checks
    def model_parameters(self, overrides: Sequence[Mapping[str, Any]], has_base: bool) -> list[dict[str, float]]:
        """One validated parameter dict per fine-tuned model (defaults, then each entry's own keys)."""
        n = len(overrides)
        if n == 0:
            raise ConfigError(f"merge={self.name}: no models to merge (set models=[<run dir | export dir | HF folder>, ...])")
        if self.max_models is not None and n > self.max_models:
            raise ConfigError(f"merge={self.name}: takes at most {self.max_models} fine-tuned model(s) besides the base, got {n}")
        if self.needs_base and not has_base:
            raise ConfigError(f"merge={self.name}: needs the base model (set base=<path> or base_from_run=<run dir>)")
        expanded = {k: _per_model(k, v, n) for k, v in self.defaults.items()}
        params = []
        for i, own in enumerate(overrides):
            unknown = sorted(set(own) - set(self.per_model))
            if unknown:
                raise ConfigError(
                    f"models[{i}].{unknown[0]}: merge={self.name} takes per-model {', '.join(self.per_model) or 'nothing'}"
                )
            p = {k: expanded[k][i] for k in self.per_model}
            p.update({k: _number(f"models[{i}].{k}", v) for k, v in own.items()})
            params.append(p)
        self.check(params, has_base)
        return params

    def check(self, params: list[dict[str, float]], has_base: bool) -> None:
        """Raise :class:`ConfigError` for values that make no sense for the method."""

    # -------------------------------------------------------------- mergekit
    def base_parameters(self, params: list[dict[str, float]]) -> dict[str, float] | None:
        """Parameters of the base's own entry in ``models`` (``None``: the base is not listed)."""
        return {}

    def global_parameters(self, has_base: bool) -> dict[str, Any]:
        """Method-wide ``parameters`` of the mergekit config."""
        return {}


def _check_density(params: list[dict[str, float]]) -> None:
    for i, p in enumerate(params):
        if not 0 < p["density"] <= 1:
            raise ConfigError(f"models[{i}].density={p['density']}: must be in (0, 1] (the fraction of the task vector kept)")


class Linear(MergeMethod):
    """Weighted average. With a base, the base gets ``1 - Σ w_i`` so ``w`` reads as "how far
    towards the fine-tunes" (each ``w_i >= 0``, ``Σ w_i <= 1``); without one, the weights are
    relative (normalised by their sum)."""

    mergekit_name = "linear"
    needs_base = False

    def __init__(self, weight: PerModel = 0.5) -> None:
        super().__init__(weight=weight)

    def check(self, params, has_base) -> None:
        for i, p in enumerate(params):
            if p["weight"] < 0:
                raise ConfigError(f"models[{i}].weight={p['weight']}: linear weights must be >= 0")
        total = sum(p["weight"] for p in params)
        if has_base and total > 1 + 1e-6:
            raise ConfigError(
                f"merge=linear: the model weights sum to {total:g} > 1, which leaves the base a negative weight "
                "(use merge=task_arithmetic to extrapolate)"
            )
        if not has_base:
            if len(params) < 2:
                raise ConfigError("merge=linear without a base needs at least two models (or set base=<path>)")
            if total <= 0:
                raise ConfigError("merge=linear: the model weights sum to 0")

    def base_parameters(self, params):
        # exact complement; the fine-tunes' weights are written as given
        return {"weight": max(0.0, 1.0 - math.fsum(p["weight"] for p in params))}

    def global_parameters(self, has_base):
        # with a base the weights already sum to 1: dividing by a rounded sum would only add error
        return {"normalize": not has_base}


class TaskArithmetic(MergeMethod):
    """``θ_b + scale · Σ w_i δ_i``; negative weights subtract a task (task negation)."""

    mergekit_name = "task_arithmetic"

    def __init__(self, weight: PerModel = 1.0, scale: float = 1.0) -> None:
        super().__init__(weight=weight)
        self.scale = _number("merge.scale", scale)

    def global_parameters(self, has_base):
        return {"normalize": False, "lambda": self.scale}


class Ties(MergeMethod):
    """TIES: trim each task vector to ``density``, elect signs, merge the agreeing entries.

    ``normalize=true`` (the paper's "disjoint mean") divides by the summed weights of the models
    that agree, so with a single fine-tune the weight cancels out: that combination is refused
    unless the weight is 1.
    """

    mergekit_name = "ties"
    per_model = ("weight", "density")

    def __init__(self, weight: PerModel = 1.0, density: PerModel = 0.5, normalize: bool = False,
                 scale: float = 1.0) -> None:
        super().__init__(weight=weight, density=density)
        self.normalize = bool(normalize)
        self.scale = _number("merge.scale", scale)

    def check(self, params, has_base) -> None:
        _check_density(params)
        for i, p in enumerate(params):
            if p["weight"] < 0:
                raise ConfigError(f"models[{i}].weight={p['weight']}: {self.name} weights must be >= 0 (signs are elected)")
        if self.normalize and len(params) == 1 and params[0]["weight"] != 1:
            raise ConfigError(
                f"merge={self.name} with normalize=true and one model: weight={params[0]['weight']:g} divides out "
                "(set merge.normalize=false, or use merge.scale)"
            )

    def global_parameters(self, has_base):
        return {"normalize": self.normalize, "lambda": self.scale}


class DareTies(Ties):
    """DARE + TIES: random drop with rescaling (``rescale``) instead of magnitude trimming.

    The drop is random: ``seed`` (``--random-seed`` of the mergekit CLI) fixes it.
    """

    mergekit_name = "dare_ties"

    def __init__(self, weight: PerModel = 1.0, density: PerModel = 0.5, normalize: bool = False,
                 rescale: bool = True, scale: float = 1.0) -> None:
        super().__init__(weight=weight, density=density, normalize=normalize, scale=scale)
        self.rescale = bool(rescale)

    def global_parameters(self, has_base):
        return {**super().global_parameters(has_base), "rescale": self.rescale}


class Slerp(MergeMethod):
    """Spherical interpolation between the base (``t=0``) and one fine-tune (``t=1``).

    ``t`` is a number, or a list of numbers interpolated across the layers (a mergekit gradient,
    e.g. ``[0, 0.5, 1]``: the first layers stay near the base, the last ones near the fine-tune).
    """

    mergekit_name = "slerp"
    per_model = ()
    max_models = 1

    def __init__(self, t: float | Sequence[float] = 0.5) -> None:
        super().__init__()
        values = [t] if isinstance(t, (int, float)) else list(t) if isinstance(t, Sequence) and not isinstance(t, str) else None
        if not values:
            raise ConfigError(f"merge.t={t!r}: expected a number in [0, 1] or a non-empty list of them")
        for v in values:
            if not 0 <= _number("merge.t", v) <= 1:
                raise ConfigError(f"merge.t={v}: must be in [0, 1] (0 = base, 1 = fine-tune)")
        self.t = float(t) if isinstance(t, (int, float)) else [float(v) for v in values]

    def global_parameters(self, has_base):
        return {"t": self.t}


__all__ = ["DareTies", "Linear", "MergeMethod", "Slerp", "TaskArithmetic", "Ties"]
