"""Baseline vs SplitNet vs SplitNet-Random at equal total epochs (issue 4, acceptance 7).

    .venv/bin/python benchmarks/end_to_end.py [--data synthetic] [--learn-epochs 10] [--warmup-epochs 3]
        [--finetune-epochs 10] [--groups 4] [--split-from layer3] [--out runs/e2e] [--jobs 2]

- baseline: a plain resnet20 trained for learn + finetune epochs (no assignments);
- SplitNet: ``splitc learn`` (softmax assignments, the three regularizers), ``split``, ``finetune``;
- SplitNet (--init-groups cluster): the same, the class groups started from the warmed-up features;
- SplitNet-Random: the same with ``--assign random`` (a fixed random balanced assignment).

It prints params, FLOPs, validation accuracy and superclass ARI for each, and the margin of
SplitNet over SplitNet-Random. Every number is measured in this run; nothing is tuned here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from splitc.graph.analysis import analyse
from splitc.graph.counting import count
from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.learn.loop import LearnConfig, learn
from splitc.graph.scope import make_spec
from splitc.compile.split_dir import load_split
from splitc.compile.split_run import run_split
from splitc.core.tables import human, table


def fit_plain(model: torch.nn.Module, bundle, epochs: int, batch_size: int, lr: float, seed: int,
              on_epoch: Callable[[int], None] | None = None, progress: bool = True) -> None:
    """Plain training: SGD (momentum 0.9, Nesterov), weight decay 1e-4, cosine over all steps.

    Learn's optimiser without its assignments, Nesterov momentum and its half-epoch lr warm-up;
    ``on_epoch(e)`` runs after each epoch ``e`` (1-based), for probes that watch the features form.
    """
    steps_per_epoch = max(1, len(bundle.train) // batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    with tqdm(total=total, desc="plain", disable=not progress) as bar:
        for epoch in range(epochs):
            model.train()
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if on_epoch is not None:
                on_epoch(epoch + 1)


def train_plain(args: argparse.Namespace, progress: bool = True) -> dict:
    """The baseline: the same network trained plainly for learn + finetune epochs (:func:`fit_plain`)."""
    torch.manual_seed(args.seed)
    bundle = load_data(args.data, seed=args.seed)
    analysis = analyse(args.model, make_spec(str(args.groups), args.split_from), bundle.num_classes,
                       bundle.input_size)
    fit_plain(analysis.gm, bundle, args.learn_epochs + args.finetune_epochs, args.batch_size, args.lr, args.seed,
              progress=progress)
    base = count(analysis.ir).baseline
    return {"method": "baseline", "params": base.params, "flops": base.flops,
            "val_acc": accuracy(analysis.gm, bundle.val, torch.device("cpu")), "superclass_ari": None}


def split_net(args: argparse.Namespace, assign: str, init_groups: str = "learned", progress: bool = True) -> dict:
    """learn -> split -> finetune; the split model's accuracy is taken before and after finetuning."""
    name = {"random": "SplitNet-Random"}.get(assign, "SplitNet" if init_groups == "learned"
                                             else "SplitNet (--init-groups cluster)")
    out = Path(args.out) / (assign if init_groups == "learned" else f"{assign}-{init_groups}")
    result = learn(LearnConfig(model=args.model, data=args.data, groups=str(args.groups),
                               split_from=args.split_from, assign=assign, epochs=args.learn_epochs,
                               warmup_epochs=args.warmup_epochs, init_groups=init_groups,
                               gamma_d_rise=args.gamma_d_rise,
                               batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=str(out / "run")),
                   progress=progress)
    summary = run_split(out / "run", out / "split")
    bundle = load_data(args.data, seed=args.seed)
    split_before = accuracy(load_split(out / "split").model, bundle.val, torch.device("cpu"))
    tuned = finetune(FinetuneConfig(split_dir=str(out / "split"), data=args.data, epochs=args.finetune_epochs,
                                    batch_size=args.batch_size, seed=args.seed), progress=progress)
    return {"method": name, "params": summary["params"], "flops": summary["flops"],
            "val_acc": tuned.val_acc, "split_val_acc_before_finetune": split_before,
            "dense_val_acc_after_learn": result.val_acc, "cut_energy": result.cut_energy,
            "superclass_ari": result.superclass_ari, "feature_ari": result.feature_ari,
            "params_reduced_pct": summary["params_reduced_pct"], "max_rel_err": summary["max_rel_err"]}


ROWS = (("baseline", ""), ("softmax", "learned"), ("softmax", "cluster"), ("random", "learned"))


def run_row(args: argparse.Namespace, row: tuple[str, str], threads: int, progress: bool) -> dict:
    """One table row, timed; a worker process runs it with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    kind, init_groups = row
    result = train_plain(args, progress) if kind == "baseline" else split_net(args, kind, init_groups, progress)
    return {**result, "seconds": round(time.perf_counter() - started, 1)}


def run_rows(args: argparse.Namespace) -> list[dict]:
    """All rows, one after another, or ``--jobs`` at a time in spawned workers that split the
    cores between them. CPU runs repeat exactly only at the same torch thread count, so a
    ``--jobs 2`` table matches a sequential run with ``OMP_NUM_THREADS=1``, not one on all cores.
    Workers run without progress bars and report each row as it ends."""
    if args.jobs <= 1:
        return [run_row(args, row, torch.get_num_threads(), True) for row in ROWS]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    results: dict[int, dict] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_row, args, row, threads, False): i for i, row in enumerate(ROWS)}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"rows ({args.jobs} workers)"):
            results[futures[future]] = row = future.result()
            tqdm.write(f"{row['method']}: val acc {row['val_acc']:.4f} ({row['seconds']:.0f} s)")
    return [results[i] for i in range(len(ROWS))]


def training_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every training benchmark shares: model, data, scope and the plain optimiser."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--split-from", default="layer3")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main() -> None:
    parser = training_parser(__doc__)
    parser.add_argument("--learn-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=float, default=3.0)
    parser.add_argument("--gamma-d-rise", type=float, default=1.0, help="learn's --gamma-d-rise")
    parser.add_argument("--out", default="runs/e2e")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once, in worker processes")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run_rows(args)
    print(f"\n{args.model} on {args.data}, G={args.groups} from {args.split_from}, "
          f"{args.learn_epochs}+{args.finetune_epochs} epochs each ({time.perf_counter() - started:.0f} s)")
    opt = lambda v, fmt: "" if v is None else format(v, fmt)  # noqa: E731
    print(table(["method", "params", "FLOPs", "val acc", "split acc before finetune", "cut energy",
                 "superclass ARI", "seconds"],
                [[r["method"], human(r["params"]), human(r["flops"]), f"{r['val_acc']:.4f}",
                  opt(r.get("split_val_acc_before_finetune"), ".4f"), opt(r.get("cut_energy"), ".3f"),
                  opt(r["superclass_ari"], ".3f"), f"{r['seconds']:.0f}"] for r in rows]))
    base, random_row = rows[0]["val_acc"], rows[-1]["val_acc"]
    for r in rows[1:-1]:
        print(f"{r['method']}: {100 * (r['val_acc'] - random_row):+.2f} pp over SplitNet-Random, "
              f"{100 * (r['val_acc'] - base):+.2f} pp against the baseline")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "end_to_end.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
