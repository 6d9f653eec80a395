"""The tokenized store: every input file encoded once into Arrow files that training memory-maps.

Built with Hugging Face ``datasets`` (Arrow on disk, ``map(num_proc=...)`` over processes,
memory-mapped ``Dataset.from_file``): the same library reads the inputs users already have
(Parquet, CSV, ``save_to_disk`` folders, hub data sets), and its files are what LLaMA-Factory
and TRL cache, so nothing here is a file format of our own. One store per input file (a
mixture's sources and the train and val files each have theirs, so changing one file rebuilds
only that one), in ``<cache_dir>/<file stem>-<key>/``:

- ``data*.arrow``: one entry per example with ``input_ids`` (its sequences, int32), ``label_mask``
  (which tokens carry a label: the label is then the token itself, else -100), ``length`` (total
  tokens), ``line`` (the row's line or row number), ``status`` (ok, truncated, dropped as overlong,
  bad row, failed), ``message`` (why a row is bad) and ``meta`` (JSON, the kind's per-example data).
  Every input row leaves at least one entry (a bad or dropped row one without tokens), so the
  ``on_error`` policy, the skip and overlong counts and mixtures over rows are decided at load time
  from the same store.
- ``index/*.npy``: the row index every process reads, memory-mapped: ``line``, ``status`` and
  ``length`` of every entry, the encoder's counts of the entries that have any, and where each
  record batch of the Arrow files starts (see :class:`TokenStore`).
- ``meta.json``: the key and what went into it, counts, build time and processes.

The key hashes everything that changes the tokens: the input (path, size and mtime of each file),
the format, the kind and its encode function, every data config key except those known not to
touch tokens (``NOT_TOKEN_KEYS``: batching, splitting, packing; a new key counts until listed
there), the tokenizer (its serialized vocabulary, merges, normalizer and added tokens, the chat
template and special tokens) and the source of the encoding modules. Building happens in a
temporary folder renamed into place under a file lock: concurrent processes on one file system
build a store once and the others wait and map it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from zhilu.data.encode import IGNORE_INDEX, ChatEncoder, Example
from zhilu.data.formats import READERS, jsonl_lines, numbered_rows, parse_line, read_row, row_error
from zhilu.data.kinds import DataKind
from zhilu.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STORE_VERSION = 3
OK, TRUNCATED, DROPPED, BAD_ROW, FAILED = range(5)
STATUS_NAMES = ("ok", "truncated", "dropped_overlong", "bad_row", "failed")
# data config keys that change batching, splitting or packing, never the tokens of an example
NOT_TOKEN_KEYS = frozenset({
    "self", "__class__", "tokenizer", "name", "train_files", "val_files", "format", "on_error", "batch_size",
    "eval_batch_size", "packing", "pack_length", "pad_to_multiple_of", "val_fraction", "limit_train_samples",
    "limit_val_samples", "num_workers", "seed", "cache_dir", "num_proc",
})
MIN_ROWS_PER_PROC = 2000  # num_proc=null uses the CPU count, but no process for fewer rows than this
HUB_PREFIX = "hf://"


def _features():
    from datasets import Features, List, Value

    return Features({
        "line": Value("int64"), "status": Value("int8"), "length": Value("int32"),
        "input_ids": List(List(Value("int32"))), "label_mask": List(List(Value("bool"))),
        "message": Value("string"), "meta": Value("string"), "stats": Value("string"),
    })


# ------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Input:
    """One input: a JSONL/JSON/Parquet/CSV file, a ``datasets.save_to_disk`` folder, or ``hf://<name>``
    (passed to ``datasets.load_dataset``; ``split`` picks the split of a hub set or a DatasetDict folder)."""

    path: str
    format: str
    split: str = "train"

    @property
    def type(self) -> str:
        if self.path.startswith(HUB_PREFIX):
            return "hub"
        p = Path(self.path)
        if p.is_dir():
            return "disk"
        return {".parquet": "parquet", ".csv": "csv", ".json": "json"}.get(p.suffix.lower(), "jsonl")

    @property
    def numbering(self) -> str:
        return "line" if self.type == "jsonl" else "row"

    def check(self) -> None:
        if self.type != "hub" and not Path(self.path).exists():
            raise DataError(f"{self.path}: data file not found")

    def identity(self) -> dict:
        if self.type == "hub":
            return {"hub": self.path[len(HUB_PREFIX):], "split": self.split, "fingerprint": self._hub()._fingerprint}
        p = Path(self.path).resolve()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        return {"path": str(p), "split": self.split if p.is_dir() else None,
                "files": [(str(f.relative_to(p)) if p.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns)
                          for f in files]}

    def _hub(self):
        from datasets import load_dataset

        return load_dataset(self.path[len(HUB_PREFIX):], split=self.split)

    def rows(self, cache: Path):
        """The input as a ``datasets.Dataset``: ``(line, __raw__)`` JSON text for JSONL and JSON files
        (read by the project's readers), the table's own columns otherwise."""
        from datasets import Dataset, DatasetDict, Features, Value, load_from_disk

        kind = self.type
        if kind in ("jsonl", "json"):
            features = Features({"line": Value("int64"), "__raw__": Value("string")})
            return Dataset.from_generator(_raw_lines, features=features, cache_dir=str(cache),
                                          gen_kwargs={"path": self.path, "json_list": kind == "json"})
        if kind == "parquet":
            return Dataset.from_parquet(self.path, cache_dir=str(cache))
        if kind == "csv":
            return Dataset.from_csv(self.path, cache_dir=str(cache))
        if kind == "disk":
            ds = load_from_disk(self.path)
            if isinstance(ds, DatasetDict):
                if self.split not in ds:
                    raise DataError(f"{self.path}: no split {self.split!r} (has {', '.join(ds)})")
                ds = ds[self.split]
            return ds
        return self._hub()


def _raw_lines(path: str, json_list: bool) -> Iterator[dict]:
    if json_list:  # a JSON list is parsed whole (use JSONL for inputs larger than memory)
        numbered, _ = numbered_rows(path)
        for number, row, _err in numbered:
            yield {"line": number, "__raw__": json.dumps(row, ensure_ascii=False)}
        return
    for lineno, line in jsonl_lines(path):
        yield {"line": lineno, "__raw__": line}


# ---------------------------------------------------------------------------------- encoding
class EncodeRows:
    """The per-batch function ``datasets.map`` runs (in each of ``num_proc`` processes)."""

    def __init__(self, inp: Input, kind: DataKind, tokenizer, encoder_args: Mapping[str, Any]) -> None:
        self.inp, self.kind, self.tokenizer, self.encoder_args = inp, kind, tokenizer, dict(encoder_args)
        self.reader = READERS[inp.format]
        self.encoder: ChatEncoder | None = None

    def _rows(self, batch: dict, indices) -> Iterator[tuple[int, Any, str | None]]:
        if "__raw__" in batch:
            for number, raw in zip(batch["line"], batch["__raw__"]):
                yield (number, *parse_line(raw))
            return
        keys = list(batch)
        for i, values in zip(indices, zip(*(batch[k] for k in keys))):
            # an empty CSV cell reads as NaN: it is a missing field, as in JSON
            yield i + 1, {k: None if isinstance(v, float) and v != v else v for k, v in zip(keys, values)}, None

    def __call__(self, batch: dict, indices=None) -> dict:
        if self.encoder is None:
            self.encoder = ChatEncoder(self.tokenizer, **self.encoder_args)
        enc = self.encoder
        out: dict[str, list] = {k: [] for k in ("line", "status", "length", "input_ids", "label_mask",
                                                  "message", "meta", "stats")}

        def emit(line, status, ids=(), mask=(), message=None, meta=None, stats=None):
            out["line"].append(line)
            out["status"].append(status)
            out["length"].append(sum(len(s) for s in ids))
            out["input_ids"].append(list(ids))
            out["label_mask"].append(list(mask))
            out["message"].append(message)
            out["meta"].append(json.dumps(meta, ensure_ascii=False) if meta else None)
            out["stats"].append(json.dumps(stats) if stats else None)

        where = self.inp.numbering
        for number, row, err in self._rows(batch, indices):
            parsed, err = read_row(self.reader, row, err)
            if err is not None:
                emit(number, BAD_ROW, message=err)
                continue
            what = row_error(self.inp.path, number, where, "")[:-2]
            before = dict(enc.stats)
            try:
                examples = self.kind.encode(enc, parsed, what)
            except ConfigError as exc:
                emit(number, FAILED, message=str(exc))
                continue
            # whatever the encoder counts (truncated, dropped, tokens lost, ...), per row, on its first entry
            delta = {k: v - before.get(k, 0) for k, v in enc.stats.items() if v != before.get(k, 0)}
            if not examples:
                emit(number, DROPPED, stats=delta)
                continue
            status = TRUNCATED if delta.get("truncated") else OK
            for i, ex in enumerate(examples):
                emit(number, status, ex.input_ids, [_mask(ids, lab) for ids, lab in zip(ex.input_ids, ex.labels)],
                     meta=ex.meta, stats=delta if i == 0 else None)
        return out


def _mask(ids: Sequence[int], labels: Sequence[int]) -> list[bool]:
    if len(ids) != len(labels) or any(lab != IGNORE_INDEX and lab != t for t, lab in zip(ids, labels)):
        raise ValueError("the store keeps labels as a mask: every label must be its token or -100")
    return [lab != IGNORE_INDEX for lab in labels]


# -------------------------------------------------------------------------------------- keys
_CODE_MODULES = ("zhilu.data.encode", "zhilu.data.formats", "zhilu.data.kinds", "zhilu.model.chat_template")


def code_fingerprint(extra_modules: Sequence[str] = ()) -> str:
    """Hash of the source of what turns rows into tokens: the reading and encoding modules, and of this
    module the per-row function and the stored columns (not the loading code, so changing how a store
    is read does not rebuild it)."""
    h = hashlib.sha256()
    for obj in (EncodeRows, _mask, _features):
        h.update(inspect.getsource(obj).encode())
    for name in sorted((set(_CODE_MODULES) | set(extra_modules)) - {__name__}):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path and Path(path).is_file():
            h.update(name.encode())
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what the tokenizer encodes with: its serialized state (vocabulary, merges, normalizer,
    pre-tokenizer, added tokens), chat template, special tokens and class."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def token_config(args: Mapping[str, Any]) -> dict:
    """The data config keys that can change tokens (all but ``NOT_TOKEN_KEYS``)."""
    return {k: _plain(v) for k, v in args.items() if k not in NOT_TOKEN_KEYS and not k.startswith("_")}


def _plain(value):
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def encoder_args(config: Mapping[str, Any]) -> dict:
    """The keys of ``config`` that ``ChatEncoder`` takes (a new encoder option needs no plumbing)."""
    params = inspect.signature(ChatEncoder.__init__).parameters
    return {k: v for k, v in config.items() if k in params and k not in ("self", "tokenizer")}


def store_key(inp: Input, kind: DataKind, config: Mapping[str, Any], tokenizer_hash: str) -> tuple[str, dict]:
    reader = READERS[inp.format]
    material = {
        "store": STORE_VERSION, "input": inp.identity(), "format": inp.format, "kind": kind.name,
        "sequences": kind.sequences, "encode": f"{kind.encode.__module__}.{kind.encode.__qualname__}",
        "reader": f"{reader.__module__}.{reader.__qualname__}", "config": dict(config), "tokenizer": tokenizer_hash,
        "code": code_fingerprint((kind.encode.__module__, reader.__module__)),
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return key, material


# ------------------------------------------------------------------------------- the store
INDEX = "index"  # the row index beside the Arrow files: one .npy per column, memory-mapped


class TokenStore:
    """One input's examples, memory-mapped.

    What every process needs of every example (``line``, ``status``, ``length``, and the encoder's
    counts of the few entries that have any) is a row index of small ``.npy`` arrays written beside the
    Arrow files at build time and memory-mapped here; the Arrow files are opened without reading them
    (an Arrow IPC stream has no footer, so the index also keeps where each record batch starts), and a
    record batch is decoded, zero-copy from the mapped file, only when one of its examples is asked
    for. Opening a store of a million examples so touches about 13 bytes per example, not the pages
    of every record batch: a process's memory stays flat in the data set's size.
    """

    CACHED_BATCHES = 256

    def __init__(self, path: str | Path) -> None:
        import mmap

        import pyarrow as pa

        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        index = self.path / INDEX
        self.line = _load(index / "line.npy")
        self.status = _load(index / "status.npy")
        self.length = _load(index / "length.npy")
        batches = _load(index / "batches.npy")  # (file, byte offset, first entry) of every record batch
        self._batch_file = np.asarray(batches[:, 0])
        self._batch_offset = np.asarray(batches[:, 1])
        self._batch_start = np.asarray(batches[:, 2])
        self._buffers = []
        self._schema = None
        for name in self.meta["files"]:
            with open(self.path / name, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
            if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
                mm.madvise(mmap.MADV_RANDOM)  # no read-ahead: one batch's rows fault in those pages only
            self._buffers.append(pa.py_buffer(mm))
        self._cache: dict[int, Any] = {}
        self._stats: tuple | None = None

    def __len__(self) -> int:
        return len(self.status)

    def __getstate__(self) -> dict:  # a spawned DataLoader worker or rank maps the files again
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @property
    def source(self) -> str:
        return self.meta["input"]

    def usable(self) -> np.ndarray:
        """Entries that are examples (ok or truncated)."""
        return np.flatnonzero(self.status <= TRUNCATED)

    def counts(self, entries: np.ndarray | None = None) -> dict[str, int]:
        status = self.status if entries is None else self.status[entries]
        return dict(zip(STATUS_NAMES, np.bincount(status, minlength=len(STATUS_NAMES)).tolist()))

    def encoder_stats(self, entries: np.ndarray | None = None) -> dict[str, int]:
        """The encoder's counts (``ChatEncoder.stats``: truncated, dropped_overlong, ...) summed over
        ``entries`` (all when ``None``; repeated entries count again)."""
        if self._stats is None:
            table = np.asarray(_load(self.path / INDEX / "stats.npy"))
            keys = self.meta["stats_keys"]
            self._stats = (table[:, 0], {k: table[:, 1 + i] for i, k in enumerate(keys)})
        idx, values = self._stats
        if entries is None:
            return {k: int(v.sum()) for k, v in values.items()}
        entries = np.asarray(entries, dtype=np.int64)
        if not len(idx) or not len(entries):
            return dict.fromkeys(values, 0)
        pos = np.searchsorted(idx, entries).clip(max=len(idx) - 1)
        hit = pos[idx[pos] == entries]
        return {k: int(v[hit].sum()) for k, v in values.items()}

    def problems(self) -> np.ndarray:
        return np.flatnonzero(self.status >= BAD_ROW)

    def message(self, entry: int) -> str:
        """The one-line error of a bad or failed entry, as the readers word it."""
        (text,) = self._take("message", np.array([entry], dtype=np.int64))
        if self.status[entry] == FAILED:
            return text
        return row_error(self.source, int(self.line[entry]), self.meta["numbering"], text)

    def raise_problem(self, entry: int) -> None:
        if self.status[entry] == FAILED:
            raise ConfigError(self.message(entry))
        raise DataError(self.message(entry) + " (set data.on_error=skip to skip bad rows)")

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(first entry, end entry)`` of every input row (a row is one or more entries of one line)."""
        n = len(self.line)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        starts = np.flatnonzero(np.r_[True, self.line[1:] != self.line[:-1]])
        return starts, np.r_[starts[1:], n]

    def _batch(self, k: int):
        """Record batch ``k``, decoded from the mapped file (its buffers point into the map: no copy)."""
        batch = self._cache.get(k)
        if batch is None:
            import pyarrow as pa

            buf = self._buffers[int(self._batch_file[k])]
            if self._schema is None:
                self._schema = pa.ipc.read_schema(pa.ipc.read_message(pa.BufferReader(buf)))
            message = pa.ipc.read_message(pa.BufferReader(buf.slice(int(self._batch_offset[k]))))
            batch = pa.ipc.read_record_batch(message, self._schema)
            if len(self._cache) >= self.CACHED_BATCHES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = batch
        return batch

    def _take(self, name: str, entries: np.ndarray) -> list:
        """Values of column ``name`` at ``entries``, decoding only the record batches that hold them."""
        import pyarrow as pa

        entries = np.asarray(entries, dtype=np.int64)
        which = np.searchsorted(self._batch_start, entries, side="right") - 1
        out: list = [None] * len(entries)
        for k in np.unique(which).tolist():
            sel = np.flatnonzero(which == k)
            local = pa.array(entries[sel] - self._batch_start[k], type=pa.int64())
            for i, value in zip(sel.tolist(), self._batch(k).column(name).take(local).to_pylist()):
                out[i] = value
        return out

    def examples(self, entries: Sequence[int]) -> list[Example]:
        entries = np.asarray(entries, dtype=np.int64)
        out = []
        for seqs, masks, meta in zip(self._take("input_ids", entries), self._take("label_mask", entries),
                                     self._take("meta", entries)):
            labels = [[t if m else IGNORE_INDEX for t, m in zip(ids, mask)] for ids, mask in zip(seqs, masks)]
            out.append(Example(seqs, labels, json.loads(meta) if meta else {}))
        return out


def _load(path: Path) -> np.ndarray:
    """A ``.npy`` array memory-mapped (read-only; an empty one read, as an empty file cannot be mapped)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        return np.load(path)


def _numpy(column, dtype) -> np.ndarray:
    """A fixed-width Arrow column (chunked or not, no nulls) as one numpy array, read from its buffers
    (``to_numpy`` would import pandas: seconds at every start)."""
    chunks = getattr(column, "chunks", [column])
    size = np.dtype(dtype).itemsize
    parts = [np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c), offset=c.offset * size) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def write_index(folder: Path, files: Sequence[str]) -> dict:
    """The row index of the Arrow files ``files`` in ``folder`` (see :class:`TokenStore`), written to
    ``folder/index``; returns what goes into ``meta.json`` (counts, tokens, rows, the stats keys)."""
    import mmap

    import pyarrow as pa

    index = folder / INDEX
    index.mkdir()
    cols: dict[str, list] = {"line": [], "status": [], "length": []}
    batches, stats_entries, stats_rows, start = [], [], [], 0
    for f, name in enumerate(files):
        if not (folder / name).stat().st_size:
            continue
        with open(folder / name, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        reader = pa.BufferReader(pa.py_buffer(mm))
        schema = pa.ipc.read_schema(pa.ipc.read_message(reader))
        while True:
            offset = reader.tell()
            try:
                message = pa.ipc.read_message(reader)
            except EOFError:
                break
            batch = pa.ipc.read_record_batch(message, schema)
            batches.append((f, offset, start))
            for c, dtype in (("line", np.int64), ("status", np.int8), ("length", np.int32)):
                cols[c].append(_numpy(batch.column(c), dtype))
            for i, text in enumerate(batch.column("stats").to_pylist()):
                if text:
                    stats_entries.append(start + i)
                    stats_rows.append(json.loads(text))
            start += batch.num_rows
    arrays = {c: (np.concatenate(v) if v else np.zeros(0, dtype)) for (c, v), dtype in
              zip(cols.items(), (np.int64, np.int8, np.int32))}
    keys = sorted({k for r in stats_rows for k in r})
    stats = np.zeros((len(stats_rows), 1 + len(keys)), dtype=np.int64)
    stats[:, 0] = stats_entries
    for j, r in enumerate(stats_rows):
        stats[j, 1:] = [r.get(k, 0) for k in keys]
    for c, a in arrays.items():
        np.save(index / f"{c}.npy", a)
    np.save(index / "batches.npy", np.array(batches, dtype=np.int64).reshape(-1, 3))
    np.save(index / "stats.npy", stats)
    status = arrays["status"]
    return {"entries": len(status), "rows": int(len(np.unique(arrays["line"]))),
            "counts": dict(zip(STATUS_NAMES, np.bincount(status, minlength=len(STATUS_NAMES)).tolist())),
            "tokens": int(arrays["length"].sum(dtype=np.int64)), "stats_keys": keys}


_TEMP_ROOT: str | None = None


def temp_cache_dir() -> str:
    """A process-private cache (``data.cache_dir=null``): stores are built but not kept past the process."""
    global _TEMP_ROOT
    if _TEMP_ROOT is None:
        _TEMP_ROOT = tempfile.mkdtemp(prefix="zhilu-store-")
        atexit.register(shutil.rmtree, _TEMP_ROOT, True)
    return _TEMP_ROOT


def store_dir(cache_dir: str | Path, inp: Input, key: str) -> Path:
    stem = re.sub(r"[^\w.-]+", "_", Path(inp.path.rstrip("/")).stem or "data")[:60]
    return Path(cache_dir) / f"{stem}-{key}"


def open_store(inp: Input, kind: DataKind, config: Mapping[str, Any], tokenizer, tokenizer_hash: str,
               cache_dir: str | Path | None, num_proc: int | None = None) -> TokenStore:
    """The store of ``inp`` for this configuration: mapped if it exists, else built first (once, under
    a file lock, so concurrent processes wait for one build)."""
    from filelock import FileLock

    inp.check()
    key, material = store_key(inp, kind, config, tokenizer_hash)
    out = store_dir(cache_dir or temp_cache_dir(), inp, key)
    if not (out / "meta.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock"):
            if not (out / "meta.json").is_file():
                build_store(inp, kind, config, tokenizer, out, key, material, num_proc)
    return TokenStore(out)


def effective_num_proc(num_proc: int | None, rows: int) -> int:
    if num_proc is not None:
        if num_proc < 1:
            raise ConfigError(f"data.num_proc={num_proc}: expected a positive number of processes (or null)")
        return max(1, min(num_proc, rows))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, rows // MIN_ROWS_PER_PROC))


@contextlib.contextmanager
def progress_bars_on_a_terminal():
    """``datasets``' progress bars only when stderr is a terminal: in a log or a pipe they are noise, and a
    bad input must end with one ``error:`` line on stderr (the build's summary is logged either way)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    if was and not sys.stderr.isatty():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def build_store(inp: Input, kind: DataKind, config: Mapping[str, Any], tokenizer, out: Path, key: str,
                material: dict, num_proc: int | None = None) -> Path:
    """Tokenize ``inp`` into ``out`` (through a temporary folder renamed into place)."""
    with progress_bars_on_a_terminal():
        return _build_store(inp, kind, config, tokenizer, out, key, material, num_proc)


def _build_store(inp: Input, kind: DataKind, config: Mapping[str, Any], tokenizer, out: Path, key: str,
                 material: dict, num_proc: int | None) -> Path:
    t0 = time.perf_counter()
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        raw = inp.rows(tmp / "raw")
        procs = effective_num_proc(num_proc, len(raw))
        fn = EncodeRows(inp, kind, tokenizer, encoder_args(config))
        ds = raw.map(fn, batched=True, batch_size=256, with_indices="__raw__" not in raw.column_names,
                     remove_columns=raw.column_names, features=_features(), num_proc=procs if procs > 1 else None,
                     cache_file_name=str(tmp / "data.arrow"), new_fingerprint=key, load_from_cache_file=False,
                     desc=f"tokenizing {Path(inp.path).name}")
        files = [os.path.relpath(f["filename"], tmp) for f in ds.cache_files]
        del ds, raw
        summary = write_index(tmp, files)
        counts = summary["counts"]
        seconds = time.perf_counter() - t0
        meta = {"key": key, "input": inp.path, "format": inp.format, "kind": kind.name, "numbering": inp.numbering,
                "files": files, **summary, "num_proc": procs, "build_s": round(seconds, 3), "built_by": os.getpid(),
                "material": material}
        shutil.rmtree(tmp / "raw", ignore_errors=True)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("data store: %s -> %s (%d rows, %d examples, %.1f s on %d processes)", inp.path, out, meta["rows"],
             counts["ok"] + counts["truncated"], seconds, procs)
    return out
