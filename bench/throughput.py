"""Training throughput and MFU on one GPU: a 1B-class Llama (random weights), packed bf16 rows.

bf16 weights under bf16 autocast, as ``trainer=gpu`` (precision ``bf16-mixed``) runs them; peft
keeps adapter weights in fp32 and autocast runs their matmuls in bf16.

For each adapter (full, LoRA) and attention backend: tokens/s, MFU (PaLM FLOPs, see
``zhilu.train.flops``) against the device's dense bf16 peak, and peak CUDA memory, through the
same code path as ``train.py`` (ZhiluModule + adapter + SFT objective, packed batches built by
``PackedCollator`` from a chat-like length mix, best-fit-decreasing into rows).

    python bench/throughput.py --size 1b --seq-len 4096 --rows 2 --adapters full,lora --attn sdpa,flex_attention
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import median, model_config, timed  # noqa: E402


def chat_lengths(n: int, max_len: int, seed: int = 0) -> list[int]:
    """Many short, a long tail: log-normal around ~350 tokens, clipped to [16, max_len]."""
    rng = random.Random(seed)
    return [max(16, min(max_len, int(rng.lognormvariate(5.6, 0.9)))) for _ in range(n)]


def packed_batches(vocab: int, seq_len: int, rows: int, n_batches: int, seed: int = 0):
    from zhilu.data.collate import PackedCollator
    from zhilu.data.encode import Example
    from zhilu.data.packing import best_fit_decreasing, packing_stats

    lengths = chat_lengths(4000, seq_len, seed)
    bins = best_fit_decreasing(lengths, seq_len, seed=seed)
    stats = packing_stats(lengths, bins, seq_len)
    g = torch.Generator().manual_seed(seed)
    collate = PackedCollator(pad_token_id=0)
    # rows drawn uniformly (BFD lists the rows of the longest documents first)
    picks = random.Random(seed).sample(range(len(bins)), min(len(bins), rows * n_batches))
    batches = []
    for b in range(n_batches):
        row_examples = []
        for r in range(rows):
            exs = []
            for i in bins[picks[(b * rows + r) % len(picks)]]:
                ids = torch.randint(8, vocab, (lengths[i],), generator=g).tolist()
                n_prompt = lengths[i] // 3
                exs.append(Example([ids], [[-100] * n_prompt + ids[n_prompt:]]))
            row_examples.append(exs)
        batches.append(collate(row_examples))
    return batches, stats


def run(adapter_name: str, attn: str, args) -> dict:
    from zhilu.adapters import FullFineTune, LoRA
    from zhilu.model import ModelBuilder
    from zhilu.objectives import SFT
    from zhilu.model.runtime import base_causal_lm
    from zhilu.train import flops
    from zhilu.train.module import ZhiluModule

    torch.manual_seed(0)
    adapter = {"full": FullFineTune(), "lora": LoRA(r=16, alpha=32, dropout=0.0),
               "dora": LoRA(r=16, alpha=32, dropout=0.0, use_dora=True)}[adapter_name]
    cfg = model_config(args.size)
    builder = ModelBuilder(config=cfg, dtype="bfloat16", attn_implementation=attn,
                           gradient_checkpointing=args.grad_ckpt)
    tok = builder.load_tokenizer()
    module = ZhiluModule(builder, adapter, SFT(loss_impl=args.loss_impl),
                         optimizer=partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0, fused=True),
                         scheduler=None, tokenizer=tok)
    module.configure_model()
    model = module.model.cuda()
    opt = adapter.build_optimizer(model, module.optimizer_factory, 1e-5, 0.0)
    batches, stats = packed_batches(cfg["vocab_size"], args.seq_len, args.rows, 4, seed=0)
    batches = [{k: (v.cuda() if torch.is_tensor(v) else v) for k, v in b.items()} for b in batches]
    loss_fn = module.objective.loss
    if args.compile:
        for layer in base_causal_lm(model).model.layers:
            layer.compile()
    state = {"i": 0}

    def step():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.autocast("cuda", dtype=torch.bfloat16):  # as trainer=gpu (bf16-mixed) does
            loss, _ = loss_fn(module, b, "train")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    times = timed(step, "cuda", args.warmup, args.steps)
    tokens = sum(b["num_tokens"] for b in batches) / len(batches)
    seqs = sum(b["num_sequences"] for b in batches) / len(batches)
    lm = base_causal_lm(model)
    n = flops.matmul_params(lm)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fpt = flops.flops_per_token(n, cfg["num_hidden_layers"], cfg["num_attention_heads"] * cfg["head_dim"],
                                tokens / seqs, None if trainable >= n else trainable)
    tps = tokens / median(times)
    peak = flops.peak_flops(torch.cuda.get_device_name())
    out = {"adapter": adapter_name, "attn": attn, "tokens_per_s": tps, "mfu": flops.mfu(tps, fpt, peak) if peak else None,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "step_s": median(times),
           "tokens_per_step": tokens, "mean_doc_len": tokens / seqs, "packing_efficiency": stats.efficiency,
           "params": sum(p.numel() for p in model.parameters()), "trainable": trainable}
    module = model = opt = batches = None  # drop the references (step() closes over them) before freeing
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--adapters", default="full,lora")
    p.add_argument("--attn", default="sdpa,flex_attention")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--loss-impl", default="chunked")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/throughput.py needs a CUDA GPU")
    rows = []
    for attn in args.attn.split(","):
        for a in args.adapters.split(","):
            try:
                rows.append(run(a, attn, args))
            except Exception as exc:  # report and go on to the next configuration
                rows.append({"adapter": a, "attn": attn, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                torch.cuda.empty_cache()
            print(json.dumps(rows[-1]), flush=True)
    dev = torch.cuda.get_device_name()
    print(f"\n{dev}, torch {torch.__version__}, model={args.size}, bf16, packed rows {args.rows} x {args.seq_len}, "
          f"compile={args.compile}, median of {args.steps} steps")
    print("| adapter | attention | tokens/s | MFU | peak mem (GiB) | tokens/s vs full |")
    print("|---|---|---:|---:|---:|---:|")
    full = {r["attn"]: r for r in rows if r.get("adapter") == "full" and "error" not in r}
    for r in rows:
        if "error" in r:
            print(f"| {r['adapter']} | {r['attn']} | failed: {r['error'][:60]} ||||")
            continue
        rel = f"{r['tokens_per_s'] / full[r['attn']]['tokens_per_s']:.2f}x" if r["attn"] in full else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"| {r['adapter']} | {r['attn']} | {r['tokens_per_s']:,.0f} | {mfu} | {r['peak_mem_gib']:.1f} | {rel} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
