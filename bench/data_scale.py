"""Data at scale: the tokenized store against today's in-memory path, 10k to 1M chat rows.

    python bench/data_scale.py                       # 10k, 100k, 1M rows (about 1 GB of JSONL and 1 GB of store at 1M)
    python bench/data_scale.py --sizes 2k,10k --legacy-sizes 2k --work /tmp/ds   # a smoke run

Rows are the shipped finance dialogues (data/finance_sft/train.jsonl) repeated, each copy numbered so
rows differ. Every measurement runs in a fresh process (``worker`` sub-command):

- ``prep``: first run, an empty cache: the store built with ``data.num_proc`` 1 and 2 (time, rows/s);
- ``hit``: second run: ``prepare_data`` + ``setup`` on the built store (the cache-hit data setup time),
  with packing: the time to pack every example (best-fit-decreasing on the length array);
- ``train``: ``train.py``'s recipe (tiny model, LoRA, 3 steps, 8 packed rows of 512 tokens: the same batch
  shape at every size, and every example packed at setup) from the store: peak RSS of the process,
  ``--train-repeats`` times (each a fresh process: the 3 training steps alone move the peak by tens of MB
  from run to run; the table gives the median and the range);
- ``legacy``: the same run through today's in-memory path (every example a Python list of ints, encoded
  at every start; ``LegacyDataModule`` below is the previous ``ChatDataModule.read``): setup time, peak RSS;
- ``clean``: ``python -m zhilu.data.clean`` (exact + MinHash dedup, 2 processes) on the rows: time, peak RSS.

Prints a markdown table and writes ``--out`` (JSON). Timings are wall-clock on whatever else the
machine is doing: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ZHILU_ROOT", str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

from zhilu.data.datamodule import ChatDataModule, ListDataset, PackedDataset  # noqa: E402
from zhilu.utils import resolvers  # noqa: E402,F401 - the configs' resolvers


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anon_rss_mb() -> float:
    """Resident anonymous memory now (heap: Python objects, arrays), without the store's file-backed pages,
    which the page cache shares between processes and can evict."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s.rstrip("km")) * mult)


def make_rows(n: int, path: Path) -> Path:
    """``n`` chat rows: the shipped dialogues repeated, the first user turn of copy ``k`` suffixed with ``k``."""
    if path.is_file():
        return path
    from zhilu.utils.jsonl import iter_jsonl  # lines end at \n only

    base = [row for _, row, _ in iter_jsonl(ROOT / "data" / "finance_sft" / "train.jsonl")]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            row = base[i % len(base)]
            k = i // len(base)
            if k:
                msgs = [dict(m) for m in row["messages"]]
                first = next(j for j, m in enumerate(msgs) if m["role"] == "user")
                msgs[first]["content"] = f"{msgs[first]['content']}（{k}）"
                row = {"messages": msgs}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def make_unique_rows(n: int, path: Path, seed: int = 0) -> Path:
    """``n`` chat rows that are not near duplicates of each other: each turn joins sentences drawn at
    random from the shipped dialogues (a question of 2, an answer of 4), so cleaning keeps nearly all of
    them and its near-dedup index grows with every row, the worst case for its memory."""
    if path.is_file():
        return path
    import random
    import re

    from zhilu.utils.jsonl import iter_jsonl

    pool = sorted({s for _, row, _ in iter_jsonl(ROOT / "data" / "finance_sft" / "train.jsonl")
                   for m in row["messages"] for s in re.split(r"(?<=[。！？；])|\n", m["content"]) if len(s) >= 8})
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for _ in range(n):
            row = {"messages": [{"role": "user", "content": "".join(rng.sample(pool, 2))},
                                {"role": "assistant", "content": "".join(rng.sample(pool, 4))}]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


class LegacyDataModule(ChatDataModule):
    """The in-memory path this project had before the store: read and encode every row into Python
    lists at every start, in every process (the previous ``ChatDataModule.read``/``setup``)."""

    def prepare_data(self) -> None:
        pass

    def setup(self, stage=None) -> None:
        from zhilu.data.encode import ChatEncoder
        from zhilu.data.formats import iter_rows

        if self.train_examples is not None:
            return
        t0 = time.perf_counter()
        enc = ChatEncoder(self.tokenizer, self.max_length, self.overlong)
        train = []
        for path, fmt in [(i.path, i.format) for i in self._sources(self.train_files)]:
            for n, row in enumerate(iter_rows(path, fmt, self.on_error, {})):
                ex = enc.sft(row, what=f"{path} row {n + 1}")
                if ex is not None:
                    train.append(ex)
        for i, ex in enumerate(train):
            ex.meta["id"] = i
        self.train_examples, self.val_examples = train, []
        self.train_set = PackedDataset(train, self.pack_length, self.seed) if self.packing else ListDataset(train)
        self.stats["train/examples"] = len(train)
        self.stats["setup_s"] = time.perf_counter() - t0


# --------------------------------------------------------------------------------- workers
def tokenizer():
    from zhilu.model import ModelBuilder

    return ModelBuilder(config={"hidden_size": 64}).load_tokenizer()  # the shipped tokenizer


def worker_prep(args) -> dict:
    dm = ChatDataModule(train_files=[args.data], tokenizer=tokenizer(), cache_dir=args.cache, num_proc=args.num_proc,
                        max_length=512)
    t0 = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - t0
    (st,) = dm._stores.values()
    return {"prep_s": seconds, "rows": st.meta["rows"], "rows_per_s": st.meta["rows"] / seconds,
            "tokens": st.meta["tokens"], "num_proc": st.meta["num_proc"], "peak_rss_mb": peak_rss_mb()}


def worker_hit(args) -> dict:
    import numpy as np

    from zhilu.data.packing import pack_bfd

    t0 = time.perf_counter()
    dm = ChatDataModule(train_files=[args.data], tokenizer=tokenizer(), cache_dir=args.cache, max_length=512)
    t1 = time.perf_counter()
    dm.prepare_data()
    dm.setup()
    t2 = time.perf_counter()
    lengths = np.asarray(dm.train_examples.lengths)
    t3 = time.perf_counter()
    rows = pack_bfd(lengths, 1024, seed=0)
    t4 = time.perf_counter()
    return {"hit_setup_s": t2 - t1, "tokenizer_load_s": t1 - t0, "examples": len(dm.train_examples),
            "pack_s": t4 - t3, "packed_rows": len(rows), "peak_rss_mb": peak_rss_mb()}


def worker_train(args, legacy: bool) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from zhilu.train.run import train

    out = Path(args.cache).parent / ("legacy_run" if legacy else "store_run")
    overrides = [f"data.train_files=[{args.data}]", "data.val_files=[]", f"data.cache_dir={args.cache}",
                 "data.batch_size=8", "data.max_length=512", "adapter=lora", "trainer.max_steps=3", "logger=csv",
                 # packed to full rows: every size trains on [8, 512] batches, so the peak compares the data
                 # path's memory, not which examples the shuffle happened to put in the first batches
                 "data.packing=true", "data.pack_length=512", "data.pad_to_multiple_of=512",
                 "callbacks.export.enabled=false", "callbacks.model_checkpoint=null", "validate_after_fit=false",
                 "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    if legacy:
        overrides.append("data._target_=bench.data_scale.LegacyDataModule")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    t0 = time.perf_counter()
    metrics = train(cfg)
    return {"train_run_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "anon_rss_mb": anon_rss_mb(),
            "train_loss": metrics.get("train_loss")}


def tree_rss_mb(root: int) -> float:
    """RSS of ``root`` and every process below it now, summed (pages two of them share count twice)."""
    parent, rss = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            status = (d / "status").read_text()
        except OSError:
            continue
        parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[int(d.name)] = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
    tree, grew = {root}, True
    while grew:
        below = {p for p, pp in parent.items() if pp in tree} - tree
        grew = bool(below)
        tree |= below
    return sum(rss.get(p, 0) for p in tree) / 1024


def worker_clean(args) -> dict:
    import threading

    from zhilu.data.clean import main as clean_main

    out = Path(args.cache).parent / "clean" / "clean.jsonl"
    peak, done = [0.0], threading.Event()

    def sample():  # the whole tree's RSS (main process and its --num-proc workers) every half second
        while not done.wait(0.5):
            peak[0] = max(peak[0], tree_rss_mb(os.getpid()))

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    report = clean_main([args.data, "--format", "chat", "--out", str(out), "--num-proc", str(args.num_proc or 2)])
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    return {"clean_s": seconds, "kept": report["rows_kept"], "read": report["rows_read"],
            "peak_rss_mb": max(peak_rss_mb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "tree_peak_rss_mb": peak[0]}


def run_worker(mode: str, **kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", mode]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def human(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("mode", choices=["prep", "hit", "train", "legacy", "clean"])
    w.add_argument("--data", required=True)
    w.add_argument("--cache", required=True)
    w.add_argument("--num-proc", type=int, default=None)
    p.add_argument("--sizes", default="10k,100k,1m")
    p.add_argument("--legacy-sizes", default="10k,100k")
    p.add_argument("--clean-sizes", default="1m")
    p.add_argument("--clean-unique-sizes", default="1m", help="also clean this many rows that are not near duplicates")
    p.add_argument("--np1-max", default="1m", help="largest size also prepared with 1 process (rows/s ratio)")
    p.add_argument("--train-repeats", type=int, default=5, help="fresh training processes per size (peak RSS)")
    p.add_argument("--work", default=str(ROOT / "logs" / "bench_data_scale"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.cmd == "worker":
        fn = {"prep": worker_prep, "hit": worker_hit, "train": lambda a: worker_train(a, False),
              "legacy": lambda a: worker_train(a, True), "clean": worker_clean}[args.mode]
        print(json.dumps(fn(args)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    legacy_sizes = {parse_size(s) for s in args.legacy_sizes.split(",") if s}
    clean_sizes = {parse_size(s) for s in args.clean_sizes.split(",") if s}
    clean_unique_sizes = {parse_size(s) for s in args.clean_unique_sizes.split(",") if s}
    results = []
    for n in [parse_size(s) for s in args.sizes.split(",")]:
        d = work / human(n)
        d.mkdir(exist_ok=True)
        data = make_rows(n, d / "rows.jsonl")
        row: dict = {"rows": n}
        for procs in ((1, 2) if n <= parse_size(args.np1_max) else (2,)):
            cache = d / f"cache_np{procs}"
            subprocess.run(["rm", "-rf", str(cache)], check=True)
            r = run_worker("prep", data=data, cache=cache, num_proc=procs)
            row[f"prep_np{procs}_s"], row[f"rows_per_s_np{procs}"] = r["prep_s"], r["rows_per_s"]
            row["tokens"] = r["tokens"]
            print(f"{human(n)}: prep num_proc={procs}: {r['prep_s']:.1f} s, {r['rows_per_s']:.0f} rows/s", flush=True)
        cache = d / "cache_np2"
        r = run_worker("hit", data=data, cache=cache)
        row.update(hit_setup_s=r["hit_setup_s"], pack_s=r["pack_s"], examples=r["examples"])
        print(f"{human(n)}: cache hit setup {r['hit_setup_s']:.2f} s, packing {r['pack_s']:.2f} s", flush=True)
        runs = [run_worker("train", data=data, cache=cache) for _ in range(args.train_repeats)]
        row["train_peak_rss_mb"] = [r["peak_rss_mb"] for r in runs]
        row["train_anon_rss_mb"] = [r["anon_rss_mb"] for r in runs]
        print(f"{human(n)}: train peak RSS {', '.join(f'{x:.0f}' for x in row['train_peak_rss_mb'])} MB "
              f"(anonymous at the end {', '.join(f'{x:.0f}' for x in row['train_anon_rss_mb'])} MB)", flush=True)
        if n in legacy_sizes:
            r = run_worker("legacy", data=data, cache=cache)
            row["legacy_peak_rss_mb"], row["legacy_anon_rss_mb"] = r["peak_rss_mb"], r["anon_rss_mb"]
            row["legacy_run_s"] = r["train_run_s"]
            print(f"{human(n)}: in-memory path: peak RSS {r['peak_rss_mb']:.0f} MB, run {r['train_run_s']:.1f} s",
                  flush=True)
        if n in clean_sizes:
            r = run_worker("clean", data=data, cache=cache, num_proc=2)
            row.update(clean_s=r["clean_s"], clean_peak_rss_mb=r["peak_rss_mb"], clean_kept=r["kept"],
                       clean_tree_peak_rss_mb=r["tree_peak_rss_mb"])
            print(f"{human(n)}: clean {r['clean_s']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB (largest process), "
                  f"{r['tree_peak_rss_mb']:.0f} MB (all its processes together)", flush=True)
        if n in clean_unique_sizes:
            unique = make_unique_rows(n, d / "unique_rows.jsonl")
            r = run_worker("clean", data=unique, cache=d / "unique_cache", num_proc=2)
            row.update(clean_unique_s=r["clean_s"], clean_unique_peak_rss_mb=r["peak_rss_mb"],
                       clean_unique_kept=r["kept"], clean_unique_tree_peak_rss_mb=r["tree_peak_rss_mb"])
            print(f"{human(n)} rows that are not near duplicates: clean {r['clean_s']:.0f} s, kept {r['kept']:,}, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (largest process), {r['tree_peak_rss_mb']:.0f} MB (all)",
                  flush=True)
        results.append(row)
        subprocess.run(["rm", "-rf", str(d / "cache_np1")], check=True)
    base = results[0]
    lines = ["| rows | tokens | prep 1 proc (s) | rows/s 1 proc | prep 2 procs (s) | rows/s 2 procs | 2 / 1 | "
             "cache-hit setup (s) | pack all (s) | train peak RSS (MB, median, range) | median vs smallest | "
             "in-memory path peak RSS (MB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        legacy = f"{r['legacy_peak_rss_mb']:,.0f}" if "legacy_peak_rss_mb" in r else "–"
        np1 = (f"{r['prep_np1_s']:.1f} | {r['rows_per_s_np1']:,.0f}" if "prep_np1_s" in r else "– | –")
        ratio = f"{r['rows_per_s_np2'] / r['rows_per_s_np1']:.2f}x" if "prep_np1_s" in r else "–"
        lines.append(f"| {human(r['rows'])} | {r['tokens']:,} | {np1} | "
                     f"{r['prep_np2_s']:.1f} | {r['rows_per_s_np2']:,.0f} | "
                     f"{ratio} | {r['hit_setup_s']:.2f} | {r['pack_s']:.2f} | "
                     f"{median(r['train_peak_rss_mb']):,.0f} ({min(r['train_peak_rss_mb']):,.0f}-"
                     f"{max(r['train_peak_rss_mb']):,.0f}) | "
                     f"{median(r['train_peak_rss_mb']) - median(base['train_peak_rss_mb']):+,.0f} | "
                     f"{legacy} |")
    print("\n".join(lines))
    big = results[-1]
    for key, procs in (("rows_per_s_np1", 1), ("rows_per_s_np2", 2)):
        if key in big:
            per_core = big[key] / procs
            print(f"per-core rate at {human(big['rows'])} rows ({procs} process{'es' if procs > 1 else ''}): "
                  f"{per_core:,.0f} rows/s -> the card's 20M rows on a 64-core node: "
                  f"{20e6 / (per_core * 64) / 60:.1f} min (linear scaling assumed)")
    for r in results:
        if "clean_s" in r:
            print(f"clean {human(r['rows'])} rows (exact + MinHash, 2 processes): {r['clean_s']:.0f} s, "
                  f"peak RSS {r['clean_peak_rss_mb']:,.0f} MB (largest process), "
                  f"{r['clean_tree_peak_rss_mb']:,.0f} MB (all together), kept {r['clean_kept']:,}")
        if "clean_unique_s" in r:
            print(f"clean {human(r['rows'])} rows that are not near duplicates: {r['clean_unique_s']:.0f} s, "
                  f"peak RSS {r['clean_unique_peak_rss_mb']:,.0f} MB (largest process), "
                  f"{r['clean_unique_tree_peak_rss_mb']:,.0f} MB (all together), kept {r['clean_unique_kept']:,}")
    out = Path(args.out) if args.out else work / "results.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
