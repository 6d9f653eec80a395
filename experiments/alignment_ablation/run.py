#!/usr/bin/env python3
"""The alignment ablation on the tiny model, on a CPU: DPO, IPO, hinge, SimPO, ORPO and KTO from one SFT model.

1. ``base``: the tiny Llama-3 trained on general Chinese chat (the chosen answers of
   ``../shared/data/dpo-zh-500``), as the merge study builds its base
   (``experiments/merge_forgetting/run.py``: the same split and training call);
2. ``sft``: ``base`` fully fine-tuned on ``data/finance_sft/train.jsonl``, so that the answers the
   safety judge reads are text rather than noise;
3. the multirun ``train.py -m experiment=alignment_ablation model.path=<sft>/export/merged`` over
   ``--objectives`` x ``--seeds`` (LoRA, the same pairs, steps, optimizer and seeds);
4. ``python -m zhilu.report <multirun> --by objective``: ``results/table.{md,csv,tex}`` and the plots.

Models 1-2 are built once and reused (``--work``, default ``logs/alignment_ablation_study``); rerun
with ``--report-only <multirun dir>`` to redraw. ``results/study.json`` records the commands,
the machine and the timings.

    python experiments/alignment_ablation/run.py [--steps 6] [--seeds 42,43] [--safety-limit 12] [--parallel]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OBJECTIVES = "dpo,ipo,hinge,simpo,orpo,kto"


def merge_study():
    """The merge study's module (its general-chat split and its cached ``train.py`` call)."""
    spec = importlib.util.spec_from_file_location("merge_forgetting_run", ROOT / "experiments/merge_forgetting/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "torch": torch.__version__}


def build_models(args, work: Path) -> Path:
    ms = merge_study()
    general = ms.general_split(args.general_source, work / "general")
    common = [f"data.max_length={args.max_length}", "data.batch_size=8", "seed=42", "model.dtype=float32"]
    base = ms.train(work / "base_run", [
        "adapter=full", f"trainer.max_steps={args.base_steps}", "optimizer.lr=2e-3", "scheduler.warmup_ratio=0.03",
        f"data.train_files=[{general['train']}]", f"data.val_files=[{general['val']}]", *common])
    sft = ms.train(work / "sft_run", [
        "adapter=full", f"model.path={base / 'export' / 'merged'}", f"trainer.max_steps={args.sft_steps}",
        "optimizer.lr=1e-3", f"paths.data_dir={(ROOT / 'data').resolve()}", *common])
    return sft / "export" / "merged"


def multirun(args, sft: Path, sweep_dir: Path) -> tuple[list[list[str]], list[int]]:
    """The multiruns: per seed, the pair objectives with ``--pairs-per-batch`` pairs per step, then KTO with
    twice as many unpaired rows (the same pairs); ``--parallel`` runs the seeds side by side."""
    import threading

    seeds = args.seeds.split(",") if args.parallel else [args.seeds]
    objectives = args.objectives.split(",")
    groups = [(",".join(o for o in objectives if o != "kto"), args.pairs_per_batch),
              ("kto" if "kto" in objectives else "", 2 * args.pairs_per_batch)]
    cmds: list[list[str]] = []
    plans = []
    for seed in seeds:
        plan = []
        for objs, batch in groups:
            if not objs:
                continue
            out = sweep_dir / (f"seed{seed}" if args.parallel else "") / ("kto" if objs == "kto" else "pairs")
            cmd = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=alignment_ablation",
                   f"model.path={sft}", f"objective={objs}", f"seed={seed}", f"data.batch_size={batch}",
                   f"data.eval_batch_size={2 * batch}", f"trainer.max_steps={args.steps}",
                   f"trainer.val_check_interval={args.val_every}", f"data.max_length={args.align_max_length}",
                   f"optimizer.lr={args.lr}", f"callbacks.safety_eval.benchmark.limit={args.safety_limit}",
                   f"callbacks.safety_eval.benchmark.max_new_tokens={args.max_new_tokens}",
                   "callbacks.safety_eval.benchmark.batch_size=64", "logger=csv", "trainer.enable_progress_bar=false",
                   f"hydra.sweep.dir={out}", *args.extra]
            print("$", " ".join(cmd[1:]), flush=True)
            cmds.append(cmd[1:])
            plan.append(cmd)
        plans.append(plan)
    codes: list[int] = []

    def run_plan(plan):
        for cmd in plan:
            codes.append(subprocess.run(cmd, cwd=ROOT).returncode)

    threads = [threading.Thread(target=run_plan, args=(plan,)) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return cmds, codes


def report(sweep_dir: Path, results: Path) -> None:
    cmd = [sys.executable, "-m", "zhilu.report", str(sweep_dir), "--by", "objective", "--out", str(results),
           "--title", "Alignment ablation (tiny model, CPU)", "--order", OBJECTIVES]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "logs" / "alignment_ablation_study")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    shared = next((d for d in (ROOT.parent / "shared", ROOT.parents[1] / "shared") if d.is_dir()),
                  ROOT.parent / "shared")
    ap.add_argument("--general-source", type=Path, default=shared / "data" / "dpo-zh-500" / "dpo_zh_500.jsonl")
    ap.add_argument("--base-steps", type=int, default=60)
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--max-length", type=int, default=128, help="base and SFT training")
    ap.add_argument("--align-max-length", type=int, default=64, help="alignment runs (prompt + answer)")
    ap.add_argument("--pairs-per-batch", type=int, default=2, help="preference pairs per step (KTO: twice the rows)")
    ap.add_argument("--objectives", default=OBJECTIVES)
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--val-every", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--safety-limit", type=int, default=12,
                    help="prompts per safety file (harmful, benign), evenly spread")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--parallel", action="store_true", help="one multirun per seed, side by side")
    ap.add_argument("--models-only", action="store_true", help="build (or reuse) the base and SFT models, then stop")
    ap.add_argument("--report-only", type=Path, help="redraw results/ from this multirun dir")
    ap.add_argument("extra", nargs="*", help="more train.py overrides for the multirun")
    args = ap.parse_args()
    if args.report_only:
        report(args.report_only, args.results)
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    if not args.general_source.is_file():
        sys.exit(f"error: --general-source {args.general_source} missing")
    work = args.work.resolve()
    start = machine()
    t0 = time.perf_counter()
    sft = build_models(args, work)
    t_models = time.perf_counter() - t0
    if args.models_only:
        print(f"SFT model: {sft} ({t_models:.0f} s)")
        return
    sweep_dir = work / "multiruns" / time.strftime("%Y-%m-%d_%H-%M-%S")
    t1 = time.perf_counter()
    cmd, rc = multirun(args, sft, sweep_dir)
    t_sweep = time.perf_counter() - t1
    args.results.mkdir(parents=True, exist_ok=True)
    report(sweep_dir, args.results)
    study = {"command": " ".join(sys.argv), "multiruns": cmd, "exit_codes": rc, "sweep_dir": str(sweep_dir),
             "sft_model": str(sft), "setup": {k: v for k, v in vars(args).items() if k not in ("work", "results",
                                                                                            "report_only")},
             "machine_at_start": start, "machine_at_end": machine(),
             "timing_s": {"models": round(t_models, 1), "multirun": round(t_sweep, 1),
                          "total": round(time.perf_counter() - t0, 1)}}
    (args.results / "study.json").write_text(json.dumps(study, indent=2, default=str, ensure_ascii=False),
                                             encoding="utf-8")
    print(json.dumps(study["timing_s"]))


if __name__ == "__main__":
    main()
