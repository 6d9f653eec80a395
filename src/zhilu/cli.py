"""Shared entry-point plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from zhilu.errors import ZhiluError

ROOT = Path(__file__).resolve().parents[2]


def set_project_root(root: str | Path | None = None) -> None:
    """``conf/paths`` reads ``ZHILU_ROOT`` (the checkout holding ``conf/`` and ``data/``)."""
    os.environ.setdefault("ZHILU_ROOT", str(Path(root) if root else ROOT))


def one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ZhiluError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper
