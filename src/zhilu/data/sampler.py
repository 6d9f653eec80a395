"""Shuffling that a resumed run can replay, so it trains on the batches an uninterrupted run would.

A shuffling ``DataLoader`` with a seeded generator draws each epoch's order from wherever that
generator has got to. A run resumed from a checkpoint builds a fresh loader: at a later epoch it
replays epoch 0's order, and in the middle of an epoch it trains again on batches it had already
seen. :class:`ReplayableRandomSampler` is torch's ``RandomSampler`` (the same draws from the same
shared generator, so runs keep their data order) that remembers the generator state each epoch's
order came from; :meth:`state` and :meth:`replay` carry that through a checkpoint
(``ChatDataModule.state_dict``). Several processes use Lightning's ``DistributedSampler`` instead,
whose order is a function of (seed, epoch) already; there a run resumed mid-epoch restarts that
epoch (Lightning warns).
"""

from __future__ import annotations

import torch
from torch.utils.data import RandomSampler


class ReplayableRandomSampler(RandomSampler):
    def __init__(self, data_source, generator: torch.Generator) -> None:
        super().__init__(data_source, generator=generator)
        self.epoch_state: torch.Tensor | None = None  # generator state this epoch's permutation came from
        self._replay: tuple[torch.Tensor, int, bool] | None = None

    def state(self, samples_done: int, epoch_complete: bool) -> dict:
        return {"epoch_state": self.epoch_state, "state": self.generator.get_state(),
                "samples_done": samples_done, "epoch_complete": epoch_complete}

    def replay(self, state: dict) -> None:
        """Make the next pass continue the checkpointed one (its rest, or the next epoch when it was complete)."""
        if state["epoch_complete"]:
            self._replay = (state["state"], 0, True)
        elif state["epoch_state"] is not None:
            self._replay = (state["epoch_state"], state["samples_done"], False)

    def __iter__(self):
        skip = 0
        if self._replay is not None:
            gen_state, skip, new_epoch = self._replay
            self._replay = None
            self.generator.set_state(gen_state)
            if new_epoch:  # the draw the loader's iterator makes from the shared generator at every epoch
                torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self.epoch_state = self.generator.get_state()
        it = super().__iter__()
        for _ in range(skip):
            next(it)
        yield from it
