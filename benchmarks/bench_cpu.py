"""CPU latency of the split pipeline against the unsplit masked model: WRN-16-8 ``deep`` (G=2,
FLOPs ratio 0.68), batches 1, 32 and 128, with ``splitc.deploy.runtime.bench`` (interleaved in one
process, same input, warm-up and repetitions; medians). Two placements:

* ``cpu``: every subgraph on the CPU, so the runtime runs the fused graph in one session;
* ``cpu,cpu``: two CPU "devices", one session per subgraph, branches concurrently.

Prints a markdown table of ratios (split / unsplit). The 1-minute load average is printed
beside it: on a shared machine another process's load shows up as noise in the ratios.

    python benchmarks/bench_cpu.py [--work DIR] [--batches 1,32,128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

REPS = {1: 200, 32: 30, 128: 8}   # repetitions per round; warm-up is 5 (2 at batch 128)


def artifact(work: Path) -> Path:
    """The wrn16_8 deep split (random balanced groups, no training) exported for the CPU."""
    from splitc.deploy.export import export_split
    from splitc.graph.scope import PRESETS
    from splitc.compile.split_run import random_split

    split_dir, art_dir = work / "wrn16_8-deep-split", work / "wrn16_8-deep-onnx"
    if not (split_dir / "split.json").is_file():
        random_split("wrn16_8", PRESETS["wrn16_8"]["deep"], split_dir)
    if not (art_dir / "manifest.json").is_file():
        export_split(split_dir, art_dir, "cpu", progress=True)
    return art_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/splitc-bench", help="Where the split and artifact are kept.")
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--rounds", type=int, default=3, help="Benchmark rounds per cell (median of ratios).")
    args = parser.parse_args()
    from splitc.deploy.runtime import bench, cpu_cores

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    art = artifact(work)
    print(f"wrn16_8 deep, {cpu_cores()} cores, artifact {art}")
    print("| batch | placement | split ms | unsplit ms | ratio (median of rounds) | rounds | FLOPs ratio | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in map(int, args.batches.split(",")):
        for placement in ("cpu", "cpu,cpu"):
            reps = REPS.get(batch, 20)
            runs = [bench(art, batch, placement, warmup=5 if reps > 8 else 2, reps=reps) for _ in range(args.rounds)]
            ratio = statistics.median(r["ratio"] for r in runs)
            split_ms = statistics.median(r["split_ms"] for r in runs)
            unsplit_ms = statistics.median(r["unsplit_ms"] for r in runs)
            spread = " ".join(f"{r['ratio']:.3f}" for r in runs)
            print(f"| {batch} | {placement} ({runs[0]['strategy']}) | {split_ms:.2f} | {unsplit_ms:.2f} | "
                  f"**{ratio:.3f}** | {spread} | {runs[0]['flops_ratio']:.3f} | {os.getloadavg()[0]:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
