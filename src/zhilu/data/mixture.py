"""Data mixtures: several sources with target proportions, sampled to a total size with a seed.

A mixture is how the ZhiLu-2 recipe states its instruction data ("a cleaned mixture with a stated
distribution"); per-source sampling weights as in the data-mixing literature (e.g. Xie et al. 2023,
DoReMi, https://arxiv.org/abs/2305.10429, which learns them; here they are given).

Sampling: target row counts are ``total * weight`` rounded by the largest-remainder method (they add
up to ``total`` exactly). A source with fewer rows than its target is repeated whole and the rest
drawn without replacement (``upsample: true``), or used once and reported short (``upsample:
false``). ``total: null`` means the largest mixture that repeats no row. Missing files of an
``optional`` source drop the source (with a warning) and the other weights are renormalised.

A source may hold any format its kind accepts (``zhilu.data.kinds``), for the ``sft`` kind also
pre-training text (``format: text``, rows ``{"text": ...}``: e.g. the knowledge-injection text of
``python -m zhilu.synth self_evolve``): it is trained on with a label on every token (cut into
``max_length`` windows), next to the SFT rows, with the same objective.

Each source file is read through its tokenized store (``zhilu.data.store``): the mixture samples
row indices into the stores, and a sampled row stands for the examples it encoded to (none when
dropped as overlong, several for long text), so repeated rows are repeated indices, not copies.

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

import numpy as np

from zhilu.data.datamodule import ChatDataModule, StoreView
from zhilu.data.encode import encode_text  # noqa: F401 - re-exported: text windows live in encode.py
from zhilu.data.formats import iter_rows
from zhilu.data.store import BAD_ROW, TRUNCATED, Input
from zhilu.errors import ConfigError, DataError

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

    def inputs(self) -> list[Input]:
        out = []
        for f in self.files:
            if isinstance(f, (str, Path)):
                out.append(Input(str(f), self.format))
            elif hasattr(f, "get") and f.get("path"):
                out.append(Input(str(f["path"]), f.get("format", self.format), f.get("split") or "train"))
            else:
                raise ConfigError(f"data.sources.{self.name}: file entry {f!r}: expected a path or {{path, format}}")
        return out

    def paths(self) -> list[tuple[str, str]]:
        return [(i.path, i.format) for i in self.inputs()]


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


def read_text_rows(path: str | Path, on_error: str = "raise", stats: dict | None = None) -> list[str]:
    """Pre-training rows ``{"text": str}`` of a JSONL file (bad rows: ``file:line`` errors)."""
    return [row.text for row in iter_rows(path, "text", on_error, stats)]


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
            for inp in s.inputs():
                if inp.format not in self.data_kind.formats:
                    raise ConfigError(f"data.sources.{s.name}: format {inp.format!r} does not fit "
                                      f"data.kind={self.kind} (use {', '.join(self.data_kind.formats)})")
            absent = [i.path for i in s.inputs() if i.type != "hub" and not Path(i.path).exists()]
            if absent and s.optional:
                log.warning("mixture: optional source %s skipped (missing %s)", s.name, ", ".join(absent))
                missing.append(s.name)
            elif absent:
                raise DataError(f"data.sources.{s.name}: {absent[0]}: data file not found (or mark it optional)")
            else:
                present.append(s)
        return present, missing

    def _inputs(self) -> list[Input]:
        sources, _ = self._present_sources()
        return [i for s in sources for i in s.inputs()] + self._sources(self.val_files)

    def read(self, files, split: str) -> StoreView:
        if split != "train":
            return super().read(files, split)
        sources, missing = self._present_sources()
        stores, labels = [], []
        row_start, row_end, n_rows = [], [], {}
        for s in sources:
            before = sum(len(r) for r in row_start)
            for inp in s.inputs():
                st = self.store(inp)
                offset = sum(len(x) for x in stores)
                starts, ends = st.rows()
                valid = st.status[starts] != BAD_ROW  # bad rows are not rows of the source (skipped or raised)
                row_start.append(starts[valid] + offset)
                row_end.append(ends[valid] + offset)
                stores.append(st)
                labels.append(s.name)
            n_rows[s.name] = sum(len(r) for r in row_start) - before
        self.stats["train/skipped_rows"] = self._problems(stores, split)
        first_row, pos = {}, 0
        for s in sources:
            first_row[s.name], pos = pos, pos + n_rows[s.name]
        mixed, report = sample_mixture(sources, {k: range(n) for k, n in n_rows.items()}, self.total, self.seed,
                                       self.upsample)
        report.missing = missing
        starts_all = np.concatenate(row_start) if row_start else np.zeros(0, np.int64)
        ends_all = np.concatenate(row_end) if row_end else np.zeros(0, np.int64)
        picked = np.fromiter((first_row[name] + i for name, i in mixed), dtype=np.int64, count=len(mixed))
        starts, ends = starts_all[picked], ends_all[picked]
        counts = ends - starts
        refs = np.repeat(starts - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(int(counts.sum()))
        status = np.concatenate([st.status for st in stores])[refs]
        offsets = np.cumsum([0] + [len(st) for st in stores])
        which = np.searchsorted(offsets, refs, side="right") - 1
        self.add_encoder_stats(split, [st.encoder_stats(refs[which == i] - offsets[i]) for i, st in enumerate(stores)])
        view = StoreView(stores, refs[status <= TRUNCATED], labels)
        index = {s.name: i for i, s in enumerate(sources)}
        source_of = np.asarray([index[lab] for lab in labels], dtype=np.int64)
        src = source_of[view.store_of(view.refs)] if len(view) else np.zeros(0, np.int64)
        examples = np.bincount(src, minlength=len(sources))
        tokens = np.bincount(src, weights=view.lengths, minlength=len(sources))
        by_name = {s.name: s for s in report.sources}
        for i, s in enumerate(sources):
            if s.name in by_name:
                by_name[s.name].examples = int(examples[i])
                by_name[s.name].tokens = int(tokens[i])
        n_tokens = sum(s.tokens for s in report.sources) or 1
        for s in report.sources:
            s.token_share = s.tokens / n_tokens
            self.stats[f"mixture/{s.name}/rows"] = s.sampled
            self.stats[f"mixture/{s.name}/tokens"] = s.tokens
        self.report = report
        log.info("data mixture (seed %d):\n%s", self.seed, report.table())
        if self.report_dir:
            paths = report.save(self.report_dir)
            log.info("mixture report: %s", ", ".join(str(p) for p in paths.values()))
        return view
