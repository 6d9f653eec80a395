"""All-or-nothing file and directory writes (checkpoints): write beside the target, fsync, rename.

Lightning's ``TorchCheckpointIO`` writes through fsspec's transaction: a temp file in ``$TMPDIR``
that is then ``shutil.move``d onto the target. When the run dir is on another filesystem (a tmpfs
``/tmp``, NFS, Lustre, cluster scratch) the move is a truncating copy: a kill or a full disk during
it destroys ``last.ckpt``, and every kill leaves the temp file behind.

:func:`atomic_write` (used by ``zhilu.train.checkpoint_io.AtomicCheckpointIO``) writes into an unnamed file in the target's own directory
(``O_TMPFILE``: the kernel frees it if the process dies, so no temp file outlives its process),
flushes and fsyncs it, gives it a name and ``os.replace``s it onto the target (then fsyncs the
directory). Until that rename the previous checkpoint is untouched. Where ``O_TMPFILE`` is not
supported (some network filesystems) the temp file is named ``.<name>.<host>.<pid>.tmp``, removed
on any error, and swept by the next save on that host once its process is gone.

Before writing, the space the checkpoint needs (``need``: its tensors' bytes) is compared with the free space
of the directory; too little (or ``ENOSPC`` while writing) raises ``CheckpointSpaceError``, one
line naming the path, the space needed and the space free, with the previous checkpoint kept.

Sharded checkpoints (directories: FSDP ``state_dict_type=sharded``) are written to a temp directory
beside the target and committed with :func:`commit_dir`.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path
from typing import Any, BinaryIO

import torch

from zhilu.errors import ZhiluError

MB = 1 << 20
# torch.save's zip container adds a few hundred bytes per tensor record plus the pickled structure
OVERHEAD_BYTES = 1 << 20


class CheckpointSpaceError(ZhiluError, OSError):
    """Not enough free space to write a checkpoint; the previous one is kept."""


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor storage in a (nested) checkpoint, each shared storage counted once."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            key = st.data_ptr() if st.data_ptr() else id(st)
            if key not in seen:
                seen.add(key)
                total += st.nbytes()
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return total


def free_bytes(folder: str | Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def space_error(path: Path, need: int, free: int | None = None, at_least: bool = False,
                what: str = "checkpoint") -> CheckpointSpaceError:
    free = free_bytes(path.parent) if free is None else free
    kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written, earlier files are untouched"
    return CheckpointSpaceError(
        f"{what} {path}: not enough disk space in {path.parent} (needs {'over' if at_least else 'about'} "
        f"{need / MB:,.1f} MB, "
        f"{free / MB:,.1f} MB free; free {max(need - free, 0) / MB:,.1f} MB more); {kept}"
    )


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def sweep_stale(folder: Path, name: str) -> None:
    """Remove ``.<name>.<this host>.<pid>.tmp`` files (and directories) of processes that are gone."""
    host = socket.gethostname()
    for p in folder.glob(f".{name}.{host}.*.tmp"):
        pid = p.name[len(f".{name}.{host}."):-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


_LINKAT_OK: dict[int, bool] = {}


def _linkat(fd: int, dst: Path) -> None:
    """Name the unnamed (``O_TMPFILE``) file ``fd`` as ``dst``: ``linkat(AT_SYMLINK_FOLLOW)`` on its
    ``/proc/self/fd`` entry (``os.link`` links the ``/proc`` symlink itself on Linux)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    if libc.linkat(at_fdcwd, f"/proc/self/fd/{fd}".encode(), at_fdcwd, os.fsencode(dst), at_symlink_follow):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def _open_unnamed(folder: Path, probe: Path) -> int | None:
    """An ``O_TMPFILE`` descriptor in ``folder``, or ``None`` where the filesystem cannot make or name
    one (checked once per filesystem with a probe file)."""
    if not hasattr(os, "O_TMPFILE") or not Path("/proc/self/fd").is_dir():
        return None
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError:
        return None
    dev = os.fstat(fd).st_dev
    if dev not in _LINKAT_OK:  # a file named once is no longer linkable: probe with a second one
        probe_fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
        try:
            probe.unlink(missing_ok=True)
            _linkat(probe_fd, probe)
            probe.unlink()
            _LINKAT_OK[dev] = True
        except OSError:
            _LINKAT_OK[dev] = False
        finally:
            os.close(probe_fd)
    if not _LINKAT_OK[dev]:
        os.close(fd)
        return None
    return fd


def atomic_write(path: str | Path, write, need: int | None = None, what: str = "checkpoint") -> None:
    """Create or replace ``path`` with what ``write(fileobj)`` writes, all or nothing.

    ``need``: bytes expected (checked against the free space first). The previous file stays valid
    until the new one is complete and on disk.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path}: is a directory (a sharded checkpoint?)")
    sweep_stale(folder, path.name)
    if need is not None:
        free = free_bytes(folder)
        if need > free:
            raise space_error(path, need, free, what=what)
    tmp = _tmp_name(path)
    fd = _open_unnamed(folder, tmp)
    named = fd is None  # O_TMPFILE not supported by this filesystem: a named temp file
    if named:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    sink = None
    try:
        with os.fdopen(fd, "wb") as f:
            fd = None
            sink = _Sink(f)
            write(sink)
            sink.flush()
            os.fsync(f.fileno())
            if not named:  # give the unnamed file a name (the same filesystem), then rename it over path
                tmp.unlink(missing_ok=True)
                _linkat(f.fileno(), tmp)
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException as exc:
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError of its zip writer: the sink kept the OSError
        cause = sink.error if sink is not None and sink.error is not None else exc
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            written = sink.written if sink is not None else 0
            raise space_error(path, max(need or 0, written), at_least=need is None or written > need,
                              what=what) from exc
        raise


class _Sink:
    """A write-only file proxy counting the bytes written and keeping the first ``OSError``."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.written = 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            n = self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.written += n
        return n

    def flush(self) -> None:
        self.f.flush()

    def fileno(self) -> int:
        return self.f.fileno()


def commit_dir(tmp: str | Path, path: str | Path) -> None:
    """Publish the complete directory ``tmp`` as ``path`` by renames (same filesystem).

    The old ``path`` is first renamed to ``.<name>.old``; a kill between the two renames leaves it
    there, and :func:`recover_dir` (called by the next save or resume) puts it back.
    """
    tmp, path = Path(tmp), Path(path)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(tmp)
    if path.is_dir():
        os.replace(path, old)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | Path) -> None:
    """After a kill between :func:`commit_dir`'s renames: the previous directory back at ``path``."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)


