"""Shared entry-point plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from zhilu.errors import ZhiluError
from zhilu.utils import resolvers  # noqa: F401 - registers the config resolvers

ROOT = Path(__file__).resolve().parents[2]


def set_project_root(root: str | Path | None = None) -> None:
    """``conf/paths`` reads ``ZHILU_ROOT`` (the checkout holding ``conf/`` and ``data/``)."""
    os.environ.setdefault("ZHILU_ROOT", str(Path(root) if root else ROOT))


def user_error(exc: BaseException) -> ZhiluError | None:
    """The ZhiluError behind ``exc`` (Hydra's instantiate wraps errors raised in constructors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ZhiluError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` that re-raises a user error from a constructor as itself.

    Hydra wraps constructor errors in ``InstantiationException``; :func:`one_line_errors` unwraps them
    at the entry point anyway, this lets library code (and its callers) see the ``ZhiluError`` type.
    """
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except Exception as exc:
        err = user_error(exc)
        if err is None or err is exc:
            raise
        raise err from None


def one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            err = user_error(exc)
            if err is None:
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
