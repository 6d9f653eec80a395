"""Decode speed of an unmerged adapter against its merged copy (the model card's inference-time column).

Greedy decoding of fixed chat prompts (exactly ``--new-tokens`` each, KV cache on) through the same
timing code as the ablation callback, ABBA order, best of ``--repeats``; ratios from one run.

    python bench/generation.py                         # tiny model, CPU: lora, dora, dora_peft
    python bench/generation.py --size small --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from bench.adapters import ADAPTERS, make_adapter
    from bench.common import model_config
    from zhilu.model import ModelBuilder
    from zhilu.train.gen_speed import GenerationSpeed

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", default="lora,dora,dora_peft", help=f"comma list of {', '.join(ADAPTERS)}")
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "1b"])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    speed = GenerationSpeed(max_new_tokens=args.new_tokens, warmup=1, repeats=args.repeats)
    print("| adapter | unmerged tok/s | merged tok/s | unmerged / merged |\n|---|---:|---:|---:|")
    for name in args.adapters.split(","):
        torch.manual_seed(0)
        builder = ModelBuilder(config=model_config(args.size), seed=0)
        tok = builder.load_tokenizer()
        adapter = make_adapter(name)
        model = adapter.apply(builder.build(tok))
        with torch.no_grad():  # B = 0 at init: make the adapter do something
            for n, prm in model.named_parameters():
                if "lora_B" in n:
                    prm.normal_(0, 0.02)
        r = speed.measure_model(adapter, model, tok)
        print(f"| {name} | {r['gen_tokens_per_s_unmerged']:.1f} | {r['gen_tokens_per_s_merged']:.1f} | "
              f"{r['gen_speedup_merged'] ** -1:.2f}x |")


if __name__ == "__main__":
    main()
