"""The LightningDataModule for SFT and preference data, padded or packed."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from zhilu.data.collate import PackedCollator, PaddedCollator
from zhilu.data.encode import ChatEncoder, Example
from zhilu.data.formats import iter_rows
from zhilu.data.packing import best_fit_decreasing, packing_stats
from zhilu.data.sampler import ReplayableRandomSampler
from zhilu.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KINDS = {"sft": ("chat", "alpaca", "sharegpt"), "preference": ("preference",)}


class ListDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class PackedDataset(Dataset):
    """Rows of whole examples; ``repack(epoch)`` recomputes the bins with seed ``seed + epoch``."""

    def __init__(self, examples: list[Example], capacity: int, seed: int) -> None:
        self.examples = examples
        self.capacity = capacity
        self.seed = seed
        self.lengths = [ex.total_length for ex in examples]
        self.rows: list[list[int]] = []
        self.stats = None
        self.repack(0)

    def repack(self, epoch: int) -> dict:
        self.rows = best_fit_decreasing(self.lengths, self.capacity, seed=self.seed + epoch)
        self.stats = packing_stats(self.lengths, self.rows, self.capacity)
        return self.stats.as_dict()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> list[Example]:
        return [self.examples[j] for j in self.rows[i]]


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
    """Reads, validates, encodes and batches chat (SFT) or preference data.

    Args:
        kind: ``sft`` or ``preference``; must match the objective's ``data_kind``.
        train_files / val_files: paths, or ``{path, format}`` mappings to mix formats.
        format: default reader for plain paths (``chat``, ``alpaca``, ``sharegpt``, ``preference``).
        max_length: token budget of one sequence; ``overlong`` says what happens past it: ``truncate``
            (cut the end), ``truncate_prompt`` (keep the answer, cut the prompt's oldest turns), ``drop``
            or ``error`` (:func:`zhilu.data.encode.fit_example`). Rows and tokens lost are counted in
            ``stats`` (``metrics.json`` -> ``data``) and logged in one warning.
        on_error: ``raise`` (stop at the first malformed row, naming file and line) or ``skip``.
        packing: pack whole examples into rows of ``pack_length`` tokens (default ``max_length``
            for SFT, ``2 * max_length`` for preference pairs, whose two answers share a row).
        val_fraction: carve a validation split off the training data when no ``val_files``.
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
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"data.kind={kind!r}: expected one of {', '.join(KINDS)}")
        if format not in KINDS[kind]:
            raise ConfigError(f"data.format={format!r} does not fit data.kind={kind} (use {', '.join(KINDS[kind])})")
        if not train_files:
            raise ConfigError("data.train_files is empty")
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
        self.seqs_per_example = 1 if kind == "sft" else 2
        self.pack_length = pack_length or max_length * self.seqs_per_example
        self.pad_to_multiple_of = pad_to_multiple_of
        self.val_fraction = val_fraction
        self.limit_train_samples = limit_train_samples
        self.limit_val_samples = limit_val_samples
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer = tokenizer
        self.train_examples: list[Example] | None = None
        self.val_examples: list[Example] = []
        self.stats: dict[str, Any] = {}
        self.train_set: Dataset | None = None
        self._sampler: ReplayableRandomSampler | None = None
        self._resume_state: dict | None = None  # the data order of a checkpoint, for the next train loader

    # ---------------------------------------------------------------- reading
    def _sources(self, files) -> list[tuple[str, str]]:
        out = []
        for f in files:
            if isinstance(f, (str, Path)):
                out.append((str(f), self.format))
            elif hasattr(f, "get") and f.get("path"):
                out.append((str(f["path"]), f.get("format", self.format)))
            else:
                raise ConfigError(f"data file entry {f!r}: expected a path or {{path, format}}")
        return out

    def read(self, files, encoder: ChatEncoder, split: str) -> list[Example]:
        examples = []
        stats = {"skipped": 0}
        for path, fmt in self._sources(files):
            if fmt not in KINDS[self.kind]:
                raise ConfigError(f"{path}: format {fmt!r} does not fit data.kind={self.kind}")
            for n, row in enumerate(iter_rows(path, fmt, self.on_error, stats)):
                where = f"{path} row {n + 1}"
                if self.kind == "sft":
                    ex = encoder.sft(row, what=where)
                else:
                    ex = encoder.pair(row.prompt, row.chosen, row.rejected, what=where)
                if ex is not None:
                    examples.append(ex)
        self.stats[f"{split}/skipped_rows"] = stats["skipped"]
        return examples

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        if self.tokenizer is None:
            raise ConfigError("ChatDataModule needs a tokenizer (train.py passes the model's)")
        enc = ChatEncoder(self.tokenizer, self.max_length, self.overlong)
        train = self.read(self.train_files, enc, "train")
        self.stats.update({f"train/{k}": v for k, v in enc.stats.items()})
        if self.val_files:
            enc_val = ChatEncoder(self.tokenizer, self.max_length, self.overlong)
            val = self.read(self.val_files, enc_val, "val")
            self.stats.update({f"val/{k}": v for k, v in enc_val.stats.items()})
        elif self.val_fraction > 0:
            g = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(len(train), generator=g).tolist()
            n_val = max(1, int(len(train) * self.val_fraction))
            val = [train[i] for i in perm[:n_val]]
            train = [train[i] for i in perm[n_val:]]
        else:
            val = []
        if self.limit_train_samples:
            train = train[: self.limit_train_samples]
        if self.limit_val_samples:
            val = val[: self.limit_val_samples]
        if not train:
            raise DataError(f"no usable training examples in {', '.join(p for p, _ in self._sources(self.train_files))}")
        for split in (train, val):
            for i, ex in enumerate(split):
                ex.meta["id"] = i  # stable ids within a split (precomputed reference log-probs use them)
        self.train_examples, self.val_examples = train, val
        self.stats["train/examples"] = len(train)
        self.stats["val/examples"] = len(val)
        self.stats["train/tokens"] = sum(ex.total_length for ex in train)
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

    def set_epoch(self, epoch: int) -> dict | None:
        """Re-pack for a new epoch (called by the LightningModule at every epoch start)."""
        if isinstance(self.train_set, PackedDataset):
            stats = self.train_set.repack(epoch)
            self.stats.update({f"packing/{k}": v for k, v in stats.items()})
            return stats
        return None

    # ------------------------------------------------------------- dataloaders
    def collator(self, packed: bool):
        pad = self.tokenizer.pad_token_id
        return PackedCollator(pad, self.pad_to_multiple_of) if packed else PaddedCollator(pad, self.pad_to_multiple_of)

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
