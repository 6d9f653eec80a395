"""``AtomicCheckpointIO``: Lightning checkpoints written all or nothing (see :mod:`zhilu.utils.atomic`).

Lightning's ``TorchCheckpointIO`` writes through fsspec's transaction: a temp file in ``$TMPDIR``
that is then ``shutil.move``d onto the target, a truncating copy when the run dir is on another
filesystem. This one streams ``torch.save`` into an unnamed file in the target's directory, fsyncs
it and renames it over the target; a full disk raises ``CheckpointSpaceError`` (one line: path,
space needed, space free) and keeps the previous checkpoint. Set in ``conf/trainer/default.yaml``
(``plugins``), so every strategy that writes single files uses it; FSDP's sharded directories are
committed by rename in ``ZhiluFSDPStrategy.save_checkpoint``.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zhilu.utils.atomic import OVERHEAD_BYTES, CheckpointSpaceError, atomic_write, tensor_bytes

__all__ = ["AtomicCheckpointIO", "CheckpointSpaceError"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` whose saves are all-or-nothing (see the module docstring).

    Loading is Lightning's (``torch.load`` with ``weights_only`` as the trainer asks).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, self.sink(f)),
                     need=tensor_bytes(checkpoint) + OVERHEAD_BYTES)

    def sink(self, f: BinaryIO) -> BinaryIO:
        """The file object ``torch.save`` writes into (tests wrap it to fail mid-write)."""
        return f
