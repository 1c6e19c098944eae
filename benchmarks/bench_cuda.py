"""The split pipeline on every visible GPU against the unsplit model: WRN-16-8 ``deep`` (G=2).

For each GPU ``cuda:i`` alone (the fused graph in one CUDA session) and, with two or more GPUs,
for all of them (one session per subgraph, branches on different GPUs), prints median
latencies and ``ratio = split / unsplit`` at each batch size. Needs onnxruntime-gpu and a GPU
that torch sees; on a host without one it says so and exits 0.

    python benchmarks/bench_cuda.py [--work DIR] [--batches 1,32,128] [--reps 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/splitc-bench-cuda")
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    import onnxruntime as ort
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        print("no GPU visible to torch: nothing to benchmark (the CUDA path is unit-tested with a "
              "mocked session factory in tests/test_runtime.py)")
        return
    print(f"{gpus} GPU(s): " + ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)))
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    from splitc.deploy.export import export_split
    from splitc.deploy.runtime import bench
    from splitc.graph.scope import PRESETS
    from splitc.compile.split_run import random_split

    work = Path(args.work)
    split_dir, art_dir = work / "wrn16_8-deep-split", work / "wrn16_8-deep-onnx"
    if not (split_dir / "split.json").is_file():
        random_split("wrn16_8", PRESETS["wrn16_8"]["deep"], split_dir)
    if not (art_dir / "manifest.json").is_file():
        export_split(split_dir, art_dir, "auto", progress=True)
    placements = [f"cuda:{i}" for i in range(gpus)] + (["auto"] if gpus > 1 else [])
    print("| devices | batch | split ms | unsplit ms | ratio | FLOPs ratio | strategy |")
    print("|---|---|---|---|---|---|---|")
    for devices in placements:
        for batch in map(int, args.batches.split(",")):
            r = bench(art_dir, batch, devices, warmup=10, reps=args.reps)
            print(f"| {','.join(r['devices'])} | {batch} | {r['split_ms']:.3f} | {r['unsplit_ms']:.3f} | "
                  f"**{r['ratio']:.3f}** | {r['flops_ratio']:.3f} | {r['strategy']} |", flush=True)


if __name__ == "__main__":
    main()
