"""The from-trained table (issue 26): every row starts from the same trained resnet20.

    .venv/bin/python benchmarks/from_trained.py [--data synthetic:families] [--groups-list 2,4]
        [--teacher-epochs 20] [--post-epochs 6] [--learn-epochs 3] [--seeds 0,1,2] [--jobs 2]
        [--rows all (all but classifier, oneshot+kd-soft)] [--out runs/from_trained] [--json-out docs/from_trained-families.json]
        [--merge OTHER.json ...] [--report-only]      (--data shapes: the tests' PNG ImageFolder, written under --out)

Per seed, one plain resnet20 is trained once (the teacher, ``end_to_end.fit_plain``) and saved;
then, per G, every row spends the same ``--post-epochs`` of training steps after the teacher and
the compressed rows have the split's params:

- ``default`` / ``default+kd`` (the default before this table; the key kept for the JSON):
  ``splitc learn --weights teacher --epochs 3`` (R_W clears the cut for ``--learn-epochs``),
  ``split``, then ``finetune`` for the rest, without / with ``--distill``;
- ``oneshot`` (+kd, +kd-soft): the default from trained weights, ``learn --epochs 0``: the groups
  cut at once from the teacher and every post epoch spent in finetune (the authors' ImageNet
  practice); +kd-soft: distilled at T 2, a 0.5 instead of the common T 4, a 0.9;
- ``classifier`` (+kd): ``default`` with the classes grouped by the classifier's rows;
- ``random-oneshot`` (+kd): SplitNet-Random, cut at once, every post epoch in finetune;
- ``random`` / ``random+kd``: the same with SplitNet-Random (``--assign random``) from the teacher;
- ``pruned`` / ``pruned+kd``: the teacher pruned by Torch-Pruning (L2 magnitude, DepGraph-coupled,
  its ``--split-from`` region, ``anchors.prune_to``) to the split's params, then finetuned with
  finetune's optimiser (SGD lr 0.01, Nesterov, wd 5e-4, cosine) without / with distillation;
- ``narrow``: resnet20 at the split's params trained from scratch for teacher + post epochs;
- ``scratch``: the split architecture itself (the default row's split model, re-initialised)
  trained from scratch for teacher + post epochs: the control of Liu et al. 2019;
- ``e2e``: today's from-scratch path (learn, split, finetune at their default budgets, no teacher),
  run in the same pool as the rows above: the wall time the from-trained path is compared with.

It prints per row the mean ± std over the seeds of the final accuracy, of the one-shot split
(groups committed, nothing cleared) and of the split after clearing, and the seconds per run
(learn + split + finetune for the split rows); the margins the issue's acceptance reads. Every
number is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from splitc.compile.distill import DEFAULT_ALPHA, DEFAULT_T, distill_loss
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.compile.split_dir import load_split, read_meta
from splitc.compile.split_run import run_split
from splitc.core.tables import table
from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.data.sizes import choose_input_size
from splitc.graph import zoo
from splitc.learn.loop import LearnConfig, learn

CPU = torch.device("cpu")
SOFT_KD = (2.0, 0.5)   # a second distillation setting beside the common (DEFAULT_T, DEFAULT_ALPHA)
ROWS = {
    "default": "splitc from the teacher, R_W clears the cut (learn --epochs 3)",
    "default+kd": "splitc from the teacher, R_W clears the cut, --distill",
    "classifier": "splitc, classes grouped by the classifier's rows",
    "classifier+kd": "splitc, classes by the classifier's rows, --distill",
    "oneshot": "splitc default from the teacher: one-shot (learn --epochs 0)",
    "oneshot+kd": "splitc default from the teacher: one-shot, --distill",
    "random": "SplitNet-Random from the teacher, R_W clears the cut",
    "random+kd": "SplitNet-Random from the teacher, R_W clears the cut, --distill",
    "random-oneshot": "SplitNet-Random from the teacher, one-shot",
    "random-oneshot+kd": "SplitNet-Random from the teacher, one-shot, --distill",
    "oneshot+kd-soft": f"splitc default from the teacher: one-shot, --distill-t {SOFT_KD[0]:g} --distill-alpha {SOFT_KD[1]:g}",
    "pruned": "Torch-Pruning from the teacher (L2, DepGraph)",
    "pruned+kd": "Torch-Pruning from the teacher, distilled",
    "narrow": "narrow resnet20 from scratch (teacher + post steps)",
    "scratch": "the split architecture from scratch (teacher + post steps)",
    "e2e": "splitc from scratch: learn, split, finetune at their defaults",
}


def data_of(args: argparse.Namespace, seed: int):
    """The data at the input size ``splitc learn`` picks for the model (an ImageFolder of 32x32
    images is read at resnet20's 32x32, not at the ImageFolder's 224x224 default)."""
    spec = zoo.resolve(args.model)
    size, _ = choose_input_size(args.data, spec.default_input_size, spec.source == "builtin")
    return load_data(args.data, size, seed=seed)


def teacher_path(args: argparse.Namespace, seed: int) -> Path:
    return Path(args.out) / f"teacher-seed{seed}.pt"


def train_teacher(args: argparse.Namespace, seed: int) -> dict:
    from end_to_end import fit_plain

    torch.manual_seed(seed)
    bundle = data_of(args, seed)
    model = zoo.build(args.model, bundle.num_classes)
    fit_plain(model, bundle, args.teacher_epochs, args.batch_size, args.lr, seed, progress=False)
    path = teacher_path(args, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {"seed": seed, "val_acc": accuracy(model, bundle.val, CPU)}


SPLITC = ("default", "classifier", "oneshot")     # splitc's own rows, compared with the anchors
SPLIT_ROWS = {"default": {}, "classifier": {"init_groups": "classifier-cut"}, "random": {"assign": "random"},
              "oneshot": {}, "random-oneshot": {"assign": "random"}}
ONESHOT = ("oneshot", "random-oneshot")   # learn --epochs 0: the cut made at once, every post epoch in finetune


def split_rows(args: argparse.Namespace, key: str, groups: int, seed: int) -> list[dict]:
    """learn from the teacher -> split -> finetune twice (plain, distilled) from the same split."""
    out = Path(args.out) / f"{key}-g{groups}-seed{seed}"
    started = time.perf_counter()
    learn_epochs = 0 if key in ONESHOT else args.learn_epochs
    result = learn(LearnConfig(model=args.model, data=args.data, groups=str(groups), split_from=args.split_from,
                               weights=str(teacher_path(args, seed)), epochs=learn_epochs, **SPLIT_ROWS[key],
                               batch_size=args.batch_size, seed=seed, out=str(out / "run"), force=True),
                   progress=False)
    summary = run_split(out / "run", out / "split", force=True, accept_unlearned=True)
    shared = time.perf_counter() - started
    bundle = data_of(args, seed)
    cleared = accuracy(load_split(out / "split").model, bundle.val, CPU)
    rows = []
    for distill in (False,) if args.no_kd else (False, True):
        folder = out / ("split-kd" if distill else "split")
        if distill:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(out / "split", folder)
        t0 = time.perf_counter()
        tuned = finetune(FinetuneConfig(split_dir=str(folder), data=args.data, seed=seed, force=True,
                                        epochs=args.post_epochs - learn_epochs,
                                        batch_size=args.batch_size,
                                        distill=distill), progress=False)
        rows.append({"key": key + ("+kd" if distill else ""), "groups": groups, "seed": seed,
                     "params": summary["params"], "flops": summary["flops"], "val_acc": tuned.val_acc,
                     "start_val_acc": result.start_val_acc, "oneshot_val_acc": result.oneshot_val_acc,
                     "cleared_val_acc": cleared, "cut_energy": result.cut_energy,
                     "superclass_ari": result.superclass_ari, "split_dir": str(folder),
                     "seconds": round(shared + time.perf_counter() - t0, 1),
                     "finetune_seconds": round(time.perf_counter() - t0, 1)})
    return rows


def e2e_row(args: argparse.Namespace, groups: int, seed: int) -> dict:
    """Today's from-scratch path, no teacher: ``splitc learn`` (random weights, its default budget),
    ``split``, ``finetune`` (its default epochs): the wall time the from-trained path is held to."""
    out = Path(args.out) / f"e2e-g{groups}-seed{seed}"
    started = time.perf_counter()
    result = learn(LearnConfig(model=args.model, data=args.data, groups=str(groups), split_from=args.split_from,
                               batch_size=args.batch_size, seed=seed, out=str(out / "run"), force=True),
                   progress=False)
    summary = run_split(out / "run", out / "split", force=True, accept_unlearned=True)
    tuned = finetune(FinetuneConfig(split_dir=str(out / "split"), data=args.data, seed=seed, force=True,
                                    batch_size=args.batch_size), progress=False)
    return {"key": "e2e", "groups": groups, "seed": seed, "params": summary["params"], "val_acc": tuned.val_acc,
            "oneshot_val_acc": result.oneshot_val_acc, "cleared_val_acc": result.masked_val_acc,
            "steps": result.steps + tuned.steps, "seconds": round(time.perf_counter() - started, 1)}


def soft_kd_row(args: argparse.Namespace, groups: int, seed: int) -> dict:
    """The one-shot row's split (before its finetune) finetuned with the second distillation setting."""
    out = Path(args.out) / f"oneshot-g{groups}-seed{seed}"
    folder = out / "split-kd-soft"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(out / "split", folder)
    started = time.perf_counter()
    tuned = finetune(FinetuneConfig(split_dir=str(folder), data=args.data, seed=seed, force=True,
                                    epochs=args.post_epochs, batch_size=args.batch_size,
                                    distill=True, distill_t=SOFT_KD[0], distill_alpha=SOFT_KD[1]), progress=False)
    seconds = round(time.perf_counter() - started, 1)   # the finetune alone: learn and split are the one-shot row's
    return {"key": "oneshot+kd-soft", "groups": groups, "seed": seed, "params": read_meta(folder)["report"]["params"],
            "val_acc": tuned.val_acc, "finetune_seconds": seconds, "seconds": seconds}


def finetune_dense(model: torch.nn.Module, bundle, epochs: int, args: argparse.Namespace, seed: int,
                   teacher: torch.nn.Module | None) -> None:
    """finetune's optimiser on a dense (pruned) model: SGD lr 0.01, Nesterov, wd 5e-4, cosine."""
    from end_to_end import train_epochs

    steps = epochs * max(1, len(bundle.train) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def distilled(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return distill_loss(logits, target, y, DEFAULT_T, DEFAULT_ALPHA)

    train_epochs(model, bundle, epochs, args.batch_size, seed, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps),
                 None if teacher is None else distilled)


def anchor_row(args: argparse.Namespace, key: str, groups: int, seed: int) -> dict:
    from anchors import narrow_widths, params, prune_to, split_params
    from end_to_end import fit_plain
    from splitc.models.resnet_cifar import CifarResNet

    torch.manual_seed(seed)
    started = time.perf_counter()
    bundle = data_of(args, seed)
    target = split_params(args.model, groups, args.split_from, bundle.num_classes, bundle.input_size)
    extra: dict = {}
    if key.startswith("pruned"):
        teacher = zoo.build(args.model, bundle.num_classes)
        teacher.load_state_dict(torch.load(teacher_path(args, seed), weights_only=True))
        model = prune_to(teacher, args.split_from, target, bundle.input_size)
        extra["oneshot_val_acc"] = accuracy(model, bundle.val, CPU)
        finetune_dense(model, bundle, args.post_epochs, args, seed, teacher.eval() if key.endswith("+kd") else None)
    elif key == "narrow":
        model = CifarResNet(20, bundle.num_classes, narrow_widths(target, bundle.num_classes))
        fit_plain(model, bundle, args.teacher_epochs + args.post_epochs, args.batch_size, args.lr, seed, progress=False)
    else:   # scratch: the default split's architecture, every layer re-initialised
        model = load_split(Path(args.out) / f"default-g{groups}-seed{seed}" / "split").model
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()
        fit_plain(model, bundle, args.teacher_epochs + args.post_epochs, args.batch_size, args.lr, seed, progress=False)
    return {"key": key, "groups": groups, "seed": seed, "params": params(model), "target_params": target,
            "val_acc": accuracy(model, bundle.val, CPU), "seconds": round(time.perf_counter() - started, 1), **extra}


def run_task(args: argparse.Namespace, task: tuple, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    kind, *rest = task
    if kind == "teacher":
        return [{"key": "teacher", **train_teacher(args, rest[0])}]
    key, groups, seed = rest
    if key in SPLIT_ROWS:
        return split_rows(args, key, groups, seed)
    if key == "e2e":
        return [e2e_row(args, groups, seed)]
    if key == "oneshot+kd-soft":
        return [soft_kd_row(args, groups, seed)]
    return [anchor_row(args, key, groups, seed)]


def run_all(args: argparse.Namespace, phases: list[list[tuple]]) -> list[dict]:
    """Each phase's tasks ``--jobs`` at a time (a phase waits for the one before: teachers, then
    the rows from them, then the long from-scratch rows; ``scratch`` reuses the default row's split)."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    results: list[dict] = []
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        for tasks in phases:
            futures = [pool.submit(run_task, args, t, threads) for t in tasks]
            for future in tqdm(as_completed(futures), total=len(futures), desc="runs"):
                for row in future.result():
                    results.append(row)
                    tqdm.write(f"{row['key']} G={row.get('groups', '-')} seed {row['seed']}: "
                               f"val acc {row['val_acc']:.4f} ({row.get('seconds', 0):.0f} s)")
                    dump(args, results)
    return results


def dump(args: argparse.Namespace, runs: list[dict]) -> None:
    path = Path(args.json_out or Path(args.out) / "from_trained.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"args": vars(args), "runs": runs, "rows": summarise(runs)}, indent=1))
    tmp.replace(path)


def stat(values: list[float]) -> list[float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for groups in sorted({r["groups"] for r in runs if "groups" in r}):
        for key in ROWS:
            mine = [r for r in runs if r.get("groups") == groups and r["key"] == key]
            if mine:
                out.append({"groups": groups, "key": key, "method": ROWS[key], "seeds": len(mine),
                            "params": mine[0]["params"], **{f: stat([r.get(f) for r in mine]) for f in (
                                "val_acc", "oneshot_val_acc", "cleared_val_acc")},
                            "seconds": statistics.fmean(r["seconds"] for r in mine)})
    return out


def report(runs: list[dict]) -> None:
    teachers = stat([r["val_acc"] for r in runs if r["key"] == "teacher"]
                    or list({r["seed"]: r["start_val_acc"] for r in runs if r["key"] == "default"}.values()))
    ms = lambda v: "" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    print(f"teacher (plain resnet20): {ms(teachers)}")
    rows = summarise(runs)
    print(table(["G", "method", "params", "val acc", "one-shot split", "split before finetune", "seconds per run"],
                [[r["groups"], r["method"], r["params"], ms(r["val_acc"]), ms(r["oneshot_val_acc"]),
                  ms(r["cleared_val_acc"]), f"{r['seconds']:.0f}"] for r in rows]))
    by = {(r["groups"], r["key"]): r for r in rows}
    for (g, key), r in by.items():
        kd = key[len(key.split("+")[0]):]
        for ref in ("pruned" + kd, "random" + kd, "random-oneshot" + kd, "default" + kd):
            if key.split("+")[0] in SPLITC and key != ref and (g, ref) in by:
                o = by[(g, ref)]
                print(f"G={g} {key} vs {ref}: {100 * (r['val_acc'][0] - o['val_acc'][0]):+.2f} pp "
                      f"(sum of stds {100 * (r['val_acc'][1] + o['val_acc'][1]):.2f} pp)")
        if key.split("+")[0] in SPLITC and teachers:
            print(f"G={g} {key} vs teacher: {100 * (r['val_acc'][0] - teachers[0]):+.2f} pp")
        if key in SPLITC and (g, "e2e") in by:
            e2e = by[(g, "e2e")]
            print(f"G={g} {key} wall time / the from-scratch path's: {r['seconds'] / e2e['seconds']:.2f} "
                  f"({r['seconds']:.0f} s vs {e2e['seconds']:.0f} s; accuracy {r['val_acc'][0]:.4f} vs {e2e['val_acc'][0]:.4f})")


def markdown(runs: list[dict]) -> str:
    """The table for docs/: per G and row, every seed's accuracy, mean ± std, one-shot, after
    clearing, seconds per run."""
    ms = lambda v: "" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    lines = ["| G | method | params | val acc per seed | val acc | one-shot split | split before finetune | s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summarise(runs):
        seeds = sorted((x["seed"], x["val_acc"]) for x in runs if x.get("groups") == r["groups"] and x["key"] == r["key"])
        lines.append(f"| {r['groups']} | {r['method']} | {r['params']:,} | {' / '.join(f'{v:.4f}' for _, v in seeds)} | "
                     f"{ms(r['val_acc'])} | {ms(r['oneshot_val_acc'])} | {ms(r['cleared_val_acc'])} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from end_to_end import training_parser

    parser = training_parser(__doc__)
    parser.set_defaults(data="synthetic:families")
    parser.add_argument("--groups-list", dest="groups_list", default="2,4")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--post-epochs", type=int, default=6, help="training epochs after the teacher, every row")
    parser.add_argument("--learn-epochs", type=int, default=3, help="of the post epochs, learn's (split rows)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default="all", help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--out", default="runs/from_trained")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-kd", dest="no_kd", action="store_true",
                        help="split rows without their distilled twin (half the finetune time)")
    parser.add_argument("--merge", nargs="*", default=[], help="earlier runs' JSON (same teachers) to report with")
    parser.add_argument("--report-only", action="store_true", help="print the table of --merge and exit")
    args = parser.parse_args()
    earlier = [r for path in args.merge for r in json.loads(Path(path).read_text())["runs"]]
    done = {(r["key"], r.get("groups"), r["seed"]) for r in earlier}
    if args.report_only:
        report(earlier)
        print(markdown(earlier))
        return
    keys = ([k for k in ROWS if not k.startswith("classifier") and k != "oneshot+kd-soft"] if args.rows == "all"
            else args.rows.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    gs = [int(g) for g in args.groups_list.split(",")]
    wanted = {k.split("+")[0] for k in keys}
    split_keys = [k for k in SPLIT_ROWS if k in wanted]
    anchors = [k for k in ("pruned", "pruned+kd") if k in keys]
    late = [k for k in ("oneshot+kd-soft", "e2e", "narrow", "scratch") if k in keys]     # the long from-scratch controls last
    if args.data in ("shapes", "cifar"):    # the tests' PNG ImageFolder (or CIFAR folder) of drawn shapes
        from learn_unseen import data_spec
        args.data = data_spec(args.data, Path(args.out))
    phases = [[("teacher", s) for s in seeds if not teacher_path(args, s).is_file()],
              [("row", k, g, s) for g in gs for s in seeds for k in split_keys + anchors],
              [("row", k, g, s) for g in gs for s in seeds for k in late]]
    # rows already in a --merge file (same teachers) are not run again; a split row runs with its +kd twin
    phases = [[t for t in p if t[0] == "teacher" or (t[1], t[2], t[3]) not in done] for p in phases]
    started = time.perf_counter()
    runs = earlier + run_all(args, [p for p in phases if p])
    print(f"\n{args.model} on {args.data}, from {args.split_from}, teacher {args.teacher_epochs} epochs, "
          f"{args.post_epochs} epochs after it ({args.learn_epochs} learn + the rest finetune for the split rows), "
          f"seeds {args.seeds} ({time.perf_counter() - started:.0f} s)")
    report(runs)


if __name__ == "__main__":
    main()
