"""The LightningDataModule for SFT and preference data (any kind of ``zhilu.data.kinds``), padded or
packed, read from the tokenized store (``zhilu.data.store``).

``prepare_data`` (Lightning calls it on one process per node, the others wait at a barrier) builds
the store of every input that lacks one; ``setup`` (every process) memory-maps them and keeps only
index arrays: a split is a list of entries into the stores, a packed epoch a ``PackedRows`` of
indices into the split, so no process holds the data set as Python objects.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zhilu.data.collate import PackedCollator, PaddedCollator
from zhilu.data.encode import ChatEncoder, Example
from zhilu.data.formats import READERS
from zhilu.data.kinds import KINDS, check_format, get_kind  # noqa: F401 - KINDS: the table of data kinds
from zhilu.data.packing import pack_bfd, packing_stats
from zhilu.data.sampler import ReplayableRandomSampler
from zhilu.data.store import (
    FAILED, Input, TokenStore, encoder_args, open_store, token_config, tokenizer_fingerprint,
)
from zhilu.errors import ConfigError, DataError
from zhilu.utils.memory import release_freed_heap

log = logging.getLogger(__name__)
MAX_SKIP_WARNINGS = 10


class StoreView(Sequence):
    """The examples of one split: entries of one or more stores, by index (nothing copied).

    ``refs`` are global entry numbers (store ``s`` holds ``offsets[s]`` to ``offsets[s + 1]``);
    example ``i`` gets ``meta["id"] = i`` (and ``meta["source"]`` when its store has a label).
    """

    def __init__(self, stores: Sequence[TokenStore], refs: np.ndarray, labels: Sequence[str | None] | None = None):
        self.stores = list(stores)
        self.labels = list(labels) if labels is not None else [None] * len(self.stores)
        self.offsets = np.cumsum([0] + [len(s) for s in self.stores]).astype(np.int64)
        self.refs = np.asarray(refs, dtype=np.int64)
        self.lengths = np.zeros(len(self.refs), np.int64)
        for start in range(0, len(self.refs), 1 << 20):  # gathered by slices: no copy of every store's lengths
            refs = self.refs[start:start + (1 << 20)]
            which = self.store_of(refs)
            for s in np.unique(which).tolist():
                sel = which == s
                self.lengths[start:start + len(refs)][sel] = self.stores[s].length[refs[sel] - self.offsets[s]]

    def subset(self, positions) -> "StoreView":
        view = StoreView.__new__(StoreView)
        view.stores, view.labels, view.offsets = self.stores, self.labels, self.offsets
        view.refs, view.lengths = self.refs[positions], self.lengths[positions]
        return view

    def __len__(self) -> int:
        return len(self.refs)

    def store_of(self, refs: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, refs, side="right") - 1

    def examples(self, positions: Sequence[int]) -> list[Example]:
        positions = np.asarray(positions, dtype=np.int64)
        refs = self.refs[positions]
        which = self.store_of(refs)
        out: list[Example | None] = [None] * len(positions)
        for s in np.unique(which).tolist():
            sel = np.flatnonzero(which == s)
            for k, ex in zip(sel.tolist(), self.stores[s].examples(refs[sel] - self.offsets[s])):
                ex.meta["id"] = int(positions[k])
                if self.labels[s] is not None:
                    ex.meta["source"] = self.labels[s]
                out[k] = ex
        return out  # type: ignore[return-value]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.examples(range(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.examples([i])[0]

    def __iter__(self) -> Iterator[Example]:
        for start in range(0, len(self), 256):
            yield from self.examples(range(start, min(start + 256, len(self))))


class BatchStep:
    """A data kind's batch step (``DataKind.batch``), then the collator (picklable for loader workers)."""

    def __init__(self, step, collate) -> None:
        self.step, self.collate = step, collate

    def __call__(self, examples):
        return self.collate(self.step(list(examples)))


class ListDataset(Dataset):
    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __getitems__(self, indices):
        if isinstance(self.items, StoreView):
            return self.items.examples(indices)
        return [self.items[i] for i in indices]


class PackedDataset(Dataset):
    """Rows of whole examples; ``repack(epoch)`` recomputes the bins with seed ``seed + epoch``."""

    def __init__(self, examples, capacity: int, seed: int) -> None:
        self.examples = examples
        self.capacity = capacity
        self.seed = seed
        self.lengths = examples.lengths if isinstance(examples, StoreView) else \
            np.array([ex.total_length for ex in examples], dtype=np.int64)
        self.rows = None
        self.stats = None
        self.epoch: int | None = None
        self.repack(0)

    def repack(self, epoch: int) -> dict:
        """The packing is a function of (lengths, seed + epoch): an epoch already packed is kept (the first
        epoch's start finds setup's), a new one replaces the old rows, freed first."""
        if epoch != self.epoch:
            self.rows = None
            self.rows = pack_bfd(self.lengths, self.capacity, seed=self.seed + epoch)
            self.stats = packing_stats(self.lengths, self.rows, self.capacity)
            self.epoch = epoch
        return self.stats.as_dict()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> list[Example]:
        idx = self.rows[i]
        if isinstance(self.examples, StoreView):
            return self.examples.examples(idx)
        return [self.examples[j] for j in idx]


def overlong_warning(split: str, stats: dict, max_length: int, overlong: str) -> str | None:
    """One line: how many ``split`` rows ``data.overlong`` truncated or dropped, the tokens that cost, and
    which setting keeps them (``None`` when every row fitted)."""
    truncated, dropped = stats.get(f"{split}/truncated", 0), stats.get(f"{split}/dropped_overlong", 0)
    if not truncated and not dropped:
        return None
    parts = []
    if truncated:
        parts.append(f"{truncated} rows truncated ({stats[f'{split}/truncated_tokens_lost']:,} tokens cut)")
    if dropped:
        parts.append(f"{dropped} rows dropped ({stats[f'{split}/dropped_tokens_lost']:,} tokens)")
    keep = "a larger data.max_length keeps every row whole"
    if overlong != "truncate_prompt":
        keep = "data.overlong=truncate_prompt keeps every answer whole (it cuts the oldest prompt turns), " + keep
    return (f"{split} data: {' and '.join(parts)} as longer than data.max_length={max_length} "
            f"(data.overlong={overlong}); {stats[f'{split}/label_tokens_lost']:,} trainable (answer) tokens "
            f"lost; {keep}")


class ChatDataModule(L.LightningDataModule):
    """Reads, validates, encodes (once, into the tokenized store) and batches SFT or preference data.

    Args:
        kind: a data kind of ``zhilu.data.kinds`` (``sft``, ``preference``); must match the objective's
            ``data_kind``.
        train_files / val_files: inputs (JSONL, JSON, Parquet, CSV, a ``save_to_disk`` folder or
            ``hf://<hub name>``), or ``{path, format, split}`` mappings to mix formats.
        format: default reader for plain paths (``chat``, ``alpaca``, ``sharegpt``, ``text``, ``preference``).
        max_length: token budget of one sequence; ``overlong`` says what happens past it: ``truncate``
            (cut the end), ``truncate_prompt`` (keep the answer, cut the prompt's oldest turns), ``drop``
            or ``error`` (:func:`zhilu.data.encode.fit_example`). Rows and tokens lost are counted in
            ``stats`` (``metrics.json`` -> ``data``) and logged in one warning.
        on_error: ``raise`` (stop at the first malformed row, naming file and line) or ``skip``.
        packing: pack whole examples into rows of ``pack_length`` tokens (default ``max_length``
            times the kind's sequences per example: preference pairs share a row).
        val_fraction: carve a validation split off the training data when no ``val_files``.
        cache_dir: where the tokenized stores live (``null``: a temporary folder of this process).
        num_proc: processes that tokenize a store (``null``: the CPU count, one per 2000 rows at most).
    """

    def __init__(
        self,
        kind: str = "sft",
        train_files: Sequence[Any] = (),
        val_files: Sequence[Any] = (),
        format: str = "chat",
        max_length: int = 1024,
        overlong: str = "truncate",
        on_error: str = "raise",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        packing: bool = False,
        pack_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        val_fraction: float = 0.0,
        limit_train_samples: int | None = None,
        limit_val_samples: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        tokenizer=None,
        name: str | None = None,
        cache_dir: str | None = None,
        num_proc: int | None = None,
    ) -> None:
        args = dict(locals())  # every key that can change tokens goes into the store key
        super().__init__()
        self.data_kind = get_kind(kind)
        check_format(self.data_kind, format)
        if packing and self.data_kind.batch is not None:
            raise ConfigError(f"data.packing=true does not fit data.kind={kind}: its sequences are completed per "
                              "batch (KTO's mismatched completions); use data.packing=false")
        if not train_files:
            raise ConfigError("data.train_files is empty")
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error={on_error!r}: expected raise or skip")
        self.kind = kind
        self.name = name
        self.train_files = list(train_files)
        self.val_files = list(val_files or [])
        self.format = format
        self.max_length = max_length
        self.overlong = overlong
        self.on_error = on_error
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.packing = packing
        self.seqs_per_example = self.data_kind.sequences
        self.pack_length = pack_length or max_length * self.seqs_per_example
        self.pad_to_multiple_of = pad_to_multiple_of
        self.val_fraction = val_fraction
        self.limit_train_samples = limit_train_samples
        self.limit_val_samples = limit_val_samples
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer = tokenizer
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.num_proc = num_proc
        self.token_config = token_config(args)
        self.train_examples: StoreView | None = None
        self.val_examples: StoreView | list = []
        self.stats: dict[str, Any] = {}
        self.train_set: Dataset | None = None
        self._stores: dict[Input, TokenStore] = {}
        self._tokenizer_hash: str | None = None
        self._stat_keys: list[str] = ["truncated", "dropped_overlong"]
        self._sampler: ReplayableRandomSampler | None = None
        self._resume_state: dict | None = None  # the data order of a checkpoint, for the next train loader

    # ---------------------------------------------------------------- reading
    def _sources(self, files) -> list[Input]:
        out = []
        for f in files:
            if isinstance(f, (str, Path)):
                inp = Input(str(f), self.format)
            elif hasattr(f, "get") and f.get("path"):
                inp = Input(str(f["path"]), f.get("format", self.format), f.get("split") or "train")
            else:
                raise ConfigError(f"data file entry {f!r}: expected a path or {{path, format}}")
            if inp.format not in READERS:
                raise ConfigError(f"{inp.path}: data.format={inp.format!r}: expected one of {', '.join(READERS)}")
            check_format(self.data_kind, inp.format, where=f"{inp.path}: format")
            out.append(inp)
        return out

    def _inputs(self) -> list[Input]:
        """Every input this data module reads (train, then val)."""
        return self._sources(self.train_files) + self._sources(self.val_files)

    def _check_encoding(self) -> None:
        if self.tokenizer is None:
            raise ConfigError(f"{type(self).__name__} needs a tokenizer (train.py passes the model's)")
        enc = ChatEncoder(self.tokenizer, **encoder_args(self.token_config))  # bad max_length/overlong: one line, now
        self._stat_keys = list(enc.stats)

    def store(self, inp: Input) -> TokenStore:
        """The tokenized store of ``inp`` (built on first use when ``prepare_data`` did not)."""
        if inp not in self._stores:
            if self._tokenizer_hash is None:
                self._tokenizer_hash = tokenizer_fingerprint(self.tokenizer)
            self._stores[inp] = open_store(inp, self.data_kind, self.token_config, self.tokenizer,
                                           self._tokenizer_hash, self.cache_dir, self.num_proc)
        return self._stores[inp]

    def prepare_data(self) -> None:
        """Build the stores (Lightning: once per node, before ``setup`` on any process)."""
        self._check_encoding()
        for inp in self._inputs():
            self.store(inp)

    def _problems(self, stores: Sequence[TokenStore], split: str) -> int:
        """Raise the first bad row (``on_error=raise``) or count and log them (``skip``)."""
        skipped = 0
        for st in stores:
            bad = st.problems()
            if len(bad) == 0:
                continue
            failed = bad[st.status[bad] == FAILED]  # overlong=error and the like: always stop
            if self.on_error == "raise" or len(failed):
                st.raise_problem(int(bad[0] if self.on_error == "raise" else failed[0]))
            for e in bad[:MAX_SKIP_WARNINGS].tolist():
                log.warning("skipped %s", st.message(e))
            if len(bad) > MAX_SKIP_WARNINGS:
                log.warning("skipped %d more bad rows of %s", len(bad) - MAX_SKIP_WARNINGS, st.source)
            skipped += len(bad)
        return skipped

    def read(self, files, split: str) -> StoreView:
        """The examples of ``files`` in file order; counts go into ``stats`` under ``split/``."""
        stores = [self.store(inp) for inp in self._sources(files)]
        self.stats[f"{split}/skipped_rows"] = self._problems(stores, split)
        offsets = np.cumsum([0] + [len(st) for st in stores])
        refs = np.concatenate([st.usable() + off for st, off in zip(stores, offsets)]) if len(stores) > 1 else \
            stores[0].usable() if stores else np.zeros(0, np.int64)
        self.add_encoder_stats(split, [st.encoder_stats() for st in stores])
        return StoreView(stores, refs)

    def add_encoder_stats(self, split: str, per_store: Sequence[dict]) -> None:
        """``split/<key>`` for every count the encoder keeps (``ChatEncoder.stats``), summed over stores."""
        for key in dict.fromkeys([*self._stat_keys, *(k for d in per_store for k in d)]):
            self.stats[f"{split}/{key}"] = sum(d.get(key, 0) for d in per_store)

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        self._check_encoding()
        train = self.read(self.train_files, "train")
        if self.val_files:
            val = self.read(self.val_files, "val")
        elif self.val_fraction > 0:
            g = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(len(train), generator=g).numpy()
            n_val = max(1, int(len(train) * self.val_fraction))
            val, train = train.subset(perm[:n_val]), train.subset(perm[n_val:])
        else:
            val = train.subset(np.zeros(0, np.int64))
        if self.limit_train_samples:
            train = train.subset(np.arange(min(self.limit_train_samples, len(train))))
        if self.limit_val_samples:
            val = val.subset(np.arange(min(self.limit_val_samples, len(val))))
        if not len(train):
            files = ", ".join(i.path for i in self._sources(self.train_files))
            raise DataError(f"no usable training examples in {files}")
        self.train_examples, self.val_examples = train, (val if len(val) else [])
        self.stats["train/examples"] = len(train)
        self.stats["val/examples"] = len(val)
        self.stats["train/tokens"] = int(train.lengths.sum())
        for split in ("train", "val"):
            message = overlong_warning(split, self.stats, self.max_length, self.overlong)
            if message:
                log.warning(message)
        if self.stats.get("train/skipped_rows"):
            log.warning("train data: %d rows skipped", self.stats["train/skipped_rows"])
        if self.packing:
            self.train_set = PackedDataset(train, self.pack_length, self.seed)
            self.stats.update({f"packing/{k}": v for k, v in self.train_set.stats.as_dict().items()})
        else:
            self.train_set = ListDataset(train)
        log.info("data: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in self.stats.items()})
        release_freed_heap()  # the index arrays' temporaries, not kept resident for the whole run

    def set_epoch(self, epoch: int) -> dict | None:
        """Re-pack for a new epoch (called by the LightningModule at every epoch start)."""
        if isinstance(self.train_set, PackedDataset):
            packed = self.train_set.epoch
            stats = self.train_set.repack(epoch)
            if packed != epoch:
                release_freed_heap()  # the new packing's temporaries (setup releases its own)
            self.stats.update({f"packing/{k}": v for k, v in stats.items()})
            return stats
        return None

    # ------------------------------------------------------------- dataloaders
    def collator(self, packed: bool):
        pad = self.tokenizer.pad_token_id
        if packed:
            return PackedCollator(pad, self.pad_to_multiple_of)
        collate = PaddedCollator(pad, self.pad_to_multiple_of)
        return BatchStep(self.data_kind.batch, collate) if self.data_kind.batch else collate

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)  # shared by the sampler and the loader, as shuffle=True does
        self._sampler = ReplayableRandomSampler(self.train_set, generator=g)
        if self._resume_state is not None:
            if getattr(self.trainer, "world_size", 1) == 1:
                self._sampler.replay(self._resume_state)
                if not self._resume_state["epoch_complete"]:
                    # Lightning cannot see that this loader resumes mid-epoch; it does
                    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
            self._resume_state = None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=self._sampler,
            generator=g,
            collate_fn=self.collator(self.packing),
            num_workers=self.num_workers,
            drop_last=False,
        )

    # --------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Where the training order stands: a resumed run trains on the batches an uninterrupted one would."""
        if self._sampler is None or self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        done = progress.processed  # batches trained in this epoch (the checkpoint follows the last of them)
        complete = done >= self.trainer.num_training_batches
        return {"train_order": self._sampler.state(done * self.batch_size, complete), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if "train_order" not in state:
            return
        if state.get("batch_size") != self.batch_size:
            log.warning("checkpoint data order is for batch_size=%s, this run has %s: the data order restarts",
                        state.get("batch_size"), self.batch_size)
            return
        self._resume_state = state["train_order"]

    def val_dataloader(self):
        if not self.val_examples:
            return []
        return DataLoader(
            ListDataset(self.val_examples),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator(False),
            num_workers=self.num_workers,
        )
