"""A test-only callback: stop fit after a given optimizer step (a run interrupted after a checkpoint)."""

import lightning as L


class StopAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True  # every rank reaches the same step, so they stop together
