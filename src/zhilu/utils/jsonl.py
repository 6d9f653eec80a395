"""The one line reader for the project's JSONL (and other line-based UTF-8) files.

``str.splitlines()`` also splits on U+2028, U+2029, U+0085 and other separators that
``json.dumps(ensure_ascii=False)`` writes raw inside strings, which cuts valid JSON rows in two.
Here lines end at ``\\n`` only (a ``\\r`` before it is dropped: CRLF files read the same), a
UTF-8 byte-order mark at the start is skipped, and a byte sequence that is not UTF-8 is reported
as one ``DataError`` naming the file, line, byte offset and (at most 200 characters of) context.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from zhilu.errors import DataError

BOM = b"\xef\xbb\xbf"
CONTEXT_CHARS = 200


def not_utf8(path: str | Path, raw: bytes, start: int | None, bad: int) -> DataError:
    """The error for invalid UTF-8 at byte ``bad`` of ``raw`` (a whole file), in the line starting at ``start``."""
    lineno = raw.count(b"\n", 0, bad) + 1
    start = raw.rfind(b"\n", 0, bad) + 1 if start is None else start
    end = raw.find(b"\n", bad)
    return line_not_utf8(path, lineno, start, raw[start: end if end >= 0 else len(raw)], bad - start)


def line_not_utf8(path: str | Path, lineno: int, offset: int, line: bytes, col: int) -> DataError:
    """The error for invalid UTF-8 at byte ``col`` of ``line``, which starts at file byte ``offset``."""
    # context: the characters around the bad byte, decoded with replacement, at most CONTEXT_CHARS
    before = line[:col].decode("utf-8", "replace")[-CONTEXT_CHARS // 2:]
    after = line[col:].decode("utf-8", "replace")[: CONTEXT_CHARS - len(before)]
    return DataError(f"{path}:{lineno}: not UTF-8 text at byte offset {offset + col} (byte 0x{line[col]:02x}, "
                     f"column byte {col}): {before + after!r} (re-encode the file as UTF-8, "
                     "e.g. iconv -f GBK -t UTF-8)")


def decode(path: str | Path, raw: bytes) -> str:
    """``raw`` as UTF-8 text without a leading BOM; invalid bytes raise one ``DataError`` line."""
    skip = len(BOM) if raw.startswith(BOM) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, raw, None, skip + exc.start) from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (BOM skipped; invalid UTF-8: ``file:line: ... byte offset``)."""
    return decode(path, Path(path).read_bytes())


def split_lines(raw: bytes, path: str | Path = "<bytes>") -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of ``raw``: split on ``\\n`` only, ``\\r\\n`` tolerated,
    BOM skipped. A final line without ``\\n`` is included."""
    pos = len(BOM) if raw.startswith(BOM) else 0
    lineno = 0
    n = len(raw)
    while pos < n:
        end = raw.find(b"\n", pos)
        stop = n if end < 0 else end
        lineno += 1
        chunk = raw[pos:stop]
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise not_utf8(path, raw, pos, pos + exc.start) from None
        yield lineno, text
        pos = stop + 1


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 file, as :func:`split_lines` gives them, but
    streamed: one line in memory at a time (binary file iteration ends lines at ``\\n`` only)."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            skip = len(BOM) if lineno == 1 and raw.startswith(BOM) else 0
            chunk = raw[:-1] if raw.endswith(b"\n") else raw
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
            try:
                text = chunk[skip:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise line_not_utf8(path, lineno, start, chunk, skip + exc.start) from None
            yield lineno, text


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, value, None)`` for every non-blank line of a JSONL file, or
    ``(line number, None, reason)`` for a line that is not JSON. Invalid UTF-8 raises ``DataError``."""
    for lineno, line in iter_lines(path):
        if line.strip():
            yield (lineno, *parse_json_line(line))


def parse_json_line(line: str) -> tuple[Any, str | None]:
    """``(value, None)`` for a JSON line, or ``(None, reason)``."""
    try:
        return json.loads(line), None
    except json.JSONDecodeError as exc:
        return None, f"bad JSON ({exc.msg} at column {exc.colno})"
