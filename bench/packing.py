"""Real tokens per second, padded vs packed, on a chat-like length mix (one run, one table).

The same samples are trained on (forward, backward, AdamW step) once padded (random order, each
batch padded to its longest sample, as ``data.packing=false`` does) and once packed
(best-fit-decreasing rows of ``--max-length`` tokens, as ``data.packing=true`` does). Lengths and
label masks come from ../shared/data/disc-finllm-sft-sample encoded with the shipped tokenizer
(or, where that folder is missing, a log-normal mix with the same median and tail); token ids are
random, since throughput does not depend on them.

    python bench/packing.py --threads 1                       # tiny model, CPU: sdpa_varlen and sdpa
    python bench/packing.py --device cuda --dtype bf16 --attn flash_attention_2,sdpa --model-size 1b
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import model_config, sync  # noqa: E402
from zhilu.data.collate import PackedCollator, PaddedCollator  # noqa: E402
from zhilu.data.encode import IGNORE_INDEX, ChatEncoder, Example  # noqa: E402
from zhilu.data.packing import best_fit_decreasing, packing_stats  # noqa: E402
from zhilu.model import ModelBuilder  # noqa: E402
from zhilu.objectives.logps import label_logps  # noqa: E402

DISC = ROOT.parent / "shared" / "data" / "disc-finllm-sft-sample"


def disc_dialogues(folder: Path) -> list[list[dict]]:
    """DISC-FinLLM sample rows (alpaca with history) as chat messages."""
    out = []
    for f in sorted(folder.glob("*.json")):
        for r in json.loads(f.read_text(encoding="utf-8")):
            msgs = []
            for q, a in r.get("history") or []:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
            out.append(msgs)
    return out


def label_masks(max_length: int, n: int, seed: int) -> tuple[list[list[bool]], str]:
    """Per sample, which tokens carry a label (truncated to ``max_length``)."""
    if DISC.is_dir():
        enc = ChatEncoder(ModelBuilder(config={"vocab_size": 1}).load_tokenizer(), max_length, "truncate")
        encoded = (enc.sft(m) for m in disc_dialogues(DISC))  # None: truncation left no answer (dropped)
        masks = [[lab != IGNORE_INDEX for lab in ex.labels[0]] for ex in encoded if ex is not None]
        random.Random(seed).shuffle(masks)  # the files are sorted by task type: mix them
        source = f"{DISC.name} ({min(n, len(masks))} of {len(masks)} dialogues, shipped tokenizer)"
    else:  # same shape as that sample: median ~400 tokens, p90 ~1400, answers ~60% of a dialogue
        rng = random.Random(seed)
        masks = []
        for _ in range(n):
            length = max(24, min(max_length, int(rng.lognormvariate(6.0, 0.85))))
            prompt = max(8, int(length * rng.uniform(0.2, 0.6)))
            masks.append([False] * prompt + [True] * (length - prompt))
        source = f"log-normal mix ({n} samples; {DISC} not found)"
    return masks[:n], source


def make_examples(masks: list[list[bool]], vocab: int, seed: int) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, m in enumerate(masks):
        ids = torch.randint(8, vocab, (len(m),), generator=g).tolist()
        out.append(Example([ids], [[t if keep else IGNORE_INDEX for t, keep in zip(ids, m)]], {"id": i}))
    return out


def padded_batches(examples: list[Example], batch_size: int, pad: int, seed: int) -> list[dict]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    collate = PaddedCollator(pad)
    return [collate([examples[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]


def packed_batches(examples: list[Example], rows_per_batch: int, capacity: int, pad: int, seed: int):
    lengths = [e.total_length for e in examples]
    rows = best_fit_decreasing(lengths, capacity, seed=seed)
    random.Random(seed).shuffle(rows)
    collate = PackedCollator(pad)
    batches = [collate([[examples[i] for i in r] for r in rows[s : s + rows_per_batch]])
               for s in range(0, len(rows), rows_per_batch)]
    return batches, packing_stats(lengths, rows, capacity)


def default_attns(device: str) -> str:
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2,sdpa"
    return "sdpa_varlen,sdpa"


def train_epoch(model, opt, batches: list[dict], device: str, loss_impl: str) -> float:
    """Seconds for one pass over ``batches``: forward, backward and optimizer step per batch."""
    sync(device)
    t = time.perf_counter()
    for b in batches:
        b = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in b.items()}
        lp = label_logps(model, b, loss_impl)
        (-lp.token_logps.mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", help="fp32 | bf16")
    p.add_argument("--attn", default=None,
                   help="comma list of sdpa_varlen, sdpa, eager, flex_attention, flash_attention_2 "
                        "(default: flash_attention_2,sdpa on CUDA with flash-attn, else sdpa_varlen,sdpa)")
    p.add_argument("--model-size", default="tiny", help="tiny | small | 1b (Llama-3.2-1B shape, random weights)")
    p.add_argument("--max-length", type=int, default=1024, help="per-sample truncation = packed row length")
    p.add_argument("--batch-size", type=int, default=8, help="padded batch, in samples")
    p.add_argument("--rows", type=int, default=0, help="packed batch, in rows (0: as many tokens as a padded batch)")
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3, help="timed passes per layout, interleaved; the best is kept")
    p.add_argument("--loss-impl", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = model_config(args.model_size)
    tok = ModelBuilder(config={"vocab_size": 1}).load_tokenizer()
    vocab = cfg.get("vocab_size") or len(tok)
    masks, source = label_masks(args.max_length, args.samples, args.seed)
    examples = make_examples(masks, vocab, args.seed)
    lengths = [e.total_length for e in examples]
    rows = args.rows or max(1, round(args.batch_size * sum(lengths) / len(lengths) / args.max_length))
    layouts = {"padded": padded_batches(examples, args.batch_size, tok.pad_token_id, args.seed)}
    layouts["packed"], stats = packed_batches(examples, rows, args.max_length, tok.pad_token_id, args.seed)
    real = sum(lengths)
    slots = {name: sum(b["input_ids"].numel() for b in batches) for name, batches in layouts.items()}

    attns = (args.attn or default_attns(args.device)).split(",")
    builder = ModelBuilder(config=dict(cfg, vocab_size=vocab), dtype=args.dtype, attn_implementation=attns[0],
                           seed=args.seed)
    model = builder.build(tok, device_type=args.device.split(":")[0]).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=args.device.startswith("cuda"))
    best: dict[tuple[str, str], float] = {}
    for attn in attns:  # warm-up: one step of every (backend, layout)
        model.set_attn_implementation(attn)
        for batches in layouts.values():
            train_epoch(model, opt, batches[:1], args.device, args.loss_impl)
    for _ in range(args.repeats):
        for attn in attns:
            model.set_attn_implementation(attn)
            for name, batches in layouts.items():
                secs = train_epoch(model, opt, batches, args.device, args.loss_impl)
                best[attn, name] = min(secs, best.get((attn, name), float("inf")))

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n{args.model_size} Llama ({n_params / 1e6:.1f}M params), {args.dtype}, {dev}; "
          f"{len(examples)} samples from {source}")
    print(f"lengths: median {sorted(lengths)[len(lengths) // 2]}, mean {real / len(lengths):.0f}, max {max(lengths)} "
          f"(truncated at {args.max_length}); padded batches of {args.batch_size} samples, packed of {rows} rows")
    print(f"packing: {stats.rows} rows of {args.max_length}, {stats.samples_per_row:.2f} samples/row, "
          f"efficiency {stats.efficiency:.1%}; real/slots in batches: padded {real / slots['padded']:.1%}, "
          f"packed {real / slots['packed']:.1%}")
    print(f"time: one pass over all samples (forward, backward, AdamW), best of {args.repeats}\n")
    print("| attention | layout | steps | seconds | real tokens/s | packed / padded |")
    print("|---|---|---:|---:|---:|---:|")
    for attn in attns:
        for name, batches in layouts.items():
            secs = best[attn, name]
            ratio = best[attn, "padded"] / secs
            print(f"| {attn} | {name} | {len(batches)} | {secs:.2f} | {real / secs:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
