"""Checkpoints survive a kill or a full disk: the previous last.ckpt stays loadable, no temp file is left.

The run dir and ``$TMPDIR`` are put on different filesystems (a tmpfs mounted by the test where it
may mount one, else ``/dev/shm`` when that is another filesystem than the run dir), as on a
cluster whose ``/tmp`` is a tmpfs.
"""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers.failing_io import HalfThenFail
from zhilu.train.checkpoint_io import AtomicCheckpointIO, CheckpointSpaceError
from zhilu.utils.atomic import atomic_write, commit_dir, recover_dir, sweep_stale, tensor_bytes


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int):
    """A tmpfs of ``size_kb`` at ``path``, or ``None`` where this process may not mount one."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        yield None
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def ckpt(n: int, fill: float) -> dict:
    return {"state_dict": {"w": torch.full((n,), fill)}, "global_step": int(fill)}


def serialized_size(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


class FailingIO(AtomicCheckpointIO):
    """The project's CheckpointIO, failing once ``after`` bytes of the checkpoint are written."""

    def __init__(self, after: int) -> None:
        self.after = after

    def sink(self, f):
        return HalfThenFail(f, self.after)


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(ckpt(1000, 1.0), path)
    new = ckpt(4000, 2.0)
    with pytest.raises((OSError, RuntimeError)) as info:  # torch's zip writer may add its own error
        FailingIO(serialized_size(new) // 2).save_checkpoint(new, path)
    chain = [info.value, info.value.__context__, info.value.__cause__]
    assert any("simulated failure" in str(e) for e in chain if e is not None)
    assert os.listdir(path.parent) == ["last.ckpt"]
    assert AtomicCheckpointIO().load_checkpoint(path, weights_only=True)["global_step"] == 1
    AtomicCheckpointIO().save_checkpoint(new, path)  # and the next save goes through
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], new["state_dict"]["w"])


# AtomicCheckpointIO.save_checkpoint is atomic_write(path, torch.save into sink(f)): the same call here,
# without importing Lightning (which takes most of a minute on a loaded machine)
KILLED = textwrap.dedent("""
    import io, torch
    from tests.helpers.failing_io import HalfThenFail
    from zhilu.utils.atomic import atomic_write
    new = {{"state_dict": {{"w": torch.full((200_000,), 2.0)}}, "global_step": 2}}
    buf = io.BytesIO()
    torch.save(new, buf)
    atomic_write({path!r}, lambda f: torch.save(new, HalfThenFail(f, buf.tell() // 2, kill=True)))
""")


def test_kill_during_the_write_keeps_the_previous_checkpoint_across_filesystems(tmp_path):
    with tmpfs(tmp_path / "run", 64 * 1024) as mounted:
        run = mounted or tmp_path / "run"
        tmpdir = tmp_path / "tmpdir"  # the $TMPDIR Lightning's own writer would have used
        if mounted is None and Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != os.stat(run).st_dev:
            tmpdir = Path("/dev/shm") / f"zhilu-test-{os.getpid()}"
        tmpdir.mkdir(exist_ok=True)
        try:
            if mounted is None and os.stat(tmpdir).st_dev == os.stat(run).st_dev:
                pass  # simulated: same filesystem (the writer never uses $TMPDIR either way)
            path = run / "checkpoints" / "last.ckpt"
            old = ckpt(100_000, 1.0)
            AtomicCheckpointIO().save_checkpoint(old, path)
            env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
            r = subprocess.run([sys.executable, "-c", KILLED.format(path=str(path))], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == -signal.SIGKILL, r.stderr
            assert os.listdir(path.parent) == ["last.ckpt"] and os.listdir(tmpdir) == []  # no temp file outlives it
            state = AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
            assert state["global_step"] == 1 and torch.equal(state["state_dict"]["w"], old["state_dict"]["w"])
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True) if tmpdir.parent == Path("/dev/shm") else None


def test_a_full_disk_keeps_the_last_good_checkpoint_and_says_how_much_space_is_needed(tmp_path):
    with tmpfs(tmp_path / "small", 3 * 1024) as mounted:
        if mounted is None:
            pytest.skip("cannot mount a tmpfs here (the simulated failures are tested above)")
        path = mounted / "last.ckpt"
        old = ckpt(256 * 1024, 1.0)  # 1 MiB of tensor
        AtomicCheckpointIO().save_checkpoint(old, path)
        big = ckpt(512 * 1024, 2.0)  # 2 MiB: does not fit beside the old one
        with pytest.raises(CheckpointSpaceError) as info:
            AtomicCheckpointIO().save_checkpoint(big, path)
        msg = str(info.value)
        assert msg.startswith(f"checkpoint {path}: not enough disk space in {mounted} (needs about 3.0 MB, ")
        assert "the previous last.ckpt is kept" in msg and "\n" not in msg
        # the estimate can be wrong (or the disk fill up meanwhile): ENOSPC while writing says the same
        with pytest.raises(CheckpointSpaceError, match=rf"^checkpoint {path}: not enough disk space"):
            atomic_write(path, lambda f: torch.save(big, f))
        assert os.listdir(mounted) == ["last.ckpt"]
        assert torch.load(path, weights_only=True)["global_step"] == 1


def test_named_temp_files_of_dead_processes_are_swept(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".last.ckpt.{host}.{dead.stdout.strip()}.tmp"
    alive = tmp_path / f".last.ckpt.{host}.{os.getppid()}.tmp"
    other = tmp_path / f".last.ckpt.otherhost.{dead.stdout.strip()}.tmp"
    for p in (stale, alive, other):
        p.write_bytes(b"partial")
    sweep_stale(tmp_path, "last.ckpt")
    assert not stale.exists() and alive.exists() and other.exists()


def test_sharded_directories_are_committed_by_rename(tmp_path):
    path = tmp_path / "last.ckpt"
    first = tmp_path / "new1"
    first.mkdir()
    (first / "meta.pt").write_bytes(b"1")
    commit_dir(first, path)
    assert (path / "meta.pt").read_bytes() == b"1" and not first.exists()
    second = tmp_path / "new2"
    second.mkdir()
    (second / "meta.pt").write_bytes(b"2")
    commit_dir(second, path)
    assert (path / "meta.pt").read_bytes() == b"2" and sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    os.replace(path, tmp_path / ".last.ckpt.old")  # killed between commit_dir's two renames
    recover_dir(path)
    assert (path / "meta.pt").read_bytes() == b"2"


def test_tensor_bytes_counts_shared_storage_once():
    w = torch.zeros(10)
    assert tensor_bytes({"a": w, "b": [w[:5], torch.zeros(3, dtype=torch.float64)], "c": 1}) == 40 + 24


class OneRank:
    """The strategy interface save_directory_checkpoint uses, for one process."""

    global_rank = 0

    def broadcast(self, obj):
        return obj

    def barrier(self, name=None):
        pass


def test_sharded_saves_commit_a_complete_directory_or_nothing(tmp_path):
    from zhilu.train.strategies import save_directory_checkpoint

    path = tmp_path / "checkpoints" / "last.ckpt"

    def shards(step, fail=False):
        def write(tmp):
            tmp.mkdir(parents=True)
            (tmp / "__0_0.distcp").write_bytes(b"shard %d" % step)
            if fail:  # a full disk or an error half-way: meta.pt never written
                raise OSError(28, "No space left on device")
            (tmp / "meta.pt").write_bytes(b"meta %d" % step)
        return write

    save_directory_checkpoint(OneRank(), shards(2), path)
    with pytest.raises(OSError, match="No space"):
        save_directory_checkpoint(OneRank(), shards(4, fail=True), path)
    assert sorted(os.listdir(path.parent)) == ["last.ckpt"]  # no temp folder left
    assert (path / "meta.pt").read_bytes() == b"meta 2" and (path / "__0_0.distcp").read_bytes() == b"shard 2"
    save_directory_checkpoint(OneRank(), shards(6), path)
    assert (path / "meta.pt").read_bytes() == b"meta 6" and sorted(os.listdir(path.parent)) == ["last.ckpt"]
