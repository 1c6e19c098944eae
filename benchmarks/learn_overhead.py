"""Benchmark: the cost of learning groups, per training step (issue 3, acceptance 4).

For each model, in one process and on one model, it times a *plain* step (cross-entropy, SGD
with momentum) and a *split* step (the same plus R_W, R_D and R_E over the assignments of the
scope, and the assignments' Adam step), interleaved so that load on the machine hits both alike.
It prints the median milliseconds of each and their ratio; the goal is <= 1.25. Batch 32, CPU,
random inputs (data loading is the same for both and is left out).

Scopes: resnet20 with G=4 over its last stage and fc (the acceptance run's), wrn16_8 with the
paper's ``deep`` preset (G=2 over stages 2 and 3), 100 classes.

Run: ``python benchmarks/learn_overhead.py [--reps N] [--threads T] [--models a,b]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from splitc.graph.analysis import analyse
from splitc.learn.assign import AssignmentSet, splitnet_loss, splitnet_regularizers
from splitc.learn.loop import LearnConfig
from splitc.learn.optim import make_optimizers
from splitc.graph.scope import make_spec

CASES = {  # model -> (num_classes, scope options for make_spec)
    "resnet20": (20, {"groups": "4", "split_depth": "7"}),
    "wrn16_8": (100, {"groups": "2", "preset": "deep"}),
}
BATCH = 32


def make_steps(model: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """The plain step and the split step, sharing one model and one batch."""
    classes, scope = CASES[model]
    spec = make_spec(scope["groups"], None, scope.get("split_depth"), scope.get("preset"), model)
    analysis = analyse(model, spec, classes, (3, 32, 32))
    gm, ir = analysis.gm, analysis.ir
    gm.train()
    aset = AssignmentSet.create(ir, analysis.scope, "softmax")
    opts = make_optimizers(LearnConfig(model=model), gm, aset)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=gen)
    y = torch.randint(0, classes, (BATCH,), generator=gen)

    def plain() -> None:
        loss = F.cross_entropy(gm(x), y)
        opts["weights"].zero_grad(set_to_none=True)
        loss.backward()
        opts["weights"].step()

    def split() -> None:
        ce = F.cross_entropy(gm(x), y)
        loss = splitnet_loss(ce, splitnet_regularizers(gm, ir, analysis.scope, aset))
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts.values():
            opt.step()

    return plain, split


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def measure(model: str, reps: int) -> tuple[float, float]:
    """Median ms of the plain and the split step; the order alternates every repetition."""
    plain, split = make_steps(model)
    for _ in range(2):  # warm up allocator and autograd caches
        plain()
        split()
    times: dict[str, list[float]] = {"plain": [], "split": []}
    for rep in range(reps):
        pair = [("plain", plain), ("split", split)]
        for name, fn in pair if rep % 2 == 0 else pair[::-1]:
            times[name].append(timed(fn))
    return statistics.median(times["plain"]), statistics.median(times["split"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed steps of each kind per model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated, from " + ", ".join(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {BATCH}, CPU, {args.threads} thread(s), {args.reps} interleaved steps each")
    print(f"{'model':10s} {'plain ms':>9s} {'split ms':>9s} {'ratio':>6s}")
    for model in args.models.split(","):
        plain_ms, split_ms = measure(model, args.reps)
        print(f"{model:10s} {plain_ms:9.1f} {split_ms:9.1f} {split_ms / plain_ms:6.3f}", flush=True)


if __name__ == "__main__":
    main()
