"""A test-only callback: crash fit after a given optimizer step (a run killed between two checkpoints)."""

import lightning as L


class Crash(RuntimeError):
    pass


class CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise Crash(f"crashed after step {trainer.global_step}")
