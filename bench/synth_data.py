"""Data-pipeline benchmark: near-duplicate removal, BM25 retrieval, batched local generation.

1. Near-dedup: ``NearDedup`` (MinHash LSH, every candidate verified by exact Jaccard) against the
   exact all-pairs greedy scan it approximates, on the DISC-FinLLM sample + this project's SFT data
   + crafted near-duplicates (a few characters edited). Figures: speed-up and recall (the
   precision is 1 by construction: every removal is verified).
2. BM25: this project's index (``zhilu.synth.retrieval.BM25Index``, Lucene idf) against
   ``rank_bm25.BM25Okapi`` on the same jieba tokens of ``data/knowledge``; queries are the first user
   turns of ``data/finance_sft``. Figures: time ratio and top-1 agreement (the idf formulas differ).
3. Generation: ``LocalLM.generate`` with ``batch_size`` B against one prompt at a time
   (``--size tiny|small``, ``--device cpu|cuda``). Figure: the speed-up.

    python bench/synth_data.py                      # CPU
    python bench/synth_data.py --device cuda --size small --prompts 64
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def near_dup_rows(shared: Path, n_dups: int, seed: int = 0) -> list[dict]:
    from zhilu.data.formats import iter_rows

    rows = []
    for f in sorted((shared / "disc-finllm-sft-sample").glob("*.json")):
        rows += [{"messages": m} for m in iter_rows(f, "alpaca")]
    rows += [{"messages": m} for m in iter_rows(ROOT / "data" / "finance_sft" / "train.jsonl", "chat")]
    rng = random.Random(seed)
    long = [r for r in rows if len(r["messages"][-1]["content"]) >= 20]
    for _ in range(n_dups):  # copies with 1-3 characters inserted, deleted or replaced
        msgs = [dict(m) for m in rng.choice(long)["messages"]]
        a = msgs[-1]["content"]
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(a) or 1)
            a = a[:i] + rng.choice(["", "的", "，"]) + a[i + 1:]
        msgs[-1]["content"] = a
        rows.append({"messages": msgs})
    return rows


def bench_near_dedup(shared: Path, n_dups: int, threshold: float) -> list[tuple[str, str]]:
    from zhilu.data.clean import NearDedup, Record, char_ngrams, jaccard

    rows = near_dup_rows(shared, n_dups)
    recs = [Record("bench", i + 1, r, "chat") for i, r in enumerate(rows)]
    t = time.perf_counter()
    kept, removed = NearDedup(threshold=threshold)(recs)
    t_lsh = time.perf_counter() - t
    t = time.perf_counter()
    grams = [char_ngrams(r.full, 5) for r in recs]
    kept_b: list[int] = []
    removed_b = set()
    for i, g in enumerate(grams):  # the exact greedy scan: compare with every kept row
        if any(jaccard(g, grams[j]) >= threshold for j in kept_b):
            removed_b.add(i)
        else:
            kept_b.append(i)
    t_all = time.perf_counter() - t
    removed_lsh = {rm.record.line - 1 for rm in removed}
    recall = len(removed_lsh & removed_b) / max(1, len(removed_b))
    return [("near-dedup rows", str(len(rows))),
            ("removed: exact scan / LSH", f"{len(removed_b)} / {len(removed_lsh)}"),
            ("near-dedup recall (LSH vs exact)", f"{recall:.3f}"),
            ("near-dedup precision", f"{len(removed_lsh & removed_b) / max(1, len(removed_lsh)):.3f}"),
            ("near-dedup time: exact scan / LSH", f"{t_all / t_lsh:.1f}x ({t_all:.2f}s / {t_lsh:.2f}s)")]


def bench_bm25() -> list[tuple[str, str]]:
    from rank_bm25 import BM25Okapi

    from zhilu.data.formats import iter_rows
    from zhilu.synth.retrieval import BM25Index, load_folder, tokenize_zh

    passages = load_folder(ROOT / "data" / "knowledge")
    docs = [tokenize_zh(f"{p.title}\n{p.text}") for p in passages]
    queries = [tokenize_zh(next(m["content"] for m in d if m["role"] == "user"))
               for d in iter_rows(ROOT / "data" / "finance_sft" / "train.jsonl", "chat")]
    ours, theirs = BM25Index(docs), BM25Okapi(docs)
    t = time.perf_counter()
    top_ours = [ours.top(q, 1) for q in queries]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    top_theirs = [max(range(len(docs)), key=lambda i, s=theirs.get_scores(q): (s[i], -i)) for q in queries]
    t_theirs = time.perf_counter() - t
    agree = sum(bool(o) and o[0][0] == th for o, th in zip(top_ours, top_theirs)) / len(queries)
    return [("bm25 passages / queries", f"{len(docs)} / {len(queries)}"),
            ("bm25 top-1 agreement with rank_bm25", f"{agree:.3f}"),
            ("bm25 query time: rank_bm25 / ours", f"{t_theirs / t_ours:.1f}x")]


def bench_generation(size: str, device: str, n_prompts: int, batch_size: int, new_tokens: int) -> list[tuple[str, str]]:
    import torch

    from bench.common import model_config
    from zhilu.model import ModelBuilder
    from zhilu.model.runtime import load_model
    from zhilu.synth.generators import LocalLM

    cfg = {**model_config(size), "vocab_size": None}
    builder = ModelBuilder(config=cfg, dtype="bfloat16" if device == "cuda" else "float32")
    model, tok = load_model(builder, device)
    prompts = [[{"role": "user", "content": f"第{i}个问题：" + "信用卡分期的真实年化利率怎么算？" * (1 + i % 4)}]
               for i in range(n_prompts)]
    rates = {}
    for bs in (1, batch_size):
        lm = LocalLM.from_objects(model, tok, batch_size=bs, do_sample=False)
        list(lm.generate(prompts[:bs], max_new_tokens=4))  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        list(lm.generate(prompts, max_new_tokens=new_tokens))
        if device == "cuda":
            torch.cuda.synchronize()
        rates[bs] = n_prompts / (time.perf_counter() - t)
    return [(f"generation ({size}, {device}, {new_tokens} new tokens): prompts/s at batch 1 / {batch_size}",
             f"{rates[1]:.1f} / {rates[batch_size]:.1f}"),
            (f"generation speed-up, batch {batch_size} vs 1", f"{rates[batch_size] / rates[1]:.1f}x")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--near-dups", type=int, default=300)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--size", default="tiny", choices=("tiny", "small", "1b"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--skip", nargs="*", default=[], choices=("dedup", "bm25", "generation"))
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    rows: list[tuple[str, str]] = []
    if "dedup" not in args.skip:
        rows += bench_near_dedup(Path(args.shared), args.near_dups, args.threshold)
    if "bm25" not in args.skip:
        rows += bench_bm25()
    if "generation" not in args.skip:
        rows += bench_generation(args.size, args.device, args.prompts, args.batch_size, args.new_tokens)
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    print("-" * (width + 30))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows), ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
