"""Wall time of `splitc inspect resnet50` as a user runs it (a fresh process, imports included),
and the time of each stage inside one process. Prints; asserts nothing.

    python benchmarks/inspect_speed.py [MODEL] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def stage_times(model_name: str) -> dict[str, float]:
    """Seconds of building the model, then of each front-half pass (the pipeline's own timer)."""
    from splitc.graph import zoo
    from splitc.graph.analysis import analyse
    from splitc.graph.scope import ScopeSpec

    t = time.perf_counter()
    model = zoo.build(model_name)
    build = time.perf_counter() - t
    t = time.perf_counter()
    analysis = analyse(model_name, ScopeSpec((2,), split_depth=(2,)), model=model)
    total = time.perf_counter() - t
    passes = analysis.runner.report()
    return {"build": build, **passes, "count + rest": total - sum(passes.values())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="resnet50")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "splitc.cli", "inspect", args.model, "--split-depth", "2", "--groups", "2", "--json"]
    walls = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
    print(f"splitc inspect {args.model} (fresh process, imports included): "
          f"median {statistics.median(walls):.2f} s over {args.repeat} runs "
          f"(min {min(walls):.2f}, max {max(walls):.2f})")
    for stage, seconds in stage_times(args.model).items():
        print(f"  {stage:14s} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
