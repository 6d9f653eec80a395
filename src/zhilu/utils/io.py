"""Small I/O helpers: atomic JSON writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_default), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: no partial file left, the old one stays
        tmp.unlink(missing_ok=True)
        raise


def check_output_file(path: str | Path, key: str) -> Path:
    """An output file path that can be written: not a directory, no file where its folder should be."""
    from zhilu.errors import ConfigError

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{key}={path}: is a directory (expected a file name)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key}={path}: {parent} is a file, not a directory")
            break
    return p


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)
