"""Checkpoint save cost: the project's AtomicCheckpointIO against Lightning's TorchCheckpointIO.

Each save runs in its own process (peak RSS is per process), alternating A B B A ... over
``--repeats`` rounds; the best time of each and the peak RSS above the checkpoint's own tensors are
reported, with ratios from one run. Lightning serialises the whole checkpoint into memory
(``io.BytesIO``) before writing it; the atomic writer streams into the file and also fsyncs it.

    python bench/checkpoint_io.py                   # 256 MiB checkpoint into ./logs/bench_ckpt
    python bench/checkpoint_io.py --mib 1024 --dir /scratch/ckpt --repeats 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time, torch
sys.path.insert(0, {src!r})
from lightning.pytorch.plugins.io import TorchCheckpointIO
from zhilu.train.checkpoint_io import AtomicCheckpointIO
n = {mib} * (1 << 20) // 4
ckpt = {{"state_dict": {{f"w{{i}}": torch.randn(n // 8) for i in range(8)}}, "global_step": 1}}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
io = AtomicCheckpointIO() if {which!r} == "atomic" else TorchCheckpointIO()
t0 = time.perf_counter()
io.save_checkpoint(ckpt, {path!r})
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": dt, "extra_rss_mib": (peak - base) / 1024}}))
"""


def run(which: str, mib: int, path: Path) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), mib=mib, which=which, path=str(path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256, help="checkpoint tensor size")
    p.add_argument("--dir", default=str(ROOT / "logs" / "bench_ckpt"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {"lightning": [], "atomic": []}
    for r in range(args.repeats):
        order = ("lightning", "atomic") if r % 2 == 0 else ("atomic", "lightning")
        for which in order:
            results[which].append(run(which, args.mib, out / f"{which}.ckpt"))
    best = {k: min(v, key=lambda x: x["seconds"]) for k, v in results.items()}
    extra = {k: max(x["extra_rss_mib"] for x in v) for k, v in results.items()}
    print(f"{args.mib} MiB checkpoint into {out}, best of {args.repeats}")
    print("| writer | seconds | MiB/s | peak RSS above the tensors (MiB) | time vs lightning |")
    print("|---|---:|---:|---:|---:|")
    for k in ("lightning", "atomic"):
        s = best[k]["seconds"]
        print(f"| {k} | {s:.2f} | {args.mib / s:,.0f} | {extra[k]:,.0f} | {s / best['lightning']['seconds']:.2f}x |")
    for f in out.glob("*.ckpt"):
        f.unlink()


if __name__ == "__main__":
    main()
