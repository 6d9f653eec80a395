"""Small I/O helpers: atomic JSON writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON, all or nothing (see :func:`zhilu.utils.atomic.atomic_write`:
    a kill or a full disk leaves the previous file and no temp file)."""
    from zhilu.utils.atomic import atomic_write

    data = json.dumps(obj, indent=2, ensure_ascii=False, default=_default).encode("utf-8")
    atomic_write(path, lambda f: f.write(data), need=len(data), what="file")


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
