"""Prompt styles side by side: the same model scored with the official, OpenCompass and
lm-evaluation-harness prompts of a benchmark, with per-question agreement between the styles.

Loads the model once, scores every style on the same questions (letter log-likelihood), and prints
the benchmark's table per style, questions/s per style, and for each pair of styles the share of
questions where they predict the same letter and where both are right or both wrong.

    python bench/eval_styles.py                                    # C-Eval val, 0-shot, embedded default
    python bench/eval_styles.py --benchmark cmmlu --shots 5 --limit 20 --model-path RUN_DIR
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STYLES = ("official", "opencompass", "lm_eval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="ceval", choices=["ceval", "cmmlu"])
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="questions per subject (0: all)")
    ap.add_argument("--model-path", default="")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import os

    os.environ.setdefault("ZHILU_ROOT", str(ROOT))
    import torch
    from hydra import compose, initialize_config_dir

    from zhilu.eval.run import build
    from zhilu.eval.runner import evaluate
    from zhilu.eval.scoring import LetterLoglikScorer

    data_dir = args.data_dir or str(ROOT.parent.parent / "shared" / "data" / args.benchmark)
    if not Path(data_dir).is_dir():
        data_dir = str(ROOT.parent / "shared" / "data" / args.benchmark)
    base = [f"benchmark={args.benchmark}", f"benchmark.data_dir={data_dir}", f"benchmark.shots={args.shots}"]
    if args.limit:
        base.append(f"benchmark.limit={args.limit}")
    if args.model_path:
        base.append(f"model.path={args.model_path}")
    results, rates = {}, {}
    model = tok = name = None
    for style in STYLES:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("eval", overrides=[*base, f"benchmark.prompt_style={style}"])
        bench = build(cfg.benchmark)
        if model is None:
            builder = build(cfg.model)
            tok = builder.load_tokenizer()
            model = builder.build(tok, device_type=args.device.split(":")[0]).to(args.device).eval()
            name = builder.path or builder.name
            LetterLoglikScorer(batch_size=4)(model, tok, [[tok.bos_token_id or 0] * 64] * 8)  # warm-up
        t = time.perf_counter()
        res = evaluate(bench, model, tok, LetterLoglikScorer(batch_size=args.batch_size), model_name=style)
        rates[style] = len(res.records) / (time.perf_counter() - t)
        results[style] = res
        table = bench.table
    n = len(results["official"].records)
    print(f"{args.benchmark} ({n} questions, {args.shots}-shot), model {name} on {args.device}, "
          f"{torch.get_num_threads()} threads, letter log-likelihood, batch {args.batch_size}")
    print("| prompt style | " + " | ".join(table) + " | questions/s | shots dropped |")
    print("|---|" + "---:|" * (len(table) + 2))
    for style in STYLES:
        g = results[style].groups
        cells = " | ".join("-" if g.get(v) is None else f"{g[v]:.2f}" for v in table.values())
        print(f"| {style} | {cells} | {rates[style]:.1f} | {results[style].stats['dropped_shots']} |")
    print()
    print("| styles | same prediction | same correctness | both right |")
    print("|---|---:|---:|---:|")
    for a, b in itertools.combinations(STYLES, 2):
        ra, rb = results[a].records, results[b].records
        assert [(x["subject"], x["id"]) for x in ra] == [(x["subject"], x["id"]) for x in rb]
        same = sum(x["pred"] == y["pred"] for x, y in zip(ra, rb))
        same_c = sum(x["correct"] == y["correct"] for x, y in zip(ra, rb))
        both = sum(bool(x["correct"] and y["correct"]) for x, y in zip(ra, rb))
        print(f"| {a} vs {b} | {100 * same / n:.1f}% | {100 * same_c / n:.1f}% | {100 * both / n:.1f}% |")
    for style in STYLES:
        preds = [r["pred"] for r in results[style].records]
        top = max(set(preds), key=preds.count)
        print(f"{style}: most frequent answer {top} ({100 * preds.count(top) / n:.1f}% of questions)")


if __name__ == "__main__":
    main()
