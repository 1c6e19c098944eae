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
import warnings


def stage_times(model_name: str) -> dict[str, float]:
    from splitc import zoo
    from splitc.channel_graph import build_channel_graph
    from splitc.counting import count
    from splitc.frontend import trace
    from splitc.scope import ScopeSpec, resolve_scope

    times = {}
    t = time.perf_counter()
    model = zoo.build(model_name)
    times["build"] = time.perf_counter() - t
    t = time.perf_counter()
    gm = trace(model)
    times["trace"] = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = build_channel_graph(gm, zoo.resolve(model_name).default_input_size)
    times["channel graph"] = time.perf_counter() - t
    t = time.perf_counter()
    scope = resolve_scope(ir, ScopeSpec((2,), split_depth=(2,)))
    count(ir, scope)
    times["scope + count"] = time.perf_counter() - t
    return times


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
