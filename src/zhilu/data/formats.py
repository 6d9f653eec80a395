"""Readers for the row formats the project trains on; every error names the file and line.

- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- ``alpaca``: ``{"instruction": str, "input": str?, "output": str, "system": str?, "history": [[q, a], ...]?}``
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
- ``preference``: ``{"messages": [... up to the last user turn] | "prompt": str, "chosen": str, "rejected": str}``
- ``unpaired``: ``{"messages": [... up to the last user turn] | "prompt": str, "completion": str, "label": bool}``
  (KTO's data: one completion, desirable or not)
- ``text``: ``{"text": str}``: pre-training text (labelled on every token by the ``sft`` kind)

A new format is a function ``row dict -> parsed row`` (raising ``RowError``) added to ``READERS``;
which kinds accept it is said in ``zhilu.data.kinds``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from zhilu.errors import ConfigError, DataError
from zhilu.utils.jsonl import iter_jsonl, iter_lines, parse_json_line, read_text

log = logging.getLogger(__name__)

Message = dict[str, str]

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class RowError(ValueError):
    """A problem with one row; the reader adds the file and line."""


def _check_messages(messages, need_last: str | None) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise RowError("empty dialogue")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise RowError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        if not isinstance(content, str):
            raise RowError(f"message {i}: content is not a string")
        if role == "system" and i != 0:
            raise RowError(f"message {i}: a system message may only come first")
        out.append({"role": role, "content": content})
    turns = [m for m in out if m["role"] != "system"]
    if not turns:
        raise RowError("empty dialogue (no user or assistant turn)")
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise RowError(f"turn {i}: expected a {expected} turn, got {m['role']}")
    if need_last and turns[-1]["role"] != need_last:
        raise RowError(f"the dialogue must end with a {need_last} turn")
    if need_last == "assistant" and not any(m["content"].strip() for m in turns if m["role"] == "assistant"):
        raise RowError("every assistant turn is empty")
    return out


def chat_row(row: dict) -> list[Message]:
    if "messages" not in row:
        raise RowError("no 'messages' field (format=chat)")
    return _check_messages(row["messages"], need_last="assistant")


def alpaca_row(row: dict) -> list[Message]:
    if not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
        raise RowError("alpaca rows need string 'instruction' and 'output' fields")
    for key in ("input", "system"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise RowError(f"'{key}' must be a string (got {type(row[key]).__name__})")
    messages: list[Message] = []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
    history = row.get("history")
    if history is not None and not isinstance(history, list):
        raise RowError(f"'history' must be a list of [question, answer] pairs (got {type(history).__name__})")
    for n, pair in enumerate(history or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError("'history' must be a list of [question, answer] pairs")
        if not all(isinstance(x, str) for x in pair):  # str(None) would train the text "None"
            raise RowError(f"history pair {n}: question and answer must be strings (got {pair!r:.80})")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = row["instruction"]
    if row.get("input"):
        prompt = f"{prompt}\n{row['input']}" if prompt else row["input"]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    return _check_messages(messages, need_last="assistant")


def sharegpt_row(row: dict) -> list[Message]:
    conv = row.get("conversations")
    if not isinstance(conv, list):
        raise RowError("no 'conversations' list (format=sharegpt)")
    messages = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise RowError(f"conversation turn {i} is not an object")
        who = turn.get("from")
        if who not in SHAREGPT_ROLES:
            raise RowError(f"conversation turn {i}: unknown speaker {who!r}")
        messages.append({"role": SHAREGPT_ROLES[who], "content": turn.get("value")})
    if row.get("system"):
        messages.insert(0, {"role": "system", "content": row["system"]})
    return _check_messages(messages, need_last="assistant")


@dataclass
class PreferencePair:
    prompt: list[Message]
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict)


def preference_row(row: dict) -> PreferencePair:
    if "messages" in row:
        prompt = _check_messages(row["messages"], need_last="user")
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        prompt = [{"role": "user", "content": row["prompt"]}]
        if row.get("system"):
            prompt.insert(0, {"role": "system", "content": row["system"]})
    else:
        raise RowError("a preference row needs 'messages' (ending with a user turn) or a 'prompt' string")
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, dict):  # {"role": "assistant", "content": ...}
            value = value.get("content")
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"'{key}' is missing or empty")
        row[key] = value
    if row["chosen"].strip() == row["rejected"].strip():
        raise RowError("'chosen' and 'rejected' are the same answer (a pair teaches nothing)")
    return PreferencePair(prompt, row["chosen"], row["rejected"], {k: row[k] for k in ("category",) if k in row})


@dataclass
class UnpairedRow:
    """One prompt with one completion labelled desirable (``True``) or undesirable (``False``)."""

    prompt: list[Message]
    completion: str
    desirable: bool
    meta: dict = field(default_factory=dict)


def _prompt_messages(row: dict, what: str) -> list[Message]:
    if "messages" in row:
        return _check_messages(row["messages"], need_last="user")
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        prompt = [{"role": "user", "content": row["prompt"]}]
        if row.get("system"):
            prompt.insert(0, {"role": "system", "content": row["system"]})
        return prompt
    raise RowError(f"{what} needs 'messages' (ending with a user turn) or a 'prompt' string")


def unpaired_row(row: dict) -> UnpairedRow:
    prompt = _prompt_messages(row, "an unpaired row")
    completion = row.get("completion")
    if isinstance(completion, dict):  # {"role": "assistant", "content": ...}
        completion = completion.get("content")
    if not isinstance(completion, str) or not completion.strip():
        raise RowError("'completion' is missing or empty")
    label = row.get("label")
    if not isinstance(label, bool):
        raise RowError(f"'label' must be true (desirable) or false (undesirable), got {label!r}")
    return UnpairedRow(prompt, completion, label, {k: row[k] for k in ("category",) if k in row})


@dataclass
class TextRow:
    """A pre-training text row (``format: text``)."""

    text: str


def text_row(row: dict) -> TextRow:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RowError("expected an object with a non-empty 'text' string (format=text)")
    return TextRow(text)


READERS: dict[str, Callable] = {
    "chat": chat_row,
    "alpaca": alpaca_row,
    "sharegpt": sharegpt_row,
    "preference": preference_row,
    "unpaired": unpaired_row,
    "text": text_row,
}


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of a JSONL file, streamed (bounded memory) by
    the one line reader (:func:`zhilu.utils.jsonl.iter_lines`: lines end at ``\\n`` only, so U+2028
    and friends inside strings stay in their row; invalid UTF-8 raises with file, line and byte offset)."""
    return ((n, line) for n, line in iter_lines(path) if line.strip())


#: ``(row, None)`` for a JSONL line, or ``(None, reason)``
parse_line = parse_json_line


def numbered_rows(path: str | Path) -> tuple[list[tuple[int, object, str | None]], str]:
    """``(number, row, error)`` for every row of a JSONL file (numbered by line) or a JSON list
    (numbered by position), and the word for the numbering (``line`` or ``row``). A line that is
    not JSON comes back with ``row=None`` and the reason; whole-file problems (and bytes that are not
    UTF-8: file, line and byte offset) raise ``DataError``. Lines end at ``\n`` only
    (:mod:`zhilu.utils.jsonl`), so U+2028/U+2029/U+0085 inside strings stay in their row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    if path.suffix == ".json":
        try:
            rows = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json data file must hold a list of rows")
        return [(i + 1, r, None) for i, r in enumerate(rows)], "row"
    return list(iter_jsonl(path)), "line"


def read_row(reader: Callable, row: object, err: str | None = None) -> tuple[object, str | None]:
    """``(parsed row, None)``, or ``(None, reason)`` for a row that ``reader`` (or JSON) rejects."""
    if err is None and not isinstance(row, dict):
        err = "row is not a JSON object"
    if err is None:
        try:
            return reader(row), None
        except RowError as exc:
            err = str(exc)
    return None, err


def row_error(path: str | Path, number: int, where: str, err: str) -> str:
    """``file:line: reason`` (JSONL) or ``file: row N: reason`` (JSON lists, tables)."""
    return f"{path}:{number}: {err}" if where == "line" else f"{path}: {where} {number}: {err}"


def check_reading(fmt: str, on_error: str) -> Callable:
    """The reader of ``fmt``; a bad ``format`` or ``on_error`` is a config error."""
    if fmt not in READERS:
        raise ConfigError(f"data.format={fmt!r}: expected one of {', '.join(READERS)}")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"data.on_error={on_error!r}: expected raise or skip")
    return READERS[fmt]


def iter_rows(path: str | Path, fmt: str, on_error: str = "raise", stats: dict | None = None) -> Iterator:
    """Parse ``path`` (JSONL, or a JSON list) with reader ``fmt``.

    ``on_error``: ``raise`` stops at the first bad row with ``file:line: reason``; ``skip`` counts
    it in ``stats["skipped"]`` and goes on.
    """
    reader = check_reading(fmt, on_error)
    path = Path(path)
    stats = stats if stats is not None else {}
    stats.setdefault("skipped", 0)
    numbered, where = numbered_rows(path)
    for lineno, row, err in numbered:
        parsed, err = read_row(reader, row, err)
        if err is None:
            yield parsed
            continue
        message = row_error(path, lineno, where, err)
        if on_error == "raise":
            raise DataError(message + " (set data.on_error=skip to skip bad rows)")
        stats["skipped"] += 1
        log.warning("skipped %s", message)
