"""An experiment, not a splitc option: the refit's weight norms and the finetune's step size.

    .venv/bin/python benchmarks/refit_norm.py TEACHER.pt --data D --groups G --epochs E --seed S
        --target none|cut|teacher [--out DIR] [--transplant]

The refit makes each cut layer reproduce the dense layer's output from a quarter of its inputs
(G = 4), so its kept weights grow: on Fashion-MNIST seed 0 the refit ``layer3`` convs hold
1.2-1.4x the norm of the teacher's whole layer, about 2.4x the norm of the weights the cut
kept. A conv followed by BatchNorm computes the same function at any scale of its weights, but
SGD's step moves it by lr / |w|^2 (weight decay aside): the refit layers train at a fraction of
the step pruning's layers get (whose kept weights are a subset of the teacher's, smaller than
the teacher's layer). This rescales, after the refit, each output channel of every refit conv
that feeds a BatchNorm to the norm of that channel as cut (``cut``: the teacher's kept weights)
or in the teacher (``teacher``: all its weights), and scales the BatchNorm's running mean and
variance with it, so the network computes the same function (up to BatchNorm's eps) and only
the step size changes. ``none`` is learn unchanged (it reproduces from_trained.py's oneshot row).

Runs ``learn --epochs 0`` (the refit patched), ``split``, ``finetune`` as from_trained.py's
``oneshot`` row does, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.fx as fx

import splitc.learn.grouping as grouping
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.compile.split_run import run_split
from splitc.learn.loop import LearnConfig, learn
from splitc.learn.refit import RIDGE, refit_cut


def conv_bn_pairs(gm: fx.GraphModule) -> dict[str, str]:
    """conv module -> the BatchNorm module that alone reads its output."""
    modules = dict(gm.named_modules())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], torch.nn.Conv2d) and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module" and isinstance(modules[str(user.target)], torch.nn.BatchNorm2d):
                pairs[str(node.target)] = str(user.target)
    return pairs


def row_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).norm(dim=1)


def patched_refit(target: str, record: dict):
    def refit(dense, masked, masks, batches, ridge=RIDGE, sources=None):
        modules, reference = dict(masked.named_modules()), dict(dense.named_modules())
        cut = {n: row_norms(modules[n].weight) for n in masks if n in modules}
        full = {n: row_norms(reference[n].weight) for n in masks if n in reference}
        report = refit_cut(dense, masked, masks, batches, ridge=ridge, sources=sources)
        if target == "none":
            return report
        for conv, bn in conv_bn_pairs(masked).items():
            if conv not in report.refit:
                continue
            w = modules[conv].weight
            goal = (cut if target == "cut" else full)[conv]
            if sources is not None and conv in sources and target == "teacher":
                goal = full[conv][sources[conv]]
            scale = (goal / row_norms(w).clamp_min(1e-12)).clamp_max(1.0 if target == "cut" else float("inf"))
            with torch.no_grad():
                w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype))
                if modules[conv].bias is not None:
                    modules[conv].bias.mul_(scale)
                norm = modules[bn]
                norm.running_mean.mul_(scale)
                norm.running_var.mul_(scale ** 2)
            record[conv] = round(float(scale.mean()), 4)
        return report
    return refit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher")
    parser.add_argument("--data", required=True)
    parser.add_argument("--groups", default="4")
    parser.add_argument("--split-from", default="layer3")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--target", choices=("none", "cut", "teacher"), required=True)
    parser.add_argument("--transplant", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    scales: dict[str, float] = {}
    grouping.refit_cut = patched_refit(args.target, scales)
    out = Path(args.out or tempfile.mkdtemp(prefix="refit-norm-"))
    result = learn(LearnConfig(model="resnet20", data=args.data, groups=args.groups, split_from=args.split_from,
                               weights=args.teacher, epochs=0, transplant=args.transplant, batch_size=64,
                               seed=args.seed, out=str(out / "run"), force=True), progress=False)
    run_split(out / "run", out / "split", force=True, accept_unlearned=True)
    tuned = finetune(FinetuneConfig(split_dir=str(out / "split"), data=args.data, seed=args.seed, force=True,
                                    epochs=args.epochs, batch_size=64, eval_every=0), progress=False)
    print(json.dumps({"teacher": args.teacher, "data": args.data, "groups": args.groups, "seed": args.seed,
                      "target": args.target, "transplant": args.transplant, "epochs": args.epochs,
                      "refit_val_acc": result.refit_val_acc, "scales": scales, "val_acc": tuned.val_acc,
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    sys.exit(main())
