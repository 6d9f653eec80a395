#!/usr/bin/env python3
"""Merging against catastrophic forgetting, measured on the tiny model.

1. ``base``: the tiny Llama-3 trained on general Chinese chat (the chosen answers of
   ``../shared/data/dpo-zh-500``, 85% of the rows; the rest is the general held-out set).
2. ``sft``: ``base`` fine-tuned on ``data/finance_sft/train.jsonl`` (a full fine-tune by default;
   ``--adapter dora`` for the recipe's adapter, several times slower per step on CPU: the merge
   then reads the run's ``export/merged``).
3. merges of ``sft`` with ``base`` through ``zhilu.merge`` at several weights (linear, slerp,
   ties, dare_ties), each scored on
   - domain: mean token loss on ``data/finance_sft/val.jsonl`` (the in-domain validation set),
   - general: mean token loss on the general held-out set,
   - C-Eval (val, first ``--ceval-limit`` questions per subject, letter log-likelihood) through
     ``eval.py`` for the linear merges, when ``zhilu.eval`` is importable.

Writes ``results.json``, ``table.md`` and ``tradeoff.png`` to ``--results`` (default: this
folder's ``results/``); models go to ``--work``. Usage::

    python experiments/merge_forgetting/run.py [--base-steps 400] [--ft-steps 150] [--adapter full|lora|dora]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
METHODS = {  # name -> (conf/merge option, parameter the sweep sets, fixed overrides)
    "linear": ("linear", "weight", {}),
    "slerp": ("slerp", "t", {}),
    "ties": ("ties", "weight", {"density": 0.5}),
    "dare_ties": ("dare_ties", "weight", {"density": 0.5}),
}


def general_split(source: Path, out: Path, val_fraction: float = 0.15, seed: int = 0) -> dict[str, Path]:
    """Chat rows (system?, user question, assistant chosen answer) split into train/val."""
    rows = []
    for line in source.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        msgs = [{"role": "system", "content": r["system"]}] if r.get("system") else []
        for q, a in r.get("history") or []:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs += [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["response_chosen"]}]
        rows.append({"messages": msgs})
    random.Random(seed).shuffle(rows)
    n_val = int(len(rows) * val_fraction)
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": out / "train.jsonl", "val": out / "val.jsonl"}
    for split, part in (("val", rows[:n_val]), ("train", rows[n_val:])):
        files[split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return files


def train(run_dir: Path, overrides: list[str]) -> Path:
    if (run_dir / "export" / "merged" / "config.json").is_file():
        print(f"reusing {run_dir}")
        return run_dir
    cmd = [sys.executable, str(ROOT / "train.py"), "logger=csv", f"hydra.run.dir={run_dir}",
           "trainer.enable_progress_bar=false", "callbacks.model_checkpoint=null", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run_dir


@torch.no_grad()
def mean_loss(model, tokenizer, file: Path, max_length: int, batch_size: int = 16) -> float:
    """Token-weighted mean NLL of the assistant tokens of every row of ``file``."""
    from zhilu.data.collate import PaddedCollator
    from zhilu.data.encode import ChatEncoder
    from zhilu.data.formats import iter_rows

    encoder = ChatEncoder(tokenizer, max_length=max_length, overlong="truncate")
    examples = [ex for msgs in iter_rows(file, "chat") if (ex := encoder.sft(msgs)) is not None]
    collate = PaddedCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(),
                                                ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((labels != -100).sum())
    return total / count


def score(folder: Path, files: dict[str, Path], max_length: int) -> dict[str, float]:
    from zhilu.model import ModelBuilder

    builder = ModelBuilder(path=str(folder), dtype="float32", attn_implementation="sdpa")
    tok = builder.load_tokenizer()
    model = builder.build(tok).eval()
    return {name: mean_loss(model, tok, f, max_length) for name, f in files.items()}


def ceval(folder: Path, out: Path, limit: int, data_dir: Path | None = None) -> float | None:
    """C-Eval val accuracy in percent (first ``limit`` questions of every subject) via ``eval.py``."""
    if importlib.util.find_spec("zhilu.eval") is None or not (ROOT / "eval.py").is_file():
        return None
    cmd = [sys.executable, str(ROOT / "eval.py"), "benchmark=ceval", f"benchmark.limit={limit}",
           f"model.path={folder}", f"hydra.run.dir={out}", "model.dtype=float32"]
    if data_dir is not None:
        cmd.append(f"benchmark.data_dir={data_dir.resolve()}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    results = out / "results.json"
    if proc.returncode != 0 or not results.is_file():
        print(f"C-Eval failed for {folder}: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    acc = json.loads(results.read_text()).get("accuracy", {}).get("avg")
    return None if acc is None else float(acc)


def merge(method: str, value: float, base: Path, sft: Path, out: Path) -> Path:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zhilu.merge.__main__ import run

    option, key, fixed = METHODS[method]
    overrides = [f"merge={option}", f"models=[{sft}]", f"base={base}", f"output_dir={out}", "overwrite=true",
                 f"merge.{key}={value}", *(f"merge.{k}={v}" for k, v in fixed.items())]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("merge", overrides=overrides)
    return Path(run(cfg))


def plot(rows: list[dict], base_row: dict, sft_row: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    ax1b = ax1.twinx()
    colors = {"linear": "C0", "slerp": "C1", "ties": "C2", "dare_ties": "C3"}
    for method in METHODS:
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["weight"])
        if not pts:
            continue
        w = [p["weight"] for p in pts]
        ax1.plot(w, [p["domain_loss"] for p in pts], "-o", color=colors[method], label=f"{method}")
        ax1b.plot(w, [p["general_loss"] for p in pts], "--s", color=colors[method], alpha=0.8)
        ax2.plot([p["general_loss"] for p in pts], [p["domain_loss"] for p in pts], "-o", color=colors[method],
                 label=method)
        if method == "linear":
            for p in pts:
                ax2.annotate(f"{p['weight']:g}", (p["general_loss"], p["domain_loss"]), textcoords="offset points",
                             xytext=(4, 4), fontsize=8)
    ax1.set_xlabel("merge weight (0 = base, 1 = SFT; slerp: t)")
    ax1.set_ylabel("finance val loss (solid, circles)")
    ax1b.set_ylabel("general held-out loss (dashed, squares)")
    ax1.set_title("losses against the merge weight")
    ax1.legend(fontsize=8, loc="upper center")
    ax2.scatter([base_row["general_loss"]], [base_row["domain_loss"]], marker="*", s=150, color="k", label="base", zorder=3)
    ax2.scatter([sft_row["general_loss"]], [sft_row["domain_loss"]], marker="P", s=120, color="m", label="SFT", zorder=3)
    ax2.set_xlabel("general held-out loss (lower = less forgetting)")
    ax2.set_ylabel("finance val loss (lower = better in domain)")
    ax2.set_title("domain vs general trade-off (labels: linear weight)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(rows: list[dict], results: Path) -> str:
    """Write ``table.md`` and ``tradeoff.png`` from the scored rows."""
    has_ceval = any(r.get("ceval") is not None for r in rows)
    md = table(rows, has_ceval)
    (results / "table.md").write_text(md + "\n", encoding="utf-8")
    plot([r for r in rows if r["model"] == "merged"], rows[0], rows[1], results / "tradeoff.png")
    return md


def table(rows: list[dict], has_ceval: bool) -> str:
    head = "| model | method | weight | finance val loss | general loss | Δ finance vs base | Δ general vs base |"
    # C-Eval: percent correct (eval.py's table), chance = 25
    sep = "|---|---|---:|---:|---:|---:|---:|"
    if has_ceval:
        head += " C-Eval % |"
        sep += "---:|"
    base = next(r for r in rows if r["model"] == "base")
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['model']} | {r['method']} | {r['weight']:g} | {r['domain_loss']:.4f} | {r['general_loss']:.4f} | "
                f"{r['domain_loss'] - base['domain_loss']:+.4f} | {r['general_loss'] - base['general_loss']:+.4f} |")
        if has_ceval:
            acc = r.get("ceval")
            line += f" {'' if acc is None else format(acc, '.1f')} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "logs" / "merge_forgetting")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--general-source", type=Path,
                    default=ROOT.parent / "shared" / "data" / "dpo-zh-500" / "dpo_zh_500.jsonl")
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--adapter", default="full")
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--weights", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ceval-dir", type=Path, default=None, help="C-Eval folder (default: eval.py's, ../shared/data/ceval)")
    ap.add_argument("--ceval-limit", type=int, default=5, help="questions per C-Eval subject (0: skip C-Eval)")
    ap.add_argument("--plot-only", action="store_true", help="redraw table.md and tradeoff.png from results.json")
    args = ap.parse_args()
    if args.plot_only:
        print(report(json.loads((args.results / "results.json").read_text(encoding="utf-8"))["rows"], args.results))
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    t0 = time.perf_counter()
    work = args.work.resolve()
    finance = {"train": args.data_dir / "finance_sft" / "train.jsonl", "val": args.data_dir / "finance_sft" / "val.jsonl"}
    for f in finance.values():
        if not f.is_file():
            sys.exit(f"error: {f} missing (python scripts/make_sample_data.py, or --data-dir)")
    if not args.general_source.is_file():
        sys.exit(f"error: --general-source {args.general_source} missing")
    general = general_split(args.general_source, work / "general")

    common = [f"data.max_length={args.max_length}", "data.batch_size=8", "seed=42", "model.dtype=float32"]
    base_run = train(work / "base_run", [
        "adapter=full", f"trainer.max_steps={args.base_steps}", "optimizer.lr=2e-3", "scheduler.warmup_ratio=0.03",
        f"data.train_files=[{general['train']}]", f"data.val_files=[{general['val']}]", *common])
    base = base_run / "export" / "merged"
    sft_run = train(work / f"sft_{args.adapter}", [
        f"adapter={args.adapter}", f"model.path={base}", f"trainer.max_steps={args.ft_steps}",
        f"optimizer.lr={args.ft_lr}", f"paths.data_dir={args.data_dir.resolve()}", *common])
    t_train = time.perf_counter() - t0

    files = {"domain_loss": finance["val"], "general_loss": general["val"]}
    weights = [float(w) for w in args.weights.split(",")]
    rows: list[dict] = []
    base_row = {"model": "base", "method": "-", "weight": 0.0, **score(base, files, args.max_length)}
    sft_row = {"model": f"SFT ({args.adapter})", "method": "-", "weight": 1.0, **score(sft_run, files, args.max_length)}
    rows += [base_row, sft_row]
    merge_times = []
    for method in args.methods.split(","):
        for w in weights:
            out = work / "merged" / f"{method}_{w:g}"
            t = time.perf_counter()
            folder = merge(method, w, base, sft_run, out)
            merge_times.append(time.perf_counter() - t)
            rows.append({"model": "merged", "method": method, "weight": w, "folder": str(folder),
                         **score(folder, files, args.max_length)})
            print(f"{method} {w:g}: domain {rows[-1]['domain_loss']:.4f} general {rows[-1]['general_loss']:.4f}", flush=True)
    has_ceval = False
    if args.ceval_limit > 0:
        targets = [(base_row, base), (sft_row, sft_run)] + [(r, Path(r["folder"])) for r in rows if r["method"] == "linear"]
        for r, folder in targets:
            slug = "".join(c if c.isalnum() else "_" for c in f"{r['model']}_{r['method']}_{r['weight']:g}")
            r["ceval"] = ceval(folder, work / "ceval" / slug, args.ceval_limit, args.ceval_dir)
            has_ceval |= r["ceval"] is not None
    args.results.mkdir(parents=True, exist_ok=True)
    summary = {
        "setup": {"base_steps": args.base_steps, "ft_steps": args.ft_steps, "adapter": args.adapter,
                  "ft_lr": args.ft_lr, "max_length": args.max_length, "general_source": str(args.general_source),
                  "general_rows": {k: sum(1 for _ in open(v, encoding="utf-8")) for k, v in general.items()},
                  "finance_rows": {k: sum(1 for _ in open(v, encoding="utf-8")) for k, v in finance.items()},
                  "ceval_limit_per_subject": args.ceval_limit if has_ceval else None},
        "timing_s": {"training": round(t_train, 1), "mean_merge": round(sum(merge_times) / len(merge_times), 3),
                     "total": round(time.perf_counter() - t0, 1)},
        "rows": [{k: v for k, v in r.items() if k != "folder"} for r in rows],
    }
    (args.results / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print(report(rows, args.results))
    print(f"wrote {args.results}/table.md, results.json, tradeoff.png ({summary['timing_s']})")


if __name__ == "__main__":
    main()
