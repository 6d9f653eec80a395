"""Evaluation speed: CMMLU questions per second, one by one (the official loop) vs length-sorted batches.

Scores the same CMMLU prompts with the embedded default model (``conf/model/llama3_tiny.yaml``,
untrained) at each batch size, interleaving the batch sizes over ``--rounds`` rounds so that a
busy machine slows them alike, and prints one table: questions/s (median over rounds), the
ratio to batch size 1, and the largest letter log-prob difference to batch size 1 (agreement).

    python bench/eval.py                                    # CPU: 67 subjects x 4 questions, 0-shot
    python bench/eval.py --limit 10 --shots 5 --batch-sizes 1,16,64 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cmmlu"))
    ap.add_argument("--limit", type=int, default=4, help="questions per subject")
    ap.add_argument("--subjects", default="", help="comma-separated (default: all 67)")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--batch-sizes", default="1,8,16,32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()

    import os

    os.environ.setdefault("ZHILU_ROOT", str(ROOT))
    import torch
    from hydra import compose, initialize_config_dir

    from zhilu.eval.run import build
    from zhilu.eval.runner import build_prompts, context_length
    from zhilu.eval.scoring import LetterLoglikScorer
    from zhilu.model.runtime import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = ["benchmark=cmmlu", f"benchmark.data_dir={args.data_dir}", f"benchmark.limit={args.limit}",
                 f"benchmark.shots={args.shots}"]
    if args.subjects:
        overrides.append(f"benchmark.subjects=[{args.subjects}]")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    bench = build(cfg.benchmark)
    builder = build(cfg.model)
    model, tok = load_model(builder, args.device)
    prompts = [p.ids for _, p in build_prompts(bench, bench.load(), tok, context_length(model, bench))]
    n = len(prompts)
    lengths = [len(p) for p in prompts]
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    if 1 not in sizes:
        sizes.insert(0, 1)

    LetterLoglikScorer(batch_size=max(sizes))(model, tok, prompts[:8])  # warm-up
    times: dict[int, list[float]] = {b: [] for b in sizes}
    results = {}
    for _ in range(args.rounds):
        for b in sizes:
            scorer = LetterLoglikScorer(batch_size=b, max_batch_tokens=None)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            results[b] = scorer(model, tok, prompts)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[b].append(time.perf_counter() - t)

    ref = torch.tensor([s.letter_logprobs for s in results[1]])
    base = n / statistics.median(times[1])
    print(f"CMMLU {n} questions ({len(bench.selected)} subjects x <= {args.limit}, {args.shots}-shot), "
          f"prompt tokens mean {sum(lengths) / n:.0f} / max {max(lengths)}; model {builder.name} on {args.device}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds")
    print("| batch size | questions/s | vs one-by-one | max abs diff of letter log-probs | same predictions |")
    print("|---:|---:|---:|---:|---:|")
    for b in sizes:
        qps = n / statistics.median(times[b])
        got = torch.tensor([s.letter_logprobs for s in results[b]])
        same = sum(x.pred == y.pred for x, y in zip(results[b], results[1]))
        print(f"| {b} | {qps:.1f} | {qps / base:.2f}x | {(got - ref).abs().max().item():.1e} | {same}/{n} |")


if __name__ == "__main__":
    main()
