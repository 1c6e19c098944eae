"""Benchmark: reduced gradient on the simplex against softmax + SGD (docs/METHOD.md §2, §5).

Per column, three convex problems over the simplex with a known optimum ``d*``:
- interior:  min ½‖d − t‖², ``t`` inside the simplex (``d* = t``);
- boundary:  min ½‖d − t‖², ``t`` outside it (``d*`` = its projection, with zeros);
- vertex:    min ⟨c, d⟩ (``d*`` = the one-hot vertex of the smallest ``c``).

Both methods start from the same point and each gets its best learning rate from the same grid
(fewest steps to reach the tolerance, then the smallest final error). It prints the steps to
reach ``max|d − d*| < tol`` and the final error of each, and their ratio. It asserts nothing.

Run: ``python benchmarks/simplex_convergence.py [--steps N] [--tol T]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

from splitc.learn.simplex import (
    assignment_with_optimizer,
    project_to_simplex,
    uniform_init,
)

LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
Objective = Callable[[Tensor], Tensor]


def make_problem(kind: str, G: int, C: int, seed: int) -> tuple[Objective, Tensor]:
    """Return the objective (summed over columns) and its optimum ``d*`` of shape ``(G, C)``."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "interior":
        t = project_to_simplex(1.0 / G + 0.05 * torch.randn(G, C, generator=gen, dtype=torch.float64))
        t = (t + 0.02) / (t + 0.02).sum(0)  # strictly inside
        return (lambda d: 0.5 * (d - t).pow(2).sum()), t
    if kind == "boundary":
        t = 1.0 / G + 0.5 * torch.randn(G, C, generator=gen, dtype=torch.float64)
        return (lambda d: 0.5 * (d - t).pow(2).sum()), project_to_simplex(t)
    if kind == "vertex":
        c = torch.rand(G, C, generator=gen, dtype=torch.float64)
        opt = torch.zeros_like(c).scatter(0, c.argmin(0, keepdim=True), 1.0)
        return (lambda d: (c * d).sum()), opt
    raise ValueError(f"unknown problem {kind!r}")


def run(
    method: str, objective: Objective, optimum: Tensor, lr: float, steps: int, tol: float, stop_at_tol: bool
) -> tuple[int | None, float]:
    """Optimise from a fixed start; return (first step with error < tol or None, last error)."""
    gen = torch.Generator().manual_seed(0)
    d0 = uniform_init(*optimum.shape, noise=0.01, generator=gen, dtype=torch.float64)
    current, opt = assignment_with_optimizer(method, d0, lr)
    reached = None
    for step in range(1, steps + 1):
        opt.zero_grad()
        objective(current()).backward()
        opt.step()
        err = (current().detach() - optimum).abs().max().item()
        if reached is None and err < tol:
            reached = step
            if stop_at_tol:
                break
    return reached, err


def best_lr(
    method: str, objective: Objective, optimum: Tensor, steps: int, tol: float
) -> tuple[float, int | None, float]:
    """Sweep ``LR_GRID`` (best = fewest steps to tolerance, then smallest error), then rerun the
    best lr for the whole budget; return (lr, steps to tolerance or None, final error)."""
    results = []
    for lr in LR_GRID:
        reached, err = run(method, objective, optimum, lr, steps, tol, stop_at_tol=True)
        results.append((reached if reached is not None else steps + 1, err, lr))
    key, err, lr = min(results)
    if key <= steps:  # stopped early at the tolerance: finish the budget for the final error
        _, err = run(method, objective, optimum, lr, steps, tol, stop_at_tol=False)
    return lr, (key if key <= steps else None), err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    print(f"G={args.groups} C={args.nodes} tol={args.tol:g} max steps={args.steps} lr grid={LR_GRID}")
    header = f"{'problem':<9} {'method':<8} {'best lr':>8} {'steps':>7} {'final err':>10}"
    print(header + f" {'steps ratio (softmax/reduced)':>30}")
    for kind in ("interior", "boundary", "vertex"):
        objective, optimum = make_problem(kind, args.groups, args.nodes, seed=1)
        rows = {m: best_lr(m, objective, optimum, args.steps, args.tol) for m in ("reduced", "softmax")}
        for m, (lr, reached, err) in rows.items():
            shown = reached if reached else f">{args.steps}"
            ratio = "" if m == "reduced" else _ratio(rows["softmax"][1], rows["reduced"][1], args.steps)
            print(f"{kind:<9} {m:<8} {lr:>8g} {shown:>7} {err:>10.2e} {ratio:>30}".rstrip())


def _ratio(softmax_steps: int | None, reduced_steps: int | None, steps: int) -> str:
    """Steps ratio, as a lower bound (">") when softmax did not reach the tolerance."""
    if reduced_steps is None:
        return "n/a"
    if softmax_steps is None:
        return f">{steps / reduced_steps:.1f}"
    return f"{softmax_steps / reduced_steps:.1f}"


if __name__ == "__main__":
    main()
