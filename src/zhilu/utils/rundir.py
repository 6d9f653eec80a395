"""One run per run dir: an advisory lock held while a run writes its folder.

``fcntl.flock`` on ``<run dir>/.lock``: the kernel drops it when the process ends, however it ends
(``kill -9`` included), so a crashed run never leaves a stale lock. Only the first process of a
job takes it (DDP/FSDP ranks and other nodes share the folder; ``RANK``, ``LOCAL_RANK``,
``NODE_RANK`` and ``SLURM_PROCID`` say which process this is).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from zhilu.errors import ConfigError

LOCK_NAME = ".lock"


def is_first_process() -> bool:
    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run dir's lock for the duration; a second run in the same folder gets one ``ConfigError`` line."""
    if not is_first_process():
        yield
        return
    import fcntl

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            try:
                who = json.loads(holder)
                desc = f"pid {who['pid']} on {who['host']} since {who['started']}"
            except (ValueError, KeyError, TypeError):
                desc = "another process"
            raise ConfigError(f"run dir {folder} is in use by another run ({desc}); wait for it to end or "
                              "choose another hydra.run.dir") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        yield
    finally:
        os.close(fd)  # releases the lock
