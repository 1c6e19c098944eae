"""Wall time of ``splitc export`` on a resnet50 split (split from layer4, G=2, random balanced
groups, no finetune, 3x224x224), as a user runs it: a fresh process, imports included. Prints
each run's phases (rebuilding and checking the split from its directory, the ONNX exports, the
fused graph), the CPU seconds the export process used (user + system: a measure that another
process on a shared machine does not inflate much, unlike the wall time) and the 1-minute load
average.

    python benchmarks/export_speed.py [--work DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def split_dir(work: Path) -> Path:
    from splitc.graph.scope import ScopeSpec
    from splitc.compile.split_run import random_split

    folder = work / "resnet50-layer4-split"
    if not (folder / "split.json").is_file():
        random_split("resnet50", ScopeSpec((2,), split_from=("layer4",)), folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/splitc-bench")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = split_dir(work)
    splitc = [sys.executable, "-m", "splitc.cli"]
    print("| run | wall s | CPU s | export total s | seconds per pass | load avg |")
    print("|---|---|---|---|---|---|")
    for run in range(1, args.repeat + 1):
        out = work / "resnet50-onnx"
        shutil.rmtree(out, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(splitc + ["export", str(source), "--out", str(out), "--devices", "cpu", "--json"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if done.returncode:
            sys.exit(done.stderr)
        summary = json.loads(done.stdout)
        passes = ", ".join(f"{name} {sec:.1f}" for name, sec in summary["pass_seconds"].items())
        print(f"| {run} | **{wall:.1f}** | {cpu:.1f} | {summary['seconds']:.1f} | {passes} | "
              f"{os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
