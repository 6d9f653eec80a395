"""Two CPU processes (Lightning ``ddp_spawn``, gloo) fit one step on a ChatDataModule with one cache:
``python -m tests.helpers.shared_store DATA.jsonl OUT_DIR``. Every store build appends the rank that
built it to ``OUT_DIR/builds.txt``; every rank's ``setup`` appends its store to ``OUT_DIR/ranks.jsonl``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch

import zhilu.data.store as store
from zhilu.data.datamodule import ChatDataModule

OUT = Path(os.environ.get("ZHILU_SHARED_STORE_OUT", "."))
_build = store.build_store


def counted_build(*args, **kwargs):
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
    with open(OUT / "builds.txt", "a") as f:
        f.write(f"{rank}\n")
    return _build(*args, **kwargs)


store.build_store = counted_build  # applied in every spawned process when it imports this module


class RecordingDataModule(ChatDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        (st,) = self._stores.values()
        with open(OUT / "ranks.jsonl", "a") as f:
            f.write(json.dumps({"rank": torch.distributed.get_rank(), "store": str(st.path),
                                "examples": len(self.train_examples)}) + "\n")


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch["num_tokens"]).sum() + (self.w ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(data: str, out: str) -> None:
    from tests.conftest import TINY
    from zhilu.model import ModelBuilder

    os.environ["ZHILU_SHARED_STORE_OUT"] = out  # the spawned processes read it at import
    global OUT
    OUT = Path(out)
    tok = ModelBuilder(config=TINY).load_tokenizer()
    dm = RecordingDataModule(train_files=[data], tokenizer=tok, cache_dir=str(Path(out) / "cache"), batch_size=4,
                             max_length=128)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=out)
    trainer.fit(Tiny(), datamodule=dm)


if __name__ == "__main__":
    main(*sys.argv[1:3])
