"""Paper-style result tables and plots from a sweep: ``python -m zhilu.report DIR... [--out DIR]``.

Collects the run dirs under each ``DIR`` (a multirun dir, a folder of them, or single run dirs:
every folder holding ``.hydra/overrides.yaml``, or a ``metrics.json`` given directly), groups them
by method (``--by adapter``: methods as rows, as in the ZhiLu-2 model card's comparison of Full FT,
LoRA, BAdam, LoRA+ and DoRA) and writes, into ``--out`` (default ``<DIR>/report``):

- ``table.md`` / ``table.csv`` / ``table.tex``: mean ± sample std (ddof=1) over the finished runs
  (seeds) of each method: training time, tokens/s, peak memory, trainable parameters, generation
  speed with the adapter live and merged (and their ratio), final train/val loss, and benchmark
  scores when some run has them (``val_<benchmark>_avg[_final]``; left out when no run has them);
- ``loss_curves.png`` (train and val loss against step, one colour per method) and
  ``time_memory.png`` (bars with std error bars).

The alignment study (``experiment=alignment_ablation``, ``--by objective``: DPO, IPO, hinge,
SimPO, ORPO, KTO as rows) adds its columns when the runs have them: held-out reward accuracy and
margin, KL to the start model, SFT validation loss and the safety rates; and two plots,
``safety_tradeoff.png`` (harmful compliance against over-refusal) and ``margin_curves.png``
(held-out reward margin, accuracy and KL against step).

A run whose ``metrics.json`` says ``failed`` (or that has none) is counted and listed as failed,
never silently dropped; a method whose runs all failed shows ``failed`` in its row.
``--wandb ENTITY/PROJECT`` reads the runs' summaries and histories from W&B instead (online).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from zhilu.errors import ConfigError

FINISHED = "finished"
BENCHMARK_NAMES = {"ceval": "C-Eval", "cmmlu": "CMMLU", "fineval": "FinEval", "mmlu": "MMLU"}
SCORE_KEY = re.compile(r"^val_([a-z0-9]+)_avg(?:_final)?$")


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One training run: where it lives, its method, seed, status and recorded figures."""

    path: str
    method: str
    seed: Any = None
    status: str = FINISHED
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    #: metric name -> [(step, value)], e.g. ``train/loss``, ``val/loss``
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run dirs under ``paths`` in job order (a run dir is not searched further)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ConfigError(f"report: {p}: no such directory")
        if _is_run_dir(p):
            found.append(p)
            continue
        dirs = {h.parent.parent for h in p.rglob(".hydra/overrides.yaml")}
        dirs = [d for d in dirs if not any(a in dirs for a in d.parents)]  # no runs nested in runs
        found.extend(sorted(dirs, key=_natural_key))
    return list(dict.fromkeys(found))


def _is_run_dir(p: Path) -> bool:
    return (p / ".hydra" / "overrides.yaml").is_file() or (p / "metrics.json").is_file()


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def load_run(path: str | Path, by: str = "adapter") -> Run:
    """Read one run dir: ``metrics.json``, ``.hydra/{overrides,config,hydra}.yaml``, ``csv/metrics.csv``."""
    path = Path(path)
    overrides = _overrides(path)
    metrics: dict[str, Any] = {}
    status, error = FINISHED, None
    mfile = path / "metrics.json"
    if not mfile.is_file():
        status, error = "failed", "no metrics.json (the job died before its first record)"
    else:
        try:
            metrics = json.loads(mfile.read_text(encoding="utf-8"))
            status, error = str(metrics.get("status", FINISHED)), metrics.get("error")
        except ValueError as exc:
            status, error = "failed", f"unreadable metrics.json: {exc}"
    if status == "running":
        error = error or "no final record (killed, or still running)"
    method = _lookup(by, metrics, overrides, path)
    seed = _lookup("seed", metrics, overrides, path)
    seed = int(seed) if isinstance(seed, str) and seed.lstrip("-").isdigit() else seed
    return Run(path=str(path), method=str(method) if method is not None else path.name, seed=seed,
               status=status, error=error, metrics=metrics, curves=read_curves(path / "csv" / "metrics.csv"))


def _overrides(path: Path) -> dict[str, str]:
    f = path / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return {}
    import yaml

    out = {}
    for item in yaml.safe_load(f.read_text(encoding="utf-8")) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _lookup(key: str, metrics: dict, overrides: dict[str, str], path: Path) -> Any:
    """``key`` from metrics.json, the command-line overrides, Hydra's group choices, then the config."""
    if metrics.get(key) is not None and not isinstance(metrics[key], dict):
        return metrics[key]
    if key in overrides:
        return overrides[key]
    from omegaconf import OmegaConf

    hydra_yaml = path / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        choice = OmegaConf.select(OmegaConf.load(hydra_yaml), f"hydra.runtime.choices.{key}")
        if choice is not None:
            return choice
    for name in (".hydra/config.yaml", "config_resolved.yaml"):
        f = path / name
        if f.is_file():
            value = OmegaConf.select(OmegaConf.load(f), key, throw_on_missing=False)
            if value is not None and not OmegaConf.is_config(value):
                return value
    return None


def read_curves(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """:data:`CURVE_KEYS` (``train/loss``, ``val/loss``, ...) against ``step`` from Lightning's CSVLogger file."""
    curves: dict[str, list[tuple[int, float]]] = {}
    if not csv_path.is_file():
        return curves
    with csv_path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            for key in CURVE_KEYS:
                value, step = row.get(key), row.get("step")
                if value not in (None, "") and step not in (None, ""):
                    curves.setdefault(key, []).append((int(float(step)), float(value)))
    return curves


def runs_from_wandb(path: str, group: str | None = None, by: str = "adapter", api=None) -> list[Run]:
    """Runs of a W&B project (``ENTITY/PROJECT``) from their summaries and histories (needs network)."""
    if api is None:
        import wandb

        api = wandb.Api()
    states = {"finished": FINISHED, "crashed": "failed", "failed": "failed", "killed": "interrupted"}
    runs = []
    for r in api.runs(path, filters={"group": group} if group else {}):
        summary = {k: v for k, v in dict(r.summary).items() if not k.startswith("_")}
        config = dict(r.config)
        method = summary.get(by, config.get(by))
        status = summary.get("status") or states.get(r.state, r.state)
        if status == "running" and r.state != "running":
            status = states.get(r.state, r.state)
        curves = {}
        for key in CURVE_KEYS:
            rows = r.scan_history(keys=["trainer/global_step", key])
            curves[key] = [(int(row["trainer/global_step"]), float(row[key])) for row in rows]
        runs.append(Run(path=f"wandb:{path}/{r.id}", method=str(method if not isinstance(method, dict) else r.name),
                        seed=config.get("seed"), status=status, error=summary.get("error"),
                        metrics=summary, curves={k: v for k, v in curves.items() if v}))
    return runs


# ------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class Column:
    """A table column: the first of ``keys`` present in a run's metrics, formatted with ``fmt``."""

    name: str  # CSV name
    header: str  # Markdown / LaTeX header
    keys: tuple[str, ...]
    fmt: str = "{:.2f}"
    value: Callable[[dict], float | None] | None = None  # derived columns

    def get(self, metrics: dict) -> float | None:
        if self.value is not None:
            return self.value(metrics)
        for k in self.keys:
            v = metrics.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
        return None


def _pct(m: dict, key: str) -> float | None:
    """A 0-1 share recorded as ``<key>_final`` (preferred) or ``<key>``, in percent."""
    for k in (f"{key}_final", key):
        v = m.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return 100.0 * v
    return None


def _trainable_pct(m: dict) -> float | None:
    t, n = m.get("trainable_params"), m.get("total_params")
    return 100.0 * t / n if isinstance(t, (int, float)) and n else None


COLUMNS: tuple[Column, ...] = (
    Column("trainable_params", "Trainable params", ("trainable_params",), "{:,.0f}"),
    Column("trainable_pct", "Trainable %", (), "{:.2f}", value=_trainable_pct),
    Column("train_time_s", "Train time (s)", ("train_time_s",), "{:.1f}"),
    Column("wall_time_s", "Wall time (s)", ("wall_time_s",), "{:.1f}"),
    Column("tokens_per_s", "Train tokens/s", ("tokens_per_s",), "{:.0f}"),
    # CPU time of the training steps: barely changed by other processes competing for the CPU
    Column("train_cpu_time_s", "Train CPU time (s)", ("train_cpu_time_s",), "{:.1f}"),
    Column("peak_memory_mb", "Peak memory (MB)", ("train_peak_memory_mb", "peak_memory_mb"), "{:.0f}"),
    # weights + gradient buffers + optimizer state, counted from the tensors (no allocator noise)
    Column("train_state_mb", "Weights+grads+optimizer (MB)", ("train_state_mb",), "{:.1f}"),
    # the peak above the fit-start level: gradients, optimizer state, activations
    Column("memory_over_start_mb", "Memory over model (MB)", ("train_memory_over_start_mb",), "{:.0f}"),
    Column("gen_tokens_per_s_unmerged", "Gen tokens/s (unmerged)", ("gen_tokens_per_s_unmerged",), "{:.1f}"),
    Column("gen_tokens_per_s_merged", "Gen tokens/s (merged)", ("gen_tokens_per_s_merged",), "{:.1f}"),
    # merged / unmerged, timed back to back in one run: robust to a machine's load changing between runs
    Column("gen_speedup_merged", "Merge speedup (x)", ("gen_speedup_merged",), "{:.2f}"),
    Column("train_loss", "Train loss", ("train_loss",), "{:.3f}"),
    Column("val_loss", "Val loss", ("val_loss_final", "val_loss"), "{:.3f}"),
    # the alignment study (callbacks=alignment): the same held-out yardstick for every objective
    Column("heldout_reward_accuracy", "Held-out reward acc. (%)", (), "{:.1f}",
           value=lambda m: _pct(m, "val_heldout_reward_accuracy")),
    Column("heldout_margin", "Held-out margin (nats)", ("val_heldout_margin_final", "val_heldout_margin"), "{:.2f}"),
    Column("heldout_kl", "KL to start (nats/token)", ("val_heldout_kl_final", "val_heldout_kl"), "{:.4f}"),
    Column("sft_val_loss", "SFT val loss", ("val_sft_val_loss_final", "val_sft_val_loss"), "{:.3f}"),
    *(Column(k, h, (f"val_safety_{k}_final", f"val_safety_{k}"), "{:.1f}") for k, h in (
        ("harmful_compliance", "Harmful compliance (%)"), ("harmful_refusal", "Harmful refusal (%)"),
        ("over_refusal", "Over-refusal (%)"), ("benign_unsafe", "Benign unsafe (%)"),
        ("risk_disclosure", "Risk disclosure (%)"))),
)

#: what ``--by`` groups on -> the table's first header
BY_LABELS = {"adapter": "Method", "objective": "Objective"}
#: validation curves read from the CSV log besides the losses (the alignment study's margin curves)
CURVE_KEYS = ("train/loss", "val/loss", "val/heldout_margin", "val/heldout_reward_accuracy", "val/heldout_kl")


def score_columns(runs: Sequence[Run]) -> list[Column]:
    """One column per benchmark with a ``val_<name>_avg`` score in some run (final value preferred)."""
    names = sorted({m.group(1) for r in runs for k in r.metrics if (m := SCORE_KEY.match(k))})
    return [Column(f"{n}_avg", f"{BENCHMARK_NAMES.get(n, n.upper())} (%)", (f"val_{n}_avg_final", f"val_{n}_avg"),
                   "{:.1f}") for n in names]


# --------------------------------------------------------------------------- table
@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int

    def text(self, fmt: str, pm: str = " ± ") -> str:
        if self.mean is None:
            return "—"
        s = fmt.format(self.mean)
        return s if self.std is None else s + pm + fmt.format(self.std)


@dataclass
class Row:
    method: str
    runs: list[Run]
    cells: dict[str, Cell]

    @property
    def n_finished(self) -> int:
        return sum(r.finished for r in self.runs)

    @property
    def status(self) -> str:
        n, ok = len(self.runs), self.n_finished
        if ok == n:
            return "ok"
        bad = sorted({r.status for r in self.runs if not r.finished})
        return ", ".join(bad) if ok == 0 else f"{n - ok} of {n} {'/'.join(bad)}"


def mean_std(values: Sequence[float]) -> Cell:
    """Mean and sample standard deviation (ddof=1; ``None`` for a single value)."""
    if not values:
        return Cell(None, None, 0)
    mean = statistics.fmean(values)
    return Cell(mean, statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass
class Table:
    rows: list[Row]
    columns: list[Column]
    label: str = "Method"  # the first column's header (what makes a row)

    @property
    def failed_runs(self) -> list[Run]:
        return [r for row in self.rows for r in row.runs if not r.finished]


def build_table(runs: Sequence[Run], label: str = "Method", order: Sequence[str] = ()) -> Table:
    """Rows per method in order of first appearance (methods named in ``order`` first, in that order);
    columns that no finished run has are left out."""
    groups: dict[str, list[Run]] = {m: [] for m in order if any(r.method == m for r in runs)}
    for r in runs:
        groups.setdefault(r.method, []).append(r)
    candidates = list(COLUMNS) + score_columns(runs)
    rows = []
    for method, members in groups.items():
        done = [r for r in members if r.finished]
        cells = {c.name: mean_std([v for r in done if (v := c.get(r.metrics)) is not None]) for c in candidates}
        rows.append(Row(method, members, cells))
    columns = [c for c in candidates if any(row.cells[c.name].mean is not None for row in rows)]
    return Table(rows, columns, label)


def seeds_text(row: Row) -> str:
    return ",".join(str(r.seed) for r in row.runs if r.seed is not None)


def to_markdown(table: Table, title: str | None = None) -> str:
    head = [table.label, "Runs", "Status", *(c.header for c in table.columns)]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(table.columns)) + "|"]
    for row in table.rows:
        cells = [row.cells[c.name].text(c.fmt) for c in table.columns]
        lines.append("| " + " | ".join([row.method, str(len(row.runs)), row.status, *cells]) + " |")
    lines += ["", "Mean ± sample std (ddof=1) over the finished runs (seeds) of each method; "
                  "peak memory is CUDA max allocated on a GPU, peak RSS on a CPU."]
    if table.failed_runs:
        lines += ["", "Failed runs:", ""]
        lines += [f"- `{r.path}` ({r.method}, seed {r.seed}): {r.status}: {_first_line(r.error)}"
                  for r in table.failed_runs]
    return "\n".join(lines) + "\n"


def _first_line(text: str | None) -> str:
    return (str(text).strip().splitlines() or ["(no error recorded)"])[0] if text else "(no error recorded)"


def write_csv(table: Table, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow([table.label.lower().replace(" ", "_"), "status", "runs", "finished", "seeds",
                    *(f"{c.name}_{s}" for c in table.columns for s in ("mean", "std"))])
        for row in table.rows:
            vals = []
            for c in table.columns:
                cell = row.cells[c.name]
                vals += ["" if cell.mean is None else repr(cell.mean), "" if cell.std is None else repr(cell.std)]
            w.writerow([row.method, row.status, len(row.runs), row.n_finished, seeds_text(row), *vals])


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in s)


def to_latex(table: Table, caption: str = "Method comparison") -> str:
    """A ``booktabs`` table (``\\usepackage{booktabs}``)."""
    cols = table.columns
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", r"\toprule",
             " & ".join([tex_escape(table.label), "Runs", *(tex_escape(c.header) for c in cols)]) + r" \\",
             r"\midrule"]
    for row in table.rows:
        cells = [tex_escape(row.cells[c.name].text(c.fmt, pm="\x00")).replace("\x00", r" $\pm$ ")
                 .replace("—", "--") for c in cols]
        name = tex_escape(row.method) + ("" if row.status == "ok" else f" ({tex_escape(row.status)})")
        lines.append(" & ".join([name, str(len(row.runs)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{tex_escape(caption)}: mean $\pm$ sample std over seeds.}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots
def plot_loss_curves(table: Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(table.rows):
        color = colors[i % len(colors)]
        label = row.method if row.status == "ok" else f"{row.method} ({row.status})"
        for ax, key, style in ((axes[0], "train/loss", "-"), (axes[1], "val/loss", "o-")):
            first = True
            for run in row.runs:
                pts = run.curves.get(key)
                if not pts:
                    continue
                steps, values = zip(*sorted(pts))
                ax.plot(steps, values, style, color=color, alpha=0.8, markersize=3, linewidth=1.2,
                        label=label if first else None)
                first = False
    for ax, title in zip(axes, ("train loss", "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (nats/token)")
    if any(ax.get_legend_handles_labels()[0] for ax in axes):
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_time_memory(table: Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train_time_s", "training time (s)"), ("peak_memory_mb", "peak memory (MB)"),
              ("train_state_mb", "weights + grads + optimizer (MB)"),
              (("gen_tokens_per_s_unmerged", "gen_tokens_per_s_merged"), "generation tokens/s")]
    present = {c.name for c in table.columns}
    panels = [(k, t) for k, t in panels if set((k,) if isinstance(k, str) else k) <= present]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    axes = axes[0]
    names = [r.method if r.status == "ok" else f"{r.method}\n({r.status})" for r in table.rows]
    x = list(range(len(table.rows)))
    for ax, (keys, title) in zip(axes, panels):
        keys = (keys,) if isinstance(keys, str) else keys
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            cells = [row.cells.get(key) for row in table.rows]
            means = [c.mean if c and c.mean is not None else 0.0 for c in cells]
            errs = [c.std if c and c.std is not None else 0.0 for c in cells]
            label = key.rsplit("_", 1)[-1] if len(keys) > 1 else None
            ax.bar([i + (j - (len(keys) - 1) / 2) * width for i in x], means, width, yerr=errs, capsize=3,
                   label=label)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI
def _mean_of(row: Row, key: str) -> tuple[float | None, float]:
    cell = row.cells.get(key)
    return (cell.mean, cell.std or 0.0) if cell is not None else (None, 0.0)


def plot_alignment(table: Table, path_tradeoff: Path, path_curves: Path) -> list[str]:
    """The alignment study's plots, when the runs have their figures: safety (harmful compliance)
    against helpfulness (over-refusal), one point per objective with std bars; and the held-out
    reward margin and KL against step. Returns the names of the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pts = [(row, _mean_of(row, "over_refusal"), _mean_of(row, "harmful_compliance")) for row in table.rows]
    pts = [(row, x, y) for row, x, y in pts if x[0] is not None and y[0] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4.6))
        for i, (row, (x, xe), (y, ye)) in enumerate(pts):
            ax.errorbar([x], [y], xerr=[xe], yerr=[ye], fmt="o", capsize=3, color=colors[i % len(colors)],
                        label=row.method if row.status == "ok" else f"{row.method} ({row.status})")
            ax.annotate(row.method, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("over-refusal of benign questions (%)  (lower = more helpful)")
        ax.set_ylabel("harmful compliance (%)  (lower = safer)")
        ax.set_title("safety vs helpfulness (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path_tradeoff, dpi=120)
        plt.close(fig)
        written.append(path_tradeoff.name)
    panels = [("val/heldout_margin", "held-out reward margin (nats)"),
              ("val/heldout_reward_accuracy", "held-out reward accuracy"),
              ("val/heldout_kl", "KL to the start model (nats/token)")]
    panels = [(k, t) for k, t in panels if any(run.curves.get(k) for row in table.rows for run in row.runs)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
        for ax, (key, title) in zip(axes[0], panels):
            for i, row in enumerate(table.rows):
                first = True
                for run in row.runs:
                    if not run.curves.get(key):
                        continue
                    steps, values = zip(*sorted(run.curves[key]))
                    ax.plot(steps, values, "o-", color=colors[i % len(colors)], markersize=3, linewidth=1.2,
                            alpha=0.8, label=row.method if first else None)
                    first = False
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path_curves, dpi=120)
        plt.close(fig)
        written.append(path_curves.name)
    return written


def write_report(runs: Sequence[Run], out: str | Path, title: str = "Method comparison",
                 label: str = "Method", order: Sequence[str] = ()) -> Table:
    """Write ``table.{md,csv,tex}``, ``loss_curves.png`` and ``time_memory.png`` into ``out`` (and, for
    the alignment study, ``safety_tradeoff.png`` and ``margin_curves.png``)."""
    if not runs:
        raise ConfigError("report: no runs found (expected run dirs with .hydra/overrides.yaml or metrics.json)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(runs, label, order)
    (out / "table.md").write_text(to_markdown(table, title), encoding="utf-8")
    write_csv(table, out / "table.csv")
    (out / "table.tex").write_text(to_latex(table, title), encoding="utf-8")
    plot_loss_curves(table, out / "loss_curves.png")
    plot_time_memory(table, out / "time_memory.png")
    plot_alignment(table, out / "safety_tradeoff.png", out / "margin_curves.png")
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zhilu.report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="*", help="multirun dirs, folders of them, or run dirs")
    p.add_argument("--out", help="output folder (default: <first DIR>/report, or ./report)")
    p.add_argument("--by", default="adapter", help="what makes a row (a metrics.json key or a config key; "
                   "objective for the alignment study)")
    p.add_argument("--title", default="Method comparison")
    p.add_argument("--order", default="", help="comma-separated row names to put first, in this order")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online)")
    p.add_argument("--wandb-group", help="only runs of this W&B group (e.g. method_ablation)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from zhilu.cli import one_line_errors

    @one_line_errors
    def run() -> int:
        args = parse_args(argv)
        if not args.dirs and not args.wandb:
            raise ConfigError("report: give run/multirun dirs or --wandb ENTITY/PROJECT")
        runs = [load_run(d, by=args.by) for d in find_run_dirs(args.dirs)]
        if args.wandb:
            runs += runs_from_wandb(args.wandb, group=args.wandb_group, by=args.by)
        out = args.out or (Path(args.dirs[0]) / "report" if args.dirs else Path("report"))
        label = BY_LABELS.get(args.by, args.by)
        order = [m for m in args.order.split(",") if m]
        table = write_report(runs, out, title=args.title, label=label, order=order)
        print(to_markdown(table, args.title), end="")
        failed = table.failed_runs
        print(f"\n{len(runs)} runs, {len(failed)} failed; wrote {out}/table.{{md,csv,tex}}, "
              "loss_curves.png, time_memory.png (alignment runs: safety_tradeoff.png, margin_curves.png)",
              file=sys.stderr)
        return 0

    return run()


if __name__ == "__main__":
    sys.exit(main())
