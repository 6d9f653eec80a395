"""Test-only writers that fail half-way through a checkpoint: raise, or kill their own process."""

import errno
import os
import signal


class HalfThenFail:
    """A file proxy that writes the first ``after`` bytes, then raises ``OSError`` (or SIGKILLs the process)."""

    def __init__(self, f, after: int, kill: bool = False) -> None:
        self.f, self.after, self.kill = f, after, kill
        self.written = 0

    def write(self, data) -> int:
        if self.written + len(data) > self.after:
            self.f.write(bytes(data)[: self.after - self.written])
            self.f.flush()
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.EIO, "simulated failure half-way through the checkpoint")
        self.written += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()
