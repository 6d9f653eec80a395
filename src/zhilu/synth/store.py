"""Resumable synthesis: every finished piece of work is one JSONL line, written as soon as it is done.

``JsonlStore`` is an append-only file of ``{"key": ..., ...}`` records. Reopened after an
interruption it knows which keys are done (a torn last line is cut off), so a rerun skips them:
an interruption loses at most the work in flight, and no key is ever written twice.
``ResumableGenerator`` puts a generator behind a store: only prompts without a stored completion
are sent to the model, and each completion is stored the moment it arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from zhilu.errors import DataError
from zhilu.utils.jsonl import split_lines

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class Generator(Protocol):
    """A chat model: ``generate`` yields ``(index, completion)`` as completions finish (any order)."""

    name: str

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | None = None) -> Iterator[tuple[int, str]]: ...


class JsonlStore:
    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.records: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line cut off by the interruption: drop it, it will be redone
            log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(raw) - end)
            with self.path.open("r+b") as f:
                f.truncate(end)
        for lineno, line in split_lines(raw[:end], self.path):  # \n only: U+2028 in a completion is no line end
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{self.path}:{lineno}: bad JSON in a resumable store ({exc.msg})") from None
            if not isinstance(rec, dict) or "key" not in rec:
                raise DataError(f"{self.path}:{lineno}: a store record needs a 'key'")
            self.records.setdefault(str(rec["key"]), rec)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, record: dict[str, Any]) -> bool:
        """Append ``record`` (it must have a ``key``) unless that key is done; True when written."""
        key = str(record["key"])
        if key in self.records:
            return False
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self.records[key] = record
        return True


def request_key(name: str, messages: Messages, **params: Any) -> str:
    """A stable key for one request: ``name`` plus a hash of the prompt and the parameters, so a
    changed prompt or setting is generated afresh rather than served from an old run."""
    blob = json.dumps([messages, params], ensure_ascii=False, sort_keys=True)
    return f"{name}#{hashlib.sha1(blob.encode('utf-8')).hexdigest()[:12]}"


class ResumableGenerator:
    """``run(requests)``: completions for ``(key, messages)`` pairs, each generated at most once."""

    def __init__(self, generator: Generator, store: JsonlStore, chunk_size: int = 64) -> None:
        self.generator = generator
        self.store = store
        self.chunk_size = chunk_size
        self.generated = 0
        self.reused = 0

    def run(self, requests: Sequence[tuple[str, Messages]], max_new_tokens: int | None = None) -> dict[str, str]:
        todo = [(k, m) for k, m in dict(requests).items() if k not in self.store]
        self.reused += len(dict(requests)) - len(todo)
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start: start + self.chunk_size]
            for i, text in self.generator.generate([m for _, m in chunk], max_new_tokens=max_new_tokens):
                if self.store.add({"key": chunk[i][0], "text": text, "generator": self.generator.name}):
                    self.generated += 1
        return {k: self.store.get(k)["text"] for k, _ in requests}
