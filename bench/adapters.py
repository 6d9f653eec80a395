"""Adapter benchmark: trainable parameters, step time and peak memory for each adapter.

Every adapter trains for the same steps on the same batches, through the same code as
``train.py`` (ZhiluModule + adapter + SFT objective). Each runs in its own process, so peak
memory (CUDA max allocated on GPU, peak RSS on CPU) is its own. Prints one table with ratios to
``full`` and to ``lora``, measured in one run.

    python bench/adapters.py                                   # CPU, tiny model
    python bench/adapters.py --adapters lora,dora,dora_peft     # zhilu's lean DoRA vs peft's
    python bench/adapters.py --device cuda --dtype bf16 --size 1b --seq-len 1024 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADAPTERS = {
    "full": ("zhilu.adapters.FullFineTune", {}),
    "lora": ("zhilu.adapters.LoRA", {"r": 16, "alpha": 32, "dropout": 0.0}),
    "loraplus": ("zhilu.adapters.LoRAPlus", {"r": 16, "alpha": 32, "dropout": 0.0, "lr_ratio": 16}),
    "dora": ("zhilu.adapters.LoRA", {"r": 16, "alpha": 32, "dropout": 0.0, "use_dora": True}),
    # peft's own DoRA layer (two saved activations per layer), for comparison with zhilu's lean one
    "dora_peft": ("zhilu.adapters.LoRA", {"r": 16, "alpha": 32, "dropout": 0.0, "use_dora": True, "lean_dora": False}),
    "badam": ("zhilu.adapters.BAdam", {"switch_interval": 1000}),
}


def make_adapter(name: str):
    """The adapter object for a row of :data:`ADAPTERS`."""
    import importlib

    path, kwargs = ADAPTERS[name]
    mod, cls = path.rsplit(".", 1)
    return getattr(importlib.import_module(mod), cls)(**kwargs)


def run_one(args) -> dict:
    import torch

    from bench.common import median, model_config, timed
    from zhilu.adapters.base import count_parameters
    from zhilu.model import ModelBuilder
    from zhilu.objectives import SFT
    from zhilu.train.module import ZhiluModule
    from zhilu.utils.memory import peak_memory_mb

    torch.manual_seed(0)
    adapter = make_adapter(args.one)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    builder = ModelBuilder(config=model_config(args.size), dtype=dtype, attn_implementation=args.attn,
                           gradient_checkpointing=args.grad_ckpt)
    tok = builder.load_tokenizer()
    if "vocab_size" not in model_config(args.size):
        builder.config["vocab_size"] = len(tok)
    module = ZhiluModule(builder, adapter, SFT(loss_impl="chunked" if args.device == "cuda" else "torch"),
                         optimizer=partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0, fused=args.device == "cuda"),
                         scheduler=None, tokenizer=tok)
    module.configure_model()
    model = module.model.to(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    opt = adapter.build_optimizer(model, module.optimizer_factory, 1e-5, 0.0)
    V = model.config.vocab_size if hasattr(model, "config") else len(tok)
    g = torch.Generator().manual_seed(0)
    B, T = args.batch_size, args.seq_len
    ids = torch.randint(0, V - 8, (B, T), generator=g).to(args.device)
    labels = ids.clone()
    labels[:, : T // 4] = -100  # a prompt part without loss
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             "position_ids": torch.arange(T, device=args.device).expand(B, T),
             "sequence_index": torch.arange(B, device=args.device)[:, None].expand(B, T),
             "num_sequences": B, "num_tokens": B * T}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            loss, _ = module.objective.loss(module, batch, "train")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = timed(step, args.device, args.warmup, args.steps)
    trainable, total = count_parameters(model)
    if args.one == "badam":  # trainable at any moment = one block
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mem = peak_memory_mb(torch.device(args.device))
    return {"adapter": args.one, "trainable": trainable, "total": total, "step_s": median(times),
            "tokens_per_s": B * T / median(times), "peak_mb": mem["peak_memory_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", default="full,lora,loraplus,dora,badam")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "1b"])
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args)))
        return
    rows = []
    for name in args.adapters.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--device", args.device, "--dtype", args.dtype,
               "--size", args.size, "--attn", args.attn, "--seq-len", str(args.seq_len),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--grad-ckpt"] if args.grad_ckpt else []
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            rows.append({"adapter": name, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(line[7:]))
    ok = {r["adapter"]: r for r in rows if "error" not in r}
    print(f"\nadapters on {args.device} ({args.dtype}), model={args.size}, batch {args.batch_size} x {args.seq_len} tokens, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print("| adapter | trainable params | step (s) | tokens/s | peak mem (MiB) | step vs full | step vs lora | mem vs full | mem vs lora |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['adapter']} | failed: {r['error'][:80]} |||||||")
            continue
        ratio = lambda key, ref: f"{r[key] / ok[ref][key]:.2f}x" if ref in ok else "-"  # noqa: E731
        print(f"| {r['adapter']} | {r['trainable']:,} | {r['step_s']:.4f} | {r['tokens_per_s']:,.0f} | {r['peak_mb']:,.0f} | "
              f"{ratio('step_s', 'full')} | {ratio('step_s', 'lora')} | {ratio('peak_mb', 'full')} | {ratio('peak_mb', 'lora')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
