"""What ``data.overlong`` costs on real rows: rows kept, truncated, dropped, and tokens lost per policy.

Encodes each DISC-FinLLM sample part (../shared/data/disc-finllm-sft-sample, alpaca format with
history) with the shipped tokenizer and applies every policy at ``--max-length`` through
:func:`zhilu.data.encode.fit_example`, the function the data module uses; prints one Markdown table.

    python bench/overlong.py --max-length 512
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from zhilu.data.encode import IGNORE_INDEX, ChatEncoder  # noqa: E402
from zhilu.data.formats import iter_rows  # noqa: E402
from zhilu.model import ModelBuilder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "disc-finllm-sft-sample")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--policies", default="truncate,truncate_prompt,drop")
    args = parser.parse_args()
    tok = ModelBuilder(config={"hidden_size": 8}).load_tokenizer()  # the shipped tokenizer
    print(f"max_length={args.max_length}, shipped tokenizer\n")
    print("| part | data.overlong | rows | kept | truncated | dropped | tokens lost | answer tokens lost "
          "| answer tokens kept |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in sorted(args.data_dir.glob("*_part.json")):
        rows = list(iter_rows(path, "alpaca"))
        for policy in args.policies.split(","):
            enc = ChatEncoder(tok, args.max_length, policy)
            kept = [ex for row in rows if (ex := enc.sft(row)) is not None]
            trained = sum(1 for ex in kept for labels in ex.labels for t in labels if t != IGNORE_INDEX)
            s = enc.stats
            lost = s["truncated_tokens_lost"] + s["dropped_tokens_lost"]
            print(f"| {path.stem.removesuffix('_part')} | {policy} | {len(rows)} | {len(kept)} | {s['truncated']} | "
                  f"{s['dropped_overlong']} | {lost:,} | {s['label_tokens_lost']:,} | {trained:,} |")


if __name__ == "__main__":
    main()
