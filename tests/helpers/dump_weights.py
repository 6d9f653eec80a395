"""A test-only callback: every rank saves its final weights (to compare DDP ranks)."""

from pathlib import Path

import lightning as L
import torch


class DumpWeights(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out = Path(out_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
        torch.save(sd, self.out / f"rank{trainer.global_rank}.pt")
