"""Data mixtures: several sources with target proportions, sampled to a total size with a seed.

A mixture is how the ZhiLu-2 recipe states its instruction data ("a cleaned mixture with a stated
distribution"); per-source sampling weights as in the data-mixing literature (e.g. Xie et al. 2023,
DoReMi, https://arxiv.org/abs/2305.10429, which learns them; here they are given).

Sampling: target row counts are ``total * weight`` rounded by the largest-remainder method (they add
up to ``total`` exactly). A source with fewer rows than its target is repeated whole and the rest
drawn without replacement (``upsample: true``), or used once and reported short (``upsample:
false``). ``total: null`` means the largest mixture that repeats no row. Missing files of an
``optional`` source drop the source (with a warning) and the other weights are renormalised.

Besides the chat/alpaca/sharegpt/preference formats of ``zhilu.data.formats``, a source may hold
pre-training text (``format: text``, rows ``{"text": ...}``: e.g. the knowledge-injection text of
``python -m zhilu.synth self_evolve``): it is trained on with a label on every token (cut into
``max_length`` windows), next to the SFT rows, with the same objective.

The realised distribution (rows and tokens per source) is logged, put into ``stats`` (and so into
``metrics.json``), and written to ``report_dir`` as ``mixture.json``, ``mixture.md`` and ``mixture.png``.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from zhilu.data.datamodule import KINDS, ChatDataModule
from zhilu.data.encode import IGNORE_INDEX, ChatEncoder, Example
from zhilu.data.formats import iter_rows
from zhilu.errors import ConfigError, DataError
from zhilu.model.chat_template import EOS
from zhilu.utils.jsonl import iter_jsonl

log = logging.getLogger(__name__)


@dataclass
class MixtureSource:
    """One source of a mixture: files (paths or ``{path, format}``) of one format, and a weight."""

    name: str
    files: list[Any]
    weight: float
    format: str = "chat"
    optional: bool = False

    @classmethod
    def from_config(cls, name: str, spec: Mapping[str, Any]) -> "MixtureSource":
        unknown = set(spec) - {"files", "weight", "format", "optional"}
        if unknown:
            raise ConfigError(f"data.sources.{name}: unknown keys {sorted(unknown)} (files, weight, format, optional)")
        files = spec.get("files")
        if isinstance(files, (str, Path)):
            files = [files]
        if not files:
            raise ConfigError(f"data.sources.{name}.files is empty")
        weight = spec.get("weight")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0 or not math.isfinite(weight):
            raise ConfigError(f"data.sources.{name}.weight={weight!r}: expected a number >= 0")
        return cls(name, list(files), float(weight), spec.get("format", "chat"), bool(spec.get("optional", False)))

    def paths(self) -> list[tuple[str, str]]:
        out = []
        for f in self.files:
            if isinstance(f, (str, Path)):
                out.append((str(f), self.format))
            elif hasattr(f, "get") and f.get("path"):
                out.append((str(f["path"]), f.get("format", self.format)))
            else:
                raise ConfigError(f"data.sources.{self.name}: file entry {f!r}: expected a path or {{path, format}}")
        return out


def largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integer counts proportional to ``weights`` that add up to ``total`` (Hamilton's method)."""
    s = sum(weights)
    if s <= 0:
        raise ConfigError("mixture weights add up to 0")
    exact = [w / s * total for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(n_available: int, target: int, rng: random.Random, upsample: bool = True) -> list[int]:
    """Row indices for one source: whole copies for ``target // n``, then a sample without replacement."""
    if n_available == 0 or target == 0:
        return []
    if target <= n_available:
        return rng.sample(range(n_available), target)
    if not upsample:
        return list(range(n_available))
    copies, rest = divmod(target, n_available)
    return list(range(n_available)) * copies + rng.sample(range(n_available), rest)


@dataclass
class SourceReport:
    name: str
    weight: float
    available: int
    target: int
    sampled: int
    unique: int
    target_share: float = 0.0
    share: float = 0.0
    examples: int = 0
    tokens: int = 0
    token_share: float = 0.0
    files: list[str] = field(default_factory=list)


@dataclass
class MixtureReport:
    total_target: int
    total_sampled: int
    seed: int
    sources: list[SourceReport]
    missing: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = (f"{'source':<18}{'weight':>7}{'target%':>8}{'avail':>7}{'target':>7}{'rows':>7}{'unique':>7}"
                f"{'rows%':>7}{'examples':>9}{'tokens':>10}{'tok%':>7}")
        lines = [head, "-" * len(head)]
        for s in self.sources:
            lines.append(f"{s.name:<18}{s.weight:>7.3f}{s.target_share:>8.1%}{s.available:>7}{s.target:>7}"
                         f"{s.sampled:>7}{s.unique:>7}{s.share:>7.1%}{s.examples:>9}{s.tokens:>10}"
                         f"{s.token_share:>7.1%}")
        lines.append(f"{'total':<18}{'':>7}{'':>8}{sum(s.available for s in self.sources):>7}{self.total_target:>7}"
                     f"{self.total_sampled:>7}{'':>7}{'':>7}{sum(s.examples for s in self.sources):>9}"
                     f"{sum(s.tokens for s in self.sources):>10}")
        if self.missing:
            lines.append(f"(optional sources skipped, files missing: {', '.join(self.missing)})")
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| source | weight | target share | available | target rows | sampled | unique | row share | "
                 "examples | tokens | token share |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in self.sources:
            lines.append(f"| {s.name} | {s.weight:.3f} | {s.target_share:.3f} | {s.available} | {s.target} | "
                         f"{s.sampled} | {s.unique} | {s.share:.3f} | {s.examples} | {s.tokens} | "
                         f"{s.token_share:.3f} |")
        if self.missing:
            lines.append(f"\nSkipped optional sources (files missing): {', '.join(self.missing)}")
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        from zhilu.utils.io import write_json_atomic

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "mixture.json", "md": out / "mixture.md", "png": out / "mixture.png"}
        write_json_atomic(paths["json"], asdict(self))
        paths["md"].write_text(self.markdown(), encoding="utf-8")
        plot_mixture(self, paths["png"])
        return paths


def plot_mixture(report: MixtureReport, path: str | Path) -> None:
    """A pie of the realised row shares and bars of target vs realised shares (rows and tokens)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [s.name for s in report.sources]
    fig, (ax_pie, ax_bar) = plt.subplots(1, 2, figsize=(11, 4.5))
    sampled = [s.sampled for s in report.sources]
    if sum(sampled):
        ax_pie.pie(sampled, labels=names, autopct="%1.1f%%", startangle=90, counterclock=False)
    ax_pie.set_title(f"realised rows (n={report.total_sampled}, seed={report.seed})")
    x = range(len(names))
    width = 0.27
    ax_bar.bar([i - width for i in x], [s.target_share for s in report.sources], width, label="target")
    ax_bar.bar(list(x), [s.share for s in report.sources], width, label="rows")
    ax_bar.bar([i + width for i in x], [s.token_share for s in report.sources], width, label="tokens")
    ax_bar.set_xticks(list(x), names, rotation=20, ha="right")
    ax_bar.set_ylabel("share")
    ax_bar.set_title("target vs realised share")
    ax_bar.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_source(source: MixtureSource, kind: str, on_error: str = "raise", stats: dict | None = None) -> list[Any]:
    """All rows of a source: message lists (sft), ``PreferencePair`` (preference) or ``{"text"}`` dicts;
    rows skipped with ``on_error=skip`` are counted in ``stats["skipped"]``."""
    stats = stats if stats is not None else {}
    stats.setdefault("skipped", 0)
    rows: list[Any] = []
    for path, fmt in source.paths():
        if fmt == "text":
            if kind != "sft":
                raise ConfigError(f"data.sources.{source.name}: format text only mixes into kind=sft data")
            rows += [{"text": t} for t in read_text_rows(path, on_error, stats)]
            continue
        if fmt not in KINDS[kind]:
            raise ConfigError(f"data.sources.{source.name}: format {fmt!r} does not fit data.kind={kind}")
        rows += list(iter_rows(path, fmt, on_error, stats))
    return rows


def read_text_rows(path: str | Path, on_error: str = "raise", stats: dict | None = None) -> list[str]:
    """Pre-training rows ``{"text": str}`` of a JSONL file (bad rows: ``file:line`` errors)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: data file not found")
    out = []
    for lineno, row, err in iter_jsonl(p):
        if err is None and not (isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip()):
            err = "expected an object with a non-empty 'text' string (format=text)"
        if err is None:
            out.append(row["text"])
        elif on_error == "raise":
            raise DataError(f"{p}:{lineno}: {err}")
        else:
            log.warning("skipped %s:%d: %s", p, lineno, err)
            if stats is not None:
                stats["skipped"] = stats.get("skipped", 0) + 1
    return out


def sample_mixture(sources: Sequence[MixtureSource], rows: Mapping[str, list], total: int | None, seed: int,
                   upsample: bool = True) -> tuple[list[tuple[str, Any]], MixtureReport]:
    """Sample ``total`` rows from ``rows[source.name]`` with the sources' weights; returns the shuffled
    ``(source name, row)`` list and the report (row counts; token counts are filled in later)."""
    active = [s for s in sources if s.weight > 0]
    if not active:
        raise ConfigError("data.sources: every weight is 0")
    for s in active:
        if not rows[s.name]:
            raise DataError(f"data.sources.{s.name}: no rows in {', '.join(p for p, _ in s.paths())}")
    wsum = sum(s.weight for s in active)
    if total is None:  # the largest mixture that repeats no row
        total = int(min(len(rows[s.name]) * wsum / s.weight for s in active))
    if total <= 0:
        raise ConfigError(f"data.total={total}: expected a positive number of rows (or null)")
    targets = largest_remainder([s.weight for s in active], total)
    mixed: list[tuple[str, Any]] = []
    reports = []
    for s, target in zip(active, targets):
        rng = random.Random(f"{seed}:{s.name}")
        idx = draw(len(rows[s.name]), target, rng, upsample)
        mixed += [(s.name, rows[s.name][i]) for i in idx]
        reports.append(SourceReport(s.name, s.weight, len(rows[s.name]), target, len(idx), len(set(idx)),
                                    s.weight / wsum, files=[p for p, _ in s.paths()]))
    random.Random(f"{seed}:shuffle").shuffle(mixed)
    for r in reports:
        r.share = r.sampled / len(mixed) if mixed else 0.0
    return mixed, MixtureReport(total, len(mixed), seed, reports)


def encode_text(encoder: ChatEncoder, text: str) -> list[Example]:
    """Pre-training text: ``<|begin_of_text|> text <|end_of_text|>`` in ``max_length`` windows, every
    token labelled except BOS (the loss is next-token prediction on all of it)."""
    eos = encoder.tok.convert_tokens_to_ids(EOS)
    ids = [*encoder.text(text.strip()), eos]
    step = encoder.max_length - 1
    out = []
    for start in range(0, len(ids), step):
        chunk = [encoder.bos, *ids[start: start + step]]
        out.append(Example([chunk], [[IGNORE_INDEX, *chunk[1:]]]))
    return out


class MixtureDataModule(ChatDataModule):
    """A ``ChatDataModule`` whose training rows are a weighted mixture of ``sources``.

    Args:
        sources: ``{name: {files, weight, format?, optional?}}``; weights need not sum to 1.
        total: rows in the mixture (``null``: the largest mixture that repeats no row).
        upsample: repeat a source that has fewer rows than its target (else use it once).
        report_dir: where ``mixture.{json,md,png}`` go (the run dir in ``conf/data/finance_mixture.yaml``).
        Other arguments: as ``ChatDataModule`` (``val_files`` may be empty with ``val_fraction``).
    """

    def __init__(self, sources: Mapping[str, Mapping[str, Any]], total: int | None = None, upsample: bool = True,
                 report_dir: str | None = None, **kwargs: Any) -> None:
        if not sources:
            raise ConfigError("data.sources is empty: give at least one {name: {files, weight}}")
        self.sources = [MixtureSource.from_config(name, spec) for name, spec in sources.items()]
        files = [p for s in self.sources for p, _ in s.paths()]
        kwargs.pop("train_files", None)
        super().__init__(train_files=files, **kwargs)
        if total is not None and total <= 0:
            raise ConfigError(f"data.total={total}: expected a positive number of rows (or null)")
        self.total = total
        self.upsample = upsample
        self.report_dir = report_dir
        self.report: MixtureReport | None = None

    def _present_sources(self) -> tuple[list[MixtureSource], list[str]]:
        present, missing = [], []
        for s in self.sources:
            absent = [p for p, _ in s.paths() if not Path(p).is_file()]
            if absent and s.optional:
                log.warning("mixture: optional source %s skipped (missing %s)", s.name, ", ".join(absent))
                missing.append(s.name)
            elif absent:
                raise DataError(f"data.sources.{s.name}: {absent[0]}: data file not found (or mark it optional)")
            else:
                present.append(s)
        return present, missing

    def _encode(self, row: Any, encoder: ChatEncoder, where: str) -> list[Example]:
        if isinstance(row, dict) and "text" in row:
            return encode_text(encoder, row["text"])
        ex = encoder.sft(row, what=where) if self.kind == "sft" else \
            encoder.pair(row.prompt, row.chosen, row.rejected, what=where)
        return [ex] if ex is not None else []

    def read(self, files, encoder: ChatEncoder, split: str) -> list[Example]:
        if split != "train":
            return super().read(files, encoder, split)
        sources, missing = self._present_sources()
        skipped = {"skipped": 0}
        rows = {s.name: read_source(s, self.kind, self.on_error, skipped) for s in sources}
        mixed, report = sample_mixture(sources, rows, self.total, self.seed, self.upsample)
        report.missing = missing
        examples: list[Example] = []
        by_name = {s.name: s for s in report.sources}
        for i, (name, row) in enumerate(mixed):
            for ex in self._encode(row, encoder, f"mixture row {i} (source {name})"):
                ex.meta["source"] = name
                examples.append(ex)
                by_name[name].examples += 1
                by_name[name].tokens += ex.total_length
        n_tokens = sum(s.tokens for s in report.sources) or 1
        for s in report.sources:
            s.token_share = s.tokens / n_tokens
            self.stats[f"mixture/{s.name}/rows"] = s.sampled
            self.stats[f"mixture/{s.name}/tokens"] = s.tokens
        self.stats["train/skipped_rows"] = skipped["skipped"]
        self.report = report
        log.info("data mixture (seed %d):\n%s", self.seed, report.table())
        if self.report_dir:
            paths = report.save(self.report_dir)
            log.info("mixture report: %s", ", ".join(str(p) for p in paths.values()))
        return examples
