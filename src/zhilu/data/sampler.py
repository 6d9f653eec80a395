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

The permutation is kept as a tensor and handed out a slice at a time (torch's sampler turns it
into one Python list: 36 bytes per example, 36 MB an epoch at a million examples), with the
same draws from the generator in the same order, so the data order is torch's exactly.
"""

from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import RandomSampler


class ReplayableRandomSampler(RandomSampler):
    def __init__(self, data_source, generator: torch.Generator) -> None:
        super().__init__(data_source, generator=generator)
        self.epoch_state: torch.Tensor | None = None  # generator state this epoch's permutation came from
        self._replay: dict | None = None

    def state(self, samples_done: int, epoch_complete: bool) -> dict:
        """A complete epoch resumes with the next one, from the generator as it is now; a partial one
        replays its own permutation (drawn from ``epoch_state``) past the samples already trained."""
        return {"generator_state": self.generator.get_state() if epoch_complete else self.epoch_state,
                "samples_done": 0 if epoch_complete else samples_done, "epoch_complete": epoch_complete}

    def replay(self, state: dict) -> None:
        """Make the next pass continue the checkpointed one."""
        self._replay = state

    def __iter__(self):
        state, self._replay = self._replay, None
        skip = 0
        if state is not None and state["generator_state"] is not None:
            self.generator.set_state(state["generator_state"])
            if state["epoch_complete"]:  # the draw the loader's iterator makes from the shared generator
                torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            skip = state["samples_done"]
        self.epoch_state = self.generator.get_state()
        yield from islice(self._draws(), skip, None)

    def _draws(self):
        """``RandomSampler.__iter__`` without replacement: every full permutation, then a last one cut
        to the remainder (drawn even when that is empty, as torch's does), as ints."""
        if self.replacement or self.generator is None:
            yield from super().__iter__()
            return
        n = len(self.data_source)
        for _ in range(self.num_samples // n):
            yield from _ints(torch.randperm(n, generator=self.generator))
        yield from _ints(torch.randperm(n, generator=self.generator)[: self.num_samples % n])


def _ints(perm: torch.Tensor, chunk: int = 4096):
    for start in range(0, len(perm), chunk):
        yield from perm[start:start + chunk].tolist()
