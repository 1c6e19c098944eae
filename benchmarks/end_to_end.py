"""The end-to-end table at equal total epochs, several seeds (issue 4 acceptance 7; issue 13 part 3).

    .venv/bin/python benchmarks/end_to_end.py [--data synthetic] [--learn-epochs 10] [--warmup-epochs 3]
        [--finetune-epochs 10] [--groups 4] [--split-from layer3] [--seeds 0,1,2] [--rows all]
        [--out runs/e2e] [--jobs 2]

Rows (``--rows`` takes a comma list of their keys):

- ``baseline``: a plain resnet20 trained for learn + finetune epochs (no assignments);
- ``default``: SplitNet with ``splitc learn``'s defaults, then ``split`` and ``finetune``;
- ``learned``: the learned map (``--init-groups learned``), committed to balanced groups once decided;
- ``paper``: SplitNet with the paper's fully learned map (assignments trained to the last step,
  argmax harden: ``--no-commit``);
- ``cluster``: the default with ``--init-groups cluster`` (class groups from the warmed-up features);
- ``cut``: ``--init-groups cluster-cut`` (that clustering is the class map, channels placed by the
  trained weights, all committed at the end of the warm-up);
- ``random``: SplitNet-Random (``--assign random``, a fixed random balanced assignment);
- ``pruned`` and ``narrow``: non-split anchors at the split's params (``benchmarks/anchors.py``).

It prints, per row, params, FLOPs and the mean and standard deviation over the seeds of the
validation accuracy (and of the split's accuracy before finetuning), the seconds per run, and
the margins against SplitNet-Random and the baseline. Every number is measured in this run;
nothing is tuned here. ``--json-out`` keeps every run's row.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from splitc.graph.analysis import analyse
from splitc.graph.counting import count
from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.learn.loop import LearnConfig, learn
from splitc.learn.plain import fit_plain, train_epochs  # noqa: F401  (the benchmarks import them from here)
from splitc.graph.scope import make_spec
from splitc.compile.split_dir import load_split
from splitc.compile.split_run import run_split
from splitc.core.errors import SplitcError
from splitc.core.tables import human, table


def train_plain(args: argparse.Namespace, seed: int, progress: bool = True) -> dict:
    """The baseline: the same network trained plainly for learn + finetune epochs (:func:`fit_plain`)."""
    torch.manual_seed(seed)
    bundle = load_data(args.data, seed=seed)
    analysis = analyse(args.model, make_spec(str(args.groups), args.split_from), bundle.num_classes,
                       bundle.input_size)
    fit_plain(analysis.gm, bundle, args.learn_epochs + args.finetune_epochs, args.batch_size, args.lr, seed,
              progress=progress)
    base = count(analysis.ir).baseline
    return {"params": base.params, "flops": base.flops,
            "val_acc": accuracy(analysis.gm, bundle.val, torch.device("cpu")), "superclass_ari": None}


def split_net(args: argparse.Namespace, key: str, changes: dict, seed: int, progress: bool = True) -> dict:
    """learn -> split -> finetune; the split model's accuracy is taken before and after finetuning."""
    out = Path(args.out) / f"{key}-seed{seed}"
    result = learn(LearnConfig(model=args.model, data=args.data, groups=str(args.groups),
                               split_from=args.split_from, epochs=args.learn_epochs,
                               warmup_epochs=args.warmup_epochs, gamma_d_rise=args.gamma_d_rise,
                               batch_size=args.batch_size, lr=args.lr, seed=seed, out=str(out / "run"),
                               force=True, **changes), progress=progress)
    summary = run_split(out / "run", out / "split", force=True, accept_unlearned=True)
    bundle = load_data(args.data, seed=seed)
    split_before = accuracy(load_split(out / "split").model, bundle.val, torch.device("cpu"))
    tuned = finetune(FinetuneConfig(split_dir=str(out / "split"), data=args.data, epochs=args.finetune_epochs,
                                    batch_size=args.batch_size, seed=seed, force=True), progress=progress)
    return {"params": summary["params"], "flops": summary["flops"],
            "val_acc": tuned.val_acc, "split_val_acc_before_finetune": split_before,
            "dense_val_acc_after_learn": result.val_acc, "cut_energy": result.cut_energy,
            "superclass_ari": result.superclass_ari, "feature_ari": result.feature_ari, "learned": result.learned,
            "params_reduced_pct": summary["params_reduced_pct"], "max_rel_err": summary["max_rel_err"]}


# key -> (label, learn options); None: not a split row
ROWS: dict[str, tuple[str, dict | None]] = {
    "baseline": ("baseline (plain resnet20)", None),
    "default": ("SplitNet (splitc's default)", {}),
    "learned": ("SplitNet (learned map, committed balanced)", {"init_groups": "learned"}),
    "paper": ("SplitNet (paper: learned map, --no-commit)", {"init_groups": "learned", "commit": False}),
    "cluster": ("SplitNet (--init-groups cluster)", {"init_groups": "cluster"}),
    "cut": ("SplitNet (--init-groups cluster-cut)", {"init_groups": "cluster-cut"}),
    "random": ("SplitNet-Random (--assign random)", {"assign": "random"}),
    "pruned": ("pruned to the split's params (Torch-Pruning)", None),
    "narrow": ("narrow resnet20 at the split's params", None),
}


def run_row(args: argparse.Namespace, key: str, seed: int, threads: int, progress: bool) -> dict:
    """One run of one row, timed; a worker process runs it with ``threads`` torch threads."""
    from anchors import anchor_row

    torch.set_num_threads(threads)
    started = time.perf_counter()
    label, changes = ROWS[key]
    if key == "baseline":
        result = train_plain(args, seed, progress)
    elif key in ("pruned", "narrow"):
        result = anchor_row(args, key, seed, progress)
    else:
        try:
            result = split_net(args, key, changes, seed, progress)
        except SplitcError as exc:   # e.g. an empty group after the paper's argmax harden: a result, kept
            result = {"params": None, "flops": None, "val_acc": None, "error": str(exc)}
    return {"key": key, "method": label, **result, "seed": seed, "seconds": round(time.perf_counter() - started, 1)}


def run_rows(args: argparse.Namespace, keys: list[str], seeds: list[int]) -> list[dict]:
    """Every (row, seed), one after another, or ``--jobs`` at a time in spawned workers that split
    the cores between them. CPU runs repeat exactly only at the same torch thread count, so a
    ``--jobs 2`` table matches a sequential run with ``OMP_NUM_THREADS=1``, not one on all cores.
    Workers run without progress bars and report each run as it ends."""
    tasks = [(k, s) for s in seeds for k in keys]
    if args.jobs <= 1:
        return [run_row(args, k, s, torch.get_num_threads(), True) for k, s in tasks]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    results: dict[int, dict] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_row, args, k, s, threads, False): i for i, (k, s) in enumerate(tasks)}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"runs ({args.jobs} workers)"):
            results[futures[future]] = row = future.result()
            tqdm.write(f"{row['method']} seed {row['seed']}: val acc {row['val_acc']:.4f} ({row['seconds']:.0f} s)")
    return [results[i] for i in range(len(tasks))]


def summarise(runs: list[dict], keys: list[str]) -> list[dict]:
    """Per row: mean and standard deviation (over seeds) of each accuracy, mean seconds."""
    out = []
    for key in keys:
        mine = [r for r in runs if r["key"] == key]
        def stat(field: str) -> tuple[float, float] | None:
            values = [r[field] for r in mine if r.get(field) is not None]
            return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
        done = [r for r in mine if r.get("val_acc") is not None] or mine
        out.append({"key": key, "method": mine[0]["method"], "seeds": len(mine), "params": done[0]["params"],
                    "flops": done[0]["flops"], "failed": [r["error"] for r in mine if r.get("error")],
                    "val_acc": stat("val_acc"),
                    "split_before": stat("split_val_acc_before_finetune"), "ari": stat("superclass_ari"), "feature_ari": stat("feature_ari"),
                    "seconds": statistics.fmean(r["seconds"] for r in mine)})
    return out


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
    parser.add_argument("--seeds", default="0,1,2", help="comma list; every row runs once per seed")
    parser.add_argument("--rows", default="all", help=f"comma list of {', '.join(ROWS)} (default all)")
    parser.add_argument("--out", default="runs/e2e")
    parser.add_argument("--json-out", default=None, help="write every run's row here (JSON)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, in worker processes")
    args = parser.parse_args()
    keys = list(ROWS) if args.rows == "all" else args.rows.split(",")
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    runs = run_rows(args, keys, seeds)
    rows = summarise(runs, keys)
    print(f"\n{args.model} on {args.data}, G={args.groups} from {args.split_from}, "
          f"{args.learn_epochs}+{args.finetune_epochs} epochs each, seeds {args.seeds} "
          f"({time.perf_counter() - started:.0f} s)")
    ms = lambda v: "" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    print(table(["method", "params", "FLOPs", "val acc (mean ± std)", "split acc before finetune",
                 "superclass ARI", "feature ARI", "runs failed", "seconds per run"],
                [[r["method"], human(r["params"]) if r["params"] else "", human(r["flops"]) if r["flops"] else "",
                  ms(r["val_acc"]), ms(r["split_before"]), ms(r["ari"]), ms(r["feature_ari"]), f"{len(r['failed'])}/{r['seeds']}",
                  f"{r['seconds']:.0f}"] for r in rows]))
    for r in rows:
        for error in r["failed"]:
            print(f"{r['method']} failed: {error}")
    by_key = {r["key"]: r for r in rows if r["val_acc"] is not None}
    for r in by_key.values():
        if r["key"] in ("baseline", "random"):
            continue
        for ref in ("random", "baseline"):
            if ref in by_key:
                gap = 100 * (r["val_acc"][0] - by_key[ref]["val_acc"][0])
                spread = 100 * (r["val_acc"][1] + by_key[ref]["val_acc"][1])
                print(f"{r['method']}: {gap:+.2f} pp against {by_key[ref]['method']} "
                      f"(sum of the two standard deviations {spread:.2f} pp)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "end_to_end.json").write_text(json.dumps({"runs": runs, "rows": rows}, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": runs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
