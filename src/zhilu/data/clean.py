"""Clean instruction data: normalise, filter by length and language, remove exact and near
duplicates, and drop rows that leak benchmark questions; report what each step removed and why.

- Near-duplicates: MinHash signatures of character n-gram shingles with LSH banding (Broder,
  "On the resemblance and containment of documents", 1997; Leskovec et al., *Mining of Massive
  Datasets* ch. 3, http://www.mmds.org/), via ``datasketch``; every LSH candidate is checked with
  the exact Jaccard similarity, so the threshold is exact and only recall depends on MinHash.
  Why it matters: Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better",
  https://arxiv.org/abs/2107.06499.
- Benchmark leaks: character n-gram overlap with C-Eval / CMMLU / FinEval questions, the
  contamination check of GPT-3 (Brown et al. 2020, https://arxiv.org/abs/2005.14165, appendix C)
  on characters because Chinese has no spaces.

Usage::

    python -m zhilu.data.clean data/finance_sft/train.jsonl --format chat --out clean/train.jsonl \\
        --benchmark-dir ../shared/data/ceval --benchmark-dir ../shared/data/cmmlu

writes the kept rows (same format, normalised), ``<out>.removed.jsonl`` (each removed row with its
step and reason) and ``<out>.report.json``, and prints a table of the removals per step.

The command streams: rows are read in chunks, the per-row steps (normalisation, filters, the
exact-dedup digest, MinHash signatures, the benchmark match) run on ``--num-proc`` processes, and
deduplication keeps only a digest per unique row and the LSH band keys of the kept rows in memory
(the kept rows' text is spooled to disk for the exact Jaccard check), so memory grows with the
number of unique rows, not with the data (``bench/data_scale.py``: 1M rows). The in-memory step
classes below (``run_steps``) give the same result and are what a library caller composes.

More than one machine: run the same per-row functions on an existing engine rather than a
scheduler of ours, e.g. datatrove (``LocalPipelineExecutor`` / ``SlurmPipelineExecutor`` with a
``JsonlReader``, a filter step wrapping ``Normalize``/``LengthFilter``/``LanguageFilter``, and its
own MinHash dedup stages ``MinhashDedupSignature`` -> ``Buckets`` -> ``Cluster`` -> ``Filter``), or
Ray Data (``ray.data.read_json(...).map_batches(per_row_steps)`` then a groupby on the exact-dedup
digest); then run ``python -m zhilu.data.clean`` once more on the merged output so the report and
the near-dedup decisions are this project's.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from zhilu.data.formats import READERS, PreferencePair, RowError, jsonl_lines, numbered_rows, parse_line
from zhilu.errors import ConfigError, DataError
from zhilu.utils.jsonl import iter_jsonl, read_text

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ text normalisation
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _fullwidth_to_ascii(ch: str) -> str:
    """Full-width digits and Latin letters become ASCII; Chinese punctuation (，。？) is kept."""
    o = ord(ch)
    if 0xFF10 <= o <= 0xFF19 or 0xFF21 <= o <= 0xFF3A or 0xFF41 <= o <= 0xFF5A:
        return chr(o - 0xFEE0)
    return ch


def normalize_text(text: str) -> str:
    """Unicode clean-up that keeps the text's meaning and Chinese punctuation.

    Line endings become ``\\n``; zero-width and control characters go; full-width digits and
    letters become ASCII; runs of spaces (incl. the ideographic space) become one space; trailing
    spaces on lines and runs of 3+ newlines are trimmed; the ends are stripped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_ZERO_WIDTH)
    text = "".join(
        _fullwidth_to_ascii(ch) for ch in text
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")
    )
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip(" ") for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def canonical(text: str) -> str:
    """Lower-cased text without white space, punctuation or symbols: the key for exact matching."""
    return "".join(ch for ch in text.lower() if not ch.isspace() and unicodedata.category(ch)[0] not in "PSZ")


def char_ngrams(text: str, n: int) -> set[str]:
    """Character n-grams of ``canonical(text)``; a text shorter than ``n`` is its own single gram."""
    t = canonical(text)
    if not t:
        return set()
    if len(t) <= n:
        return {t}
    return {t[i: i + n] for i in range(len(t) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ----------------------------------------------------------------------- language guess
_SCRIPTS: list[tuple[str, Sequence[tuple[int, int]]]] = [
    ("han", ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))),
    ("kana", ((0x3040, 0x30FF), (0x31F0, 0x31FF))),
    ("hangul", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F))),
    ("cyrillic", ((0x0400, 0x04FF),)),
    ("arabic", ((0x0600, 0x06FF),)),
    ("devanagari", ((0x0900, 0x097F),)),
    ("thai", ((0x0E00, 0x0E7F),)),
]
_SCRIPT_LANG = {"han": "zh", "latin": "en", "kana": "ja", "hangul": "ko", "cyrillic": "ru",
                "arabic": "ar", "devanagari": "hi", "thai": "th"}


def script_counts(text: str) -> Counter:
    counts: Counter = Counter()
    for ch in text:
        if not ch.isalpha():
            continue
        o = ord(ch)
        for name, ranges in _SCRIPTS:
            if any(lo <= o <= hi for lo, hi in ranges):
                counts[name] += 1
                break
        else:
            if o < 0x250:  # ASCII and Latin-1/Extended-A/B letters
                counts["latin"] += 1
            else:
                counts["other"] += 1
    return counts


def detect_language(text: str, min_han_share: float = 0.2) -> str:
    """A script-based guess: ``zh``, ``en`` (any Latin-script text), ``ja``, ``ko``, ``ru`` ... or ``none``.

    Chinese text quoting English terms stays ``zh``: a Han character carries about as much as an
    English word, so ``zh`` needs only ``min_han_share`` of the letters to be Han. Japanese is
    told apart by kana (10% of the Han + kana letters).
    """
    c = script_counts(text)
    total = sum(c.values())
    if total == 0:
        return "none"
    if c["kana"] > 0.1 * (c["han"] + c["kana"]):
        return "ja"
    if c["han"] >= min_han_share * total:
        return "zh"
    script = max((s for s in c if s != "han"), key=lambda s: c[s])
    return _SCRIPT_LANG.get(script, "other")


# ---------------------------------------------------------------------------- records
def _messages_view(messages: list[dict]) -> tuple[str, str]:
    prompt = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
    answer = "\n".join(m["content"] for m in messages if m["role"] == "assistant")
    return prompt, answer


def _text_view(row: dict) -> tuple[str, str]:
    if not isinstance(row.get("text"), str):
        raise RowError("no 'text' string (format=text)")
    return "", row["text"]


def row_view(row: dict, fmt: str) -> tuple[str, str]:
    """(prompt text, answer text) of a row: user/system turns and assistant turns (the chosen answer
    for preference rows; the whole ``text`` for pre-training rows)."""
    if fmt == "text":
        return _text_view(row)
    parsed = READERS[fmt](dict(row))
    if isinstance(parsed, PreferencePair):
        return "\n".join(m["content"] for m in parsed.prompt), parsed.chosen
    return _messages_view(parsed)


FORMATS = tuple(dict.fromkeys((*READERS, "text")))


@dataclass
class Record:
    """One row of a data file: where it came from, the row itself, and its text views."""

    source: str
    line: int
    row: dict
    fmt: str
    prompt: str = ""
    answer: str = ""

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.prompt, self.answer = row_view(self.row, self.fmt)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def full(self) -> str:
        return f"{self.prompt}\n{self.answer}" if self.prompt else self.answer

    def text(self, key: str) -> str:
        return {"prompt": self.prompt or self.answer, "answer": self.answer, "full": self.full}[key]


def read_records(path: str | Path, fmt: str, on_error: str = "raise", bad: list | None = None) -> list[Record]:
    """Read a JSONL (or JSON list) file of ``fmt`` rows; a bad row raises ``file:line: reason``,
    or with ``on_error=skip`` goes to ``bad`` as ``(where, reason)``."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    path = Path(path)
    numbered = [(n, row if err is None else RowError(err)) for n, row, err in numbered_rows(path)[0]]
    out = []
    for lineno, row in numbered:
        try:
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, dict):
                raise RowError("row is not a JSON object")
            out.append(Record(str(path), lineno, row, fmt))
        except RowError as exc:
            if on_error == "raise":
                raise DataError(f"{path}:{lineno}: {exc} (use --on-error skip to skip bad rows)") from None
            if bad is not None:
                bad.append((f"{path}:{lineno}", str(exc)))
    return out


# ------------------------------------------------------------------------------ steps
@dataclass
class Removal:
    record: Record
    reason: str
    detail: str = ""


class Step(Protocol):
    name: str

    def __call__(self, records: list[Record]) -> tuple[list[Record], list[Removal]]: ...


def _map_strings(obj, fn: Callable[[str], str]):
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_strings(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {k: _map_strings(v, fn) for k, v in obj.items()}
    return obj


class Normalize:
    """``normalize_text`` on every string of a row; rows left without usable text are removed."""

    name = "normalize"

    def __init__(self) -> None:
        self.changed = 0

    def __call__(self, records):
        kept, removed = [], []
        for r in records:
            new = _map_strings(r.row, normalize_text)
            if new != r.row:
                self.changed += 1
            old_row, r.row = r.row, new
            try:
                r.refresh()
            except RowError as exc:
                r.row = old_row
                removed.append(Removal(r, "empty after normalisation", str(exc)))
                continue
            if not canonical(r.answer):
                removed.append(Removal(r, "empty after normalisation", "no answer text"))
                continue
            kept.append(r)
        return kept, removed


@dataclass
class LengthFilter:
    """Character-length limits on the prompt, the answer and the whole row (``None`` = no limit)."""

    min_prompt_chars: int | None = None
    max_prompt_chars: int | None = None
    min_answer_chars: int | None = 1
    max_answer_chars: int | None = None
    max_total_chars: int | None = 16000
    name: str = "length"

    def __call__(self, records):
        checks = [
            ("prompt", self.min_prompt_chars, self.max_prompt_chars),
            ("answer", self.min_answer_chars, self.max_answer_chars),
            ("full", None, self.max_total_chars),
        ]
        kept, removed = [], []
        for r in records:
            why = None
            for key, lo, hi in checks:
                if key == "prompt" and r.fmt == "text":  # pre-training text has no prompt
                    continue
                n = len(r.prompt if key == "prompt" else r.text(key))
                if lo is not None and n < lo:
                    why = (f"{key} too short", f"{n} < {lo} chars")
                elif hi is not None and n > hi:
                    why = (f"{key} too long", f"{n} > {hi} chars")
                if why:
                    break
            if why:
                removed.append(Removal(r, *why))
            else:
                kept.append(r)
        return kept, removed


@dataclass
class LanguageFilter:
    """Keep rows whose text (``key``) is in one of ``allowed`` languages (see ``detect_language``)."""

    allowed: Sequence[str] = ("zh", "en")
    key: str = "full"
    min_han_share: float = 0.2
    name: str = "language"

    def __call__(self, records):
        kept, removed = [], []
        for r in records:
            lang = detect_language(r.text(self.key), self.min_han_share)
            if lang in self.allowed:
                kept.append(r)
            else:
                removed.append(Removal(r, f"language {lang}", f"allowed: {', '.join(self.allowed)}"))
        return kept, removed


@dataclass
class ExactDedup:
    """Drop a row whose canonical ``key`` text (no case, spaces or punctuation) was seen before."""

    key: str = "full"
    name: str = "exact_dedup"

    def __call__(self, records):
        seen: dict[str, Record] = {}
        kept, removed = [], []
        for r in records:
            h = hashlib.sha1(canonical(r.text(self.key)).encode("utf-8")).hexdigest()
            if h in seen:
                removed.append(Removal(r, "exact duplicate", f"of {seen[h].where}"))
            else:
                seen[h] = r
                kept.append(r)
        return kept, removed


@dataclass
class NearDedup:
    """MinHash LSH over character ``ngram`` shingles; a row is a near-duplicate of an earlier kept
    row when their exact shingle Jaccard similarity is at least ``threshold``. The LSH bands are
    tuned for ``threshold - lsh_slack`` so that pairs just above the threshold, whose MinHash
    estimate falls below it, are still candidates (recall; the exact check keeps precision)."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    key: str = "full"
    seed: int = 1
    lsh_slack: float = 0.1
    name: str = "near_dedup"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"near_dedup threshold={self.threshold}: expected a value in (0, 1]")
        if self.ngram < 1 or self.num_perm < 1:  # 0-grams: every row shares the empty shingle
            raise ConfigError(f"near_dedup ngram={self.ngram}, num_perm={self.num_perm}: expected integers >= 1")

    def __call__(self, records):
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=max(0.05, self.threshold - self.lsh_slack), num_perm=self.num_perm)
        shingles: dict[int, set[str]] = {}
        kept, removed = [], []
        for i, r in enumerate(records):
            grams = char_ngrams(r.text(self.key), self.ngram)
            m = MinHash(num_perm=self.num_perm, seed=self.seed)
            m.update_batch([g.encode("utf-8") for g in grams])
            best, best_sim = None, 0.0
            for j in sorted(lsh.query(m)):  # ties go to the earliest row
                sim = jaccard(grams, shingles[j])
                if sim >= self.threshold and sim > best_sim:
                    best, best_sim = j, sim
            if best is not None:
                removed.append(Removal(r, "near duplicate", f"of {records[best].where} (Jaccard {best_sim:.2f})"))
                continue
            shingles[i] = grams
            lsh.insert(i, m)
            kept.append(r)
        return kept, removed


@dataclass
class BenchQuestion:
    source: str
    text: str


def load_benchmark_questions(dirs: Iterable[str | Path]) -> list[BenchQuestion]:
    """Questions from every ``*.csv`` (a ``question``/``Question`` column: C-Eval, CMMLU, FinEval)
    and ``*.jsonl`` (a ``question`` field) file under ``dirs``."""
    out: list[BenchQuestion] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise DataError(f"benchmark dir {d}: not found")
        files = [d] if d.is_file() else sorted(p for p in d.rglob("*") if p.suffix in (".csv", ".jsonl"))
        for f in files:
            if f.suffix == ".csv":
                with io.StringIO(read_text(f), newline="") as fh:
                    reader = csv.DictReader(fh)
                    col = next((c for c in (reader.fieldnames or []) if c and c.lower() == "question"), None)
                    if col is None:
                        continue
                    for n, row in enumerate(reader, start=2):
                        if row.get(col):
                            out.append(BenchQuestion(f"{f}:{n}", row[col]))
            else:
                for n, row, _ in iter_jsonl(f):
                    q = row.get("question") if isinstance(row, dict) else None
                    if isinstance(q, str) and q:
                        out.append(BenchQuestion(f"{f}:{n}", q))
    return out


class BenchmarkLeakFilter:
    """Drop rows that contain a benchmark question: at least ``min_overlap`` of the question's
    character ``ngram``-grams occur in the row's ``key`` text. Questions shorter than
    ``min_question_chars`` (after removing spaces and punctuation) are ignored as too generic.
    """

    name = "benchmark_leak"

    def __init__(self, benchmark_dirs: Sequence[str | Path] = (), ngram: int = 13, min_overlap: float = 0.5,
                 min_question_chars: int = 10, key: str = "full",
                 questions: Sequence[BenchQuestion] | None = None) -> None:
        if not 0.0 < min_overlap <= 1.0:
            raise ConfigError(f"benchmark_leak min_overlap={min_overlap}: expected a value in (0, 1]")
        self.ngram, self.min_overlap, self.key = ngram, min_overlap, key
        self.questions = list(questions) if questions is not None else load_benchmark_questions(benchmark_dirs)
        self.index: dict[str, list[int]] = {}
        self.sizes: list[int] = []
        for qi, q in enumerate(self.questions):
            grams = char_ngrams(q.text, ngram) if len(canonical(q.text)) >= min_question_chars else set()
            self.sizes.append(len(grams))
            for g in grams:
                self.index.setdefault(g, []).append(qi)
        log.info("benchmark leak filter: %d questions, %d %d-grams", len(self.questions), len(self.index), ngram)

    def match(self, text: str) -> tuple[int, float] | None:
        """The best-overlapping benchmark question over the threshold: (question index, overlap)."""
        hits: Counter = Counter()
        for g in char_ngrams(text, self.ngram):
            for qi in self.index.get(g, ()):
                hits[qi] += 1
        best = None
        for qi, n in hits.items():
            share = n / self.sizes[qi]
            if share >= self.min_overlap and (best is None or share > best[1]):
                best = (qi, share)
        return best

    def __call__(self, records):
        kept, removed = [], []
        for r in records:
            m = self.match(r.text(self.key))
            if m is None:
                kept.append(r)
            else:
                q = self.questions[m[0]]
                removed.append(Removal(r, "benchmark leak", f"{m[1]:.0%} of {q.source}: {q.text[:60]}"))
        return kept, removed


# --------------------------------------------------------------------------- pipeline
@dataclass
class StepReport:
    step: str
    rows_in: int
    removed: int
    rows_out: int
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)


def run_steps(records: list[Record], steps: Sequence[Step], n_examples: int = 3
              ) -> tuple[list[Record], list[StepReport], list[tuple[str, Removal]]]:
    """Apply ``steps`` in order; returns the kept records, one report per step and every removal."""
    reports, removals = [], []
    for step in steps:
        n_in = len(records)
        records, removed = step(records)
        reasons = Counter(rm.reason for rm in removed)
        examples = [{"where": rm.record.where, "reason": rm.reason, "detail": rm.detail} for rm in removed[:n_examples]]
        rep = StepReport(step.name, n_in, len(removed), len(records), dict(reasons.most_common()), examples)
        if step.name == "normalize":
            rep.reasons = {"(rows changed, kept)": getattr(step, "changed", 0), **rep.reasons}
        reports.append(rep)
        removals += [(step.name, rm) for rm in removed]
    return records, reports, removals


def format_table(reports: Sequence[StepReport]) -> str:
    lines = [f"{'step':<16}{'in':>8}{'removed':>9}{'out':>8}  why", "-" * 72]
    for r in reports:
        why = "; ".join(f"{k}: {v}" for k, v in r.reasons.items()) or "-"
        lines.append(f"{r.step:<16}{r.rows_in:>8}{r.removed:>9}{r.rows_out:>8}  {why}")
    return "\n".join(lines)


def default_steps(args: argparse.Namespace) -> list[Step]:
    steps: list[Step] = [Normalize()]
    steps.append(LengthFilter(args.min_prompt_chars, args.max_prompt_chars, args.min_answer_chars,
                              args.max_answer_chars, args.max_total_chars))
    if args.languages:
        steps.append(LanguageFilter(tuple(args.languages)))
    steps.append(ExactDedup(args.dedup_key))
    if args.near_threshold < 1.0:
        steps.append(NearDedup(args.near_threshold, args.num_perm, args.shingle, args.dedup_key))
    if args.benchmark_dir:
        steps.append(BenchmarkLeakFilter(args.benchmark_dir, args.leak_ngram, args.leak_overlap,
                                         args.leak_min_chars, args.leak_key))
    return steps


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zhilu.data.clean", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="JSONL / JSON data files (all in --format)")
    p.add_argument("--format", default="chat", choices=FORMATS)
    p.add_argument("--out", required=True, help="cleaned JSONL; beside it <out>.removed.jsonl and <out>.report.json")
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"), help="malformed rows")
    p.add_argument("--min-prompt-chars", type=int, default=None)
    p.add_argument("--max-prompt-chars", type=int, default=None)
    p.add_argument("--min-answer-chars", type=int, default=1)
    p.add_argument("--max-answer-chars", type=int, default=None)
    p.add_argument("--max-total-chars", type=int, default=16000)
    p.add_argument("--languages", nargs="*", default=["zh", "en"], help="allowed languages (none: no filter)")
    p.add_argument("--dedup-key", default="full", choices=("full", "prompt", "answer"))
    p.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard threshold (1.0: off)")
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--shingle", type=int, default=5, help="character n-gram size for near-dedup")
    p.add_argument("--benchmark-dir", action="append", default=[],
                   help="folder of benchmark CSV/JSONL questions (repeatable), e.g. ../shared/data/ceval")
    p.add_argument("--leak-ngram", type=int, default=13)
    p.add_argument("--leak-overlap", type=float, default=0.5, help="share of a question's n-grams found in a row")
    p.add_argument("--leak-min-chars", type=int, default=10)
    p.add_argument("--leak-key", default="full", choices=("full", "prompt", "answer"))
    p.add_argument("--num-proc", type=int, default=os.cpu_count() or 1,
                   help="processes for the per-row steps (normalise, filters, hashing, MinHash)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Numbers that would silently remove the wrong rows (``--shingle 0`` makes every row a near-duplicate)."""
    for name in ("shingle", "num_perm", "leak_ngram", "leak_min_chars", "min_answer_chars", "max_total_chars",
                 "min_prompt_chars", "max_prompt_chars", "max_answer_chars"):
        value = getattr(args, name)
        low = 0 if name in ("leak_min_chars", "min_answer_chars", "min_prompt_chars") else 1
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected an integer >= {low}")
    for name in ("near_threshold", "leak_overlap"):
        value = getattr(args, name)
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected a value in (0, 1]")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# ------------------------------------------------------------------ streaming pipeline
# ``main`` runs the same steps as ``run_steps`` without holding the data set: the per-row steps (and
# each kept row's exact-dedup digest, MinHash band keys and benchmark match) run on ``--num-proc``
# processes over chunks of rows, in order; the main process then applies the deduplication online
# (exact: a digest per unique row; near: the LSH band keys of the kept rows, their text re-read from
# a spool file for the exact Jaccard check) and writes every output as it goes.
CHUNK_ROWS = 2000
_WORKER: dict = {}


def _numbered_lines(path: str) -> Iterator[tuple[int, str | None, str | None]]:
    """``(number, raw JSON text, error)`` of every row of a JSONL file (streamed) or JSON list."""
    p = Path(path)
    if p.suffix == ".json":
        for n, row, err in numbered_rows(p)[0]:
            yield n, None if err else json.dumps(row, ensure_ascii=False), err
        return
    if not p.is_file():
        raise DataError(f"{p}: data file not found")
    for n, line in jsonl_lines(p):
        yield n, line, None


def _chunks(inputs: Sequence[str]) -> Iterator[list]:
    chunk: list = []
    for path in inputs:
        for n, raw, err in _numbered_lines(path):
            chunk.append((path, n, raw, err))
            if len(chunk) >= CHUNK_ROWS:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _band_keys(grams: set[str], near: "NearDedup", bands: list[tuple[int, int]]) -> list[int]:
    from datasketch import MinHash

    m = MinHash(num_perm=near.num_perm, seed=near.seed)
    m.update_batch([g.encode("utf-8") for g in grams])
    hv = m.hashvalues
    return [int.from_bytes(hashlib.blake2b(hv[a:b].tobytes(), digest_size=8).digest(), "little") for a, b in bands]


def _process_chunk(chunk: list) -> list:
    """Per-row steps on one chunk; one result per row, in order."""
    fmt, pre, exact, near, bands, leak = (_WORKER[k] for k in ("fmt", "pre", "exact", "near", "bands", "leak"))
    out = []
    for path, n, raw, err in chunk:
        row = None
        if err is None:
            row, err = parse_line(raw)
        if err is None and not isinstance(row, dict):
            err = "row is not a JSON object"
        if err is None:
            try:
                rec = Record(path, n, row, fmt)
            except RowError as exc:
                err = str(exc)
        if err is not None:
            out.append(("bad", path, n, err))
            continue
        removed = None
        before = sum(getattr(step, "changed", 0) for step in pre)
        for step in pre:
            kept, gone = step([rec])
            if gone:
                removed = (step.name, gone[0].reason, gone[0].detail)
                break
        changed = sum(getattr(step, "changed", 0) for step in pre) - before  # Normalize's count of edited rows
        if removed is not None:
            out.append(("removed", path, n, removed, rec.row, changed))
            continue
        digest = hashlib.sha1(canonical(rec.text(exact.key)).encode("utf-8")).digest() if exact else None
        keys = _band_keys(char_ngrams(rec.text(near.key), near.ngram), near, bands) if near else None
        hit = None
        if leak is not None:
            m = leak.match(rec.text(leak.key))
            if m is not None:
                q = leak.questions[m[0]]
                hit = ("benchmark leak", f"{m[1]:.0%} of {q.source}: {q.text[:60]}")
        out.append(("row", path, n, rec.row, changed, digest, keys, hit))
    return out


class _Spool:
    """Kept rows on disk, re-read by position for the near-dedup Jaccard check (a few cached)."""

    def __init__(self, path: Path, fmt: str, key: str, ngram: int, cache: int = 4096) -> None:
        import functools

        self.path, self.fmt, self.key, self.ngram = path, fmt, key, ngram
        self.f = path.open("w+b")
        self.offsets: list[int] = []
        self.grams = functools.lru_cache(maxsize=cache)(self._grams)

    def add(self, path: str, line: int, row: dict) -> int:
        self.f.seek(0, 2)
        self.offsets.append(self.f.tell())
        self.f.write((json.dumps([path, line, row], ensure_ascii=False) + "\n").encode("utf-8"))
        return len(self.offsets) - 1

    def get(self, i: int) -> Record:
        self.f.seek(self.offsets[i])
        path, line, row = json.loads(self.f.readline())
        return Record(path, line, row, self.fmt)

    def _grams(self, i: int) -> frozenset:
        return frozenset(char_ngrams(self.get(i).text(self.key), self.ngram))

    def close(self) -> None:
        self.f.close()
        self.path.unlink(missing_ok=True)


def _in_order(pool, fn, items, ahead: int):
    """``pool.imap(fn, items)`` with at most ``ahead`` chunks in flight. ``imap`` keeps every finished
    result until the caller takes it, so when the caller (here the dedup loop) is the slower side the
    backlog grows without bound (5.5 minutes into 1M unique rows the loop had written 468k rows while
    the input had been read to 79%: the results between waited in memory)."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _where(files: dict[str, int], packed: int) -> str:
    number, line = packed >> 40, packed & ((1 << 40) - 1)
    return f"{next(p for p, i in files.items() if i == number)}:{line}"


class _BandIndex:
    """LSH band key -> ids of the kept rows with that key, one table per band, compact.

    Keys merged so far sit in sorted numpy arrays (a uint64 key and an int32 row id: 12 bytes a key),
    the ones added since the last merge in a dict; a Python dict of every key (an int, a list and an
    entry: about 250 bytes a key, 14 keys a row at the default threshold) grows by 3.5 KB a kept row.
    """

    def __init__(self, bands: int, merge_every: int = 1 << 16) -> None:
        import numpy as np

        self.keys = [np.zeros(0, np.uint64) for _ in range(bands)]
        self.ids = [np.zeros(0, np.int32) for _ in range(bands)]
        self.recent: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        self.merge_every, self.pending = merge_every, 0

    def candidates(self, keys: Sequence[int]) -> list[int]:
        """Ids of the rows sharing at least one band key with ``keys``, ascending."""
        import numpy as np

        out: set[int] = set()
        for b, k in enumerate(keys):
            arr, key = self.keys[b], np.uint64(k)
            lo = int(np.searchsorted(arr, key, side="left"))
            if lo < len(arr) and arr[lo] == key:
                out.update(self.ids[b][lo:int(np.searchsorted(arr, key, side="right"))].tolist())
            out.update(self.recent[b].get(k, ()))
        return sorted(out)

    def add(self, i: int, keys: Sequence[int]) -> None:
        for b, k in enumerate(keys):
            self.recent[b].setdefault(k, []).append(i)
        self.pending += 1
        if self.pending >= self.merge_every:
            self.merge()

    def merge(self) -> None:
        import numpy as np

        for b, recent in enumerate(self.recent):
            if not recent:
                continue
            n = sum(len(v) for v in recent.values())
            keys = np.fromiter((k for k, ids in recent.items() for _ in ids), np.uint64, count=n)
            ids = np.fromiter((i for v in recent.values() for i in v), np.int32, count=n)
            keys, ids = np.concatenate([self.keys[b], keys]), np.concatenate([self.ids[b], ids])
            order = np.argsort(keys, kind="stable")
            self.keys[b], self.ids[b] = keys[order], ids[order]
            recent.clear()
        self.pending = 0


def stream_clean(args: argparse.Namespace, steps: Sequence[Step], out: Path, removed_path: Path,
                 n_examples: int = 3) -> tuple[int, int, list[StepReport]]:
    """Run ``steps`` (``default_steps``: per-row steps, then exact and near dedup, then the leak filter)
    over ``args.inputs`` in bounded memory; returns ``(rows read, malformed skipped, reports)``."""
    import multiprocessing as mp
    import tempfile

    names = [s.name for s in steps]
    pre = [s for s in steps if s.name in ("normalize", "length", "language")]
    exact = next((s for s in steps if isinstance(s, ExactDedup)), None)
    near = next((s for s in steps if isinstance(s, NearDedup)), None)
    leak = next((s for s in steps if isinstance(s, BenchmarkLeakFilter)), None)
    if names != [s.name for s in pre] + [s.name for s in (exact, near, leak) if s is not None]:
        raise ConfigError(f"clean: steps {names} are not in the streaming order (per-row, exact, near, leak)")
    bands = []
    if near is not None:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=max(0.05, near.threshold - near.lsh_slack), num_perm=near.num_perm)
        bands = [(i * lsh.r, (i + 1) * lsh.r) for i in range(lsh.b)]
    _WORKER.update(fmt=args.format, pre=pre, exact=exact, near=near, bands=bands, leak=leak)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clean-", dir=out.parent))
    spool = _Spool(tmp / "spool.jsonl", args.format, near.key, near.ngram) if near else None
    step_files = {name: (tmp / f"removed-{i}.jsonl").open("w", encoding="utf-8") for i, name in enumerate(names)}
    reasons = {name: Counter() for name in names}
    examples: dict[str, list] = {name: [] for name in names}
    changed = read = bad = 0
    seen: dict[bytes, int] = {}  # exact-dedup digest -> where its first row is (file number << 40 | line)
    files: dict[str, int] = {}
    index = _BandIndex(len(bands))

    def remove(step: str, where: str, row: dict, reason: str, detail: str) -> None:
        reasons[step][reason] += 1
        if len(examples[step]) < n_examples:
            examples[step].append({"where": where, "reason": reason, "detail": detail})
        step_files[step].write(json.dumps({"step": step, "reason": reason, "detail": detail, "where": where,
                                           "row": row}, ensure_ascii=False) + "\n")

    procs = max(1, args.num_proc or 1)
    pool = mp.get_context("fork").Pool(procs) if procs > 1 else None
    results = _in_order(pool, _process_chunk, _chunks(args.inputs), 2 * procs) if pool else \
        map(_process_chunk, _chunks(args.inputs))
    try:
        with out.open("w", encoding="utf-8") as kept_file:
            for chunk in results:
                for res in chunk:
                    read += 1
                    kind, path, n = res[0], res[1], res[2]
                    where = f"{path}:{n}"
                    if kind == "bad":
                        if args.on_error == "raise":
                            raise DataError(f"{where}: {res[3]} (use --on-error skip to skip bad rows)")
                        bad += 1
                        continue
                    if kind == "removed":
                        (step, reason, detail), row, was_changed = res[3], res[4], res[5]
                        changed += was_changed
                        remove(step, where, row, reason, detail)
                        continue
                    row, was_changed, digest, keys, hit = res[3:]
                    changed += was_changed
                    if exact is not None:
                        first = seen.get(digest)
                        if first is not None:
                            remove(exact.name, where, row, "exact duplicate", f"of {_where(files, first)}")
                            continue
                        seen[digest] = files.setdefault(path, len(files)) << 40 | n
                    if near is not None:
                        grams = char_ngrams(Record(path, n, row, args.format).text(near.key), near.ngram)
                        candidates = index.candidates(keys)
                        best, best_sim = None, 0.0
                        for j in candidates:
                            sim = jaccard(grams, spool.grams(j))
                            if sim >= near.threshold and sim > best_sim:
                                best, best_sim = j, sim
                        if best is not None:
                            remove(near.name, where, row, "near duplicate",
                                   f"of {spool.get(best).where} (Jaccard {best_sim:.2f})")
                            continue
                        index.add(spool.add(path, n, row), keys)
                    if hit is not None:
                        remove(leak.name, where, row, *hit)
                        continue
                    kept_file.write(json.dumps(row, ensure_ascii=False) + "\n")
        for f in step_files.values():
            f.close()
        with removed_path.open("wb") as dst:  # step after step, as run_steps reports them
            for i, _ in enumerate(names):
                with (tmp / f"removed-{i}.jsonl").open("rb") as src:
                    shutil.copyfileobj(src, dst)
    finally:
        if pool is not None:
            pool.terminate()
        for f in step_files.values():
            f.close()
        if spool is not None:
            spool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    reports, rows_in = [], read - bad
    for name in names:
        removed = sum(reasons[name].values())
        rep = StepReport(name, rows_in, removed, rows_in - removed, dict(reasons[name].most_common()), examples[name])
        if name == "normalize":
            rep.reasons = {"(rows changed, kept)": changed, **rep.reasons}
        reports.append(rep)
        rows_in -= removed
    return read, bad, reports


def main(argv: Sequence[str] | None = None) -> dict:
    from zhilu.utils.io import check_output_file, write_json_atomic

    args = parse_args(argv)
    check_args(args)
    out = check_output_file(args.out, "--out")
    for extra in (".removed.jsonl", ".report.json"):
        check_output_file(out.with_name(out.name + extra), "--out")
    steps = default_steps(args)
    removed_path = out.with_name(out.name + ".removed.jsonl")
    read, bad, reports = stream_clean(args, steps, out, removed_path)
    kept = reports[-1].rows_out if reports else read - bad
    report = {
        "inputs": list(args.inputs), "format": args.format, "rows_read": read,
        "malformed_skipped": bad, "rows_kept": kept, "output": str(out),
        "removed_rows": str(removed_path), "steps": [vars(r) for r in reports],
    }
    write_json_atomic(out.with_name(out.name + ".report.json"), report)
    print(f"read {read} rows ({bad} malformed, skipped) from {len(args.inputs)} file(s)")
    print(format_table(reports))
    print(f"kept {kept} rows -> {out}; removed rows with reasons -> {removed_path}")
    return report


if __name__ == "__main__":
    from zhilu.cli import one_line_errors

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    one_line_errors(main)()
