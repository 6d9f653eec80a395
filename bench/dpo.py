"""DPO reference benchmark: online frozen copy vs precomputed vs disabled-adapter reference.

Every mode trains the same model on the same preference batches (same seed, same order) through
the code ``train.py`` runs: a Lightning ``Trainer`` fitting ``ZhiluModule`` with the ``DPO``
objective. Each mode runs in its own process, so its peak memory (CUDA max allocated on GPU,
peak RSS on CPU) is its own. Steps/s is timed over the steps after the warm-up; the one-off
reference precomputation is timed apart. Every batch is padded to ``--seq-len`` by default: one
shape, so cuDNN/SDPA per-shape set-up falls in the warm-up of every mode alike (with ragged
shapes the precomputation pass would pre-warm the forward kernels for the precomputed mode only).
Prints one table with ratios to the online frozen copy.

    python bench/dpo.py                                                   # CPU, tiny model
    python bench/dpo.py --device cuda --dtype bf16 --size 1b --batch-size 8 --seq-len 512

Expected: the precomputed reference skips the reference forward, about a quarter of a step's
compute (policy forward + backward ~ 3 forwards), so ~1.33x the steps/s of the online copy, and
a peak lower by at least the reference weights (the copy is freed before training).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# mode -> (adapter target, adapter kwargs, precompute_ref)
MODES = {
    "online-copy": ("zhilu.adapters.FullFineTune", {}, False),
    "precomputed": ("zhilu.adapters.FullFineTune", {}, True),
    "disabled-adapter": ("zhilu.adapters.LoRA", {"r": 16, "alpha": 32, "dropout": 0.0}, False),
    "disabled-precomputed": ("zhilu.adapters.LoRA", {"r": 16, "alpha": 32, "dropout": 0.0}, True),
}
LABELS = {
    "online-copy": "full + online frozen copy",
    "precomputed": "full + precomputed",
    "disabled-adapter": "lora + disabled adapter",
    "disabled-precomputed": "lora + precomputed",
}


def run_one(args) -> dict:
    import importlib

    import lightning as L
    import torch

    from bench.common import model_config
    from zhilu.adapters.base import count_parameters
    from zhilu.data import ChatDataModule
    from zhilu.model import ModelBuilder
    from zhilu.objectives import DPO
    from zhilu.train.module import ZhiluModule
    from zhilu.utils.memory import peak_memory_mb

    target, kwargs, precompute = MODES[args.one]
    mod, cls = target.rsplit(".", 1)
    adapter = getattr(importlib.import_module(mod), cls)(**kwargs)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    builder = ModelBuilder(config=model_config(args.size), dtype=dtype, attn_implementation=args.attn, seed=0)
    tok = builder.load_tokenizer()
    if builder.config.get("vocab_size") is None:
        builder.config["vocab_size"] = len(tok)
    objective = DPO(loss_type="sigmoid", beta=0.1, precompute_ref=precompute,
                    loss_impl="chunked" if args.device == "cuda" else "torch")
    module = ZhiluModule(builder, adapter, objective,
                         optimizer=partial(torch.optim.AdamW, lr=1e-6, weight_decay=0.0, fused=args.device == "cuda"),
                         scheduler=None, tokenizer=tok)
    dm = ChatDataModule(kind="preference", format="preference", train_files=[str(args.data)], max_length=args.seq_len,
                        batch_size=args.batch_size, seed=0, tokenizer=tok, pad_to_multiple_of=args.pad_to or None)

    class Meter(L.Callback):
        """Peak memory from fit start (precomputation included) and from the first step; step timing."""

        def __init__(self) -> None:
            self.t0 = self.t1 = None
            self.fit_peak = self.train_peak = None

        def _sync(self):
            if args.device == "cuda":
                torch.cuda.synchronize()

        def on_fit_start(self, trainer, pl_module) -> None:
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()

        def on_train_start(self, trainer, pl_module) -> None:
            self._sync()
            self.fit_peak = peak_memory_mb(pl_module.device)["peak_memory_mb"]
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == args.warmup and self.t0 is None:
                self._sync()
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            self._sync()
            self.t1 = time.perf_counter()
            self.train_peak = peak_memory_mb(pl_module.device)["peak_memory_mb"]

    meter = Meter()
    L.seed_everything(0)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = L.Trainer(
            accelerator=args.device, devices=1, max_steps=args.warmup + args.steps, default_root_dir=run_dir,
            precision="bf16-mixed" if args.dtype == "bf16" else "32-true", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            callbacks=[meter],
        )
        trainer.fit(module, datamodule=dm)
    trainable, total = count_parameters(module.model)
    weights_mb = sum(p.numel() * p.element_size() for p in module.model.parameters()) / 2**20
    if args.one.startswith("disabled"):  # the policy's base is the reference: count base weights only
        weights_mb = sum(p.numel() * p.element_size() for n, p in module.model.named_parameters()
                         if "lora_" not in n) / 2**20
    return {
        "mode": args.one, "trainable": trainable, "total": total,
        "steps_per_s": args.steps / (meter.t1 - meter.t0),
        "fit_peak_mb": max(meter.fit_peak, meter.train_peak), "train_peak_mb": meter.train_peak,
        "precompute_s": objective.precompute_s or 0.0, "ref_weights_mb": weights_mb,
        "train_pairs": len(dm.train_examples), "holds_copy": objective.ref_model is not None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "1b"])
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "finance_dpo" / "train.jsonl",
                   help="preference JSONL (default: the project's sample)")
    p.add_argument("--seq-len", type=int, default=256, help="max tokens per sequence (prompt + answer)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--pad-to", type=int, default=None,
                   help="pad every batch to a multiple of this (default: --seq-len, one shape for all steps, so "
                        "per-shape kernel set-up on GPU stays in the warm-up; 0: pad to the batch's longest)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pad_to is None:
        args.pad_to = args.seq_len
    if args.one:
        print("RESULT " + json.dumps(run_one(args)))
        return
    passed, skip = [], False
    for a in sys.argv[1:]:  # the child gets every option but --modes (and its value)
        if skip or a.startswith("--modes"):
            skip = a == "--modes" and not skip
            continue
        passed.append(a)
    rows = []
    for name in args.modes.split(","):
        if name not in MODES:
            raise SystemExit(f"error: --modes: unknown mode {name!r} (expected {', '.join(MODES)})")
        cmd = [sys.executable, __file__, "--one", name] + passed
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            rows.append({"mode": name, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(line[7:]))
    ok = {r["mode"]: r for r in rows if "error" not in r}
    base = ok.get("online-copy")
    pairs = next((r["train_pairs"] for r in ok.values()), 0)
    print(f"\nDPO reference modes on {args.device} ({args.dtype}), model={args.size}, {args.batch_size} pairs x "
          f"<= {args.seq_len} tokens per sequence, {args.steps} timed steps after {args.warmup} warm-up; "
          f"precomputation over {pairs} train pairs; batches padded to a multiple of {args.pad_to or 1}")
    print("| mode | trainable params | steps/s | steps/s vs online copy | peak mem (MiB) | peak vs online copy | "
          "peak saved (MiB) | reference weights (MiB) | precompute (s) | copy kept in training |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {LABELS.get(r['mode'], r['mode'])} | failed: {r['error'][:100]} |||||||||")
            continue
        speed = f"{r['steps_per_s'] / base['steps_per_s']:.2f}x" if base else "-"
        mem = f"{r['fit_peak_mb'] / base['fit_peak_mb']:.2f}x" if base else "-"
        saved = f"{base['fit_peak_mb'] - r['fit_peak_mb']:,.0f}" if base else "-"
        print(f"| {LABELS[r['mode']]} | {r['trainable']:,} | {r['steps_per_s']:.2f} | {speed} | {r['fit_peak_mb']:,.0f} | "
              f"{mem} | {saved} | {r['ref_weights_mb']:,.0f} | {r['precompute_s']:.1f} | "
              f"{'yes' if r['holds_copy'] else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
