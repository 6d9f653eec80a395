"""The config a run saves (``config_resolved.yaml``, the loggers' hyper-parameters) without secrets.

Values written as ``${oc.env:NAME}`` are resolved when objects are built (or read from the
environment at call time, e.g. ``generator.api_key_env``) but saved as written; any other value
that contains such a variable's current value (an interpolation of it, ``"Bearer ${oc.env:KEY}"``)
is saved with the value replaced by ``${oc.env:NAME}``, and literal values under secret-looking
keys (``api_key``, ``password``, ``authorization``, ...) are saved as ``***``.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

ENV_REF = re.compile(r"\$\{oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)")
SECRET_KEY = re.compile(r"(api_?key|access_?token|auth_?token|bearer|password|passwd|secret|authorization|cookie)$",
                        re.IGNORECASE)
MASK = "***"
MIN_SECRET_CHARS = 4  # shorter environment values are not searched for (they would match everywhere)


def _env_refs(raw: Any, out: set[str]) -> set[str]:
    if isinstance(raw, dict):
        for v in raw.values():
            _env_refs(v, out)
    elif isinstance(raw, list):
        for v in raw:
            _env_refs(v, out)
    elif isinstance(raw, str):
        out.update(ENV_REF.findall(raw))
    return out


def _merge(raw: Any, resolved: Any, key: str, secrets: dict[str, str]) -> Any:
    if isinstance(raw, dict) and isinstance(resolved, dict):
        return {k: _merge(raw.get(k), v, str(k), secrets) for k, v in resolved.items()}
    if isinstance(raw, list) and isinstance(resolved, list) and len(raw) == len(resolved):
        return [_merge(r, v, key, secrets) for r, v in zip(raw, resolved)]
    if isinstance(raw, str) and ENV_REF.search(raw):
        return raw  # as written: ${oc.env:NAME}
    if isinstance(resolved, str):
        if SECRET_KEY.search(key) and resolved and not key.lower().endswith("_env"):
            return MASK
        for name, value in secrets.items():
            if value in resolved:
                resolved = resolved.replace(value, "${oc.env:" + name + "}")
    return resolved


def config_for_saving(cfg: DictConfig) -> dict:
    """``cfg`` resolved (a plain dict) with the secrets left out as described in the module docstring."""
    import os

    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    secrets = {n: os.environ[n] for n in sorted(_env_refs(raw, set()))
               if len(os.environ.get(n, "")) >= MIN_SECRET_CHARS}
    return _merge(raw, resolved, "", secrets)
