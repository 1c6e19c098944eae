"""The from-trained table: every row starts from the same trained resnet20.

    .venv/bin/python benchmarks/from_trained.py [--data synthetic:families] [--groups-list 2 4 2,2]
        [--split-from layer3] [--split-from-tree layer3,layer3.1]
        [--teacher-epochs 20] [--post-epochs 6] [--learn-epochs 3] [--seeds 0,1,2] [--jobs 2]
        [--rows all (all but classifier, oneshot+kd-soft)] [--out runs/from_trained] [--json-out docs/from_trained-families.json]
        [--merge OTHER.json ...] [--report-only]      (--data shapes: the tests' PNG ImageFolder, written under --out)

The Fashion-MNIST table (docs/RESULTS.md) ran ``--data fashion-mnist@1000 --teacher-epochs 15
--post-epochs 4 --learn-epochs 1 --groups-list 2 4 2,2 --split-from-tree layer2,layer3 --rows
oneshot,random-oneshot,pruned,pruned+kd --no-kd``.

Per seed, one plain resnet20 is trained once (the teacher, ``splitc.learn.plain.fit_plain``) and saved;
then, per G, every row spends the same ``--post-epochs`` of training steps after the teacher and
the compressed rows have the split's params:

- ``default`` / ``default+kd`` (the default before this table; the key kept for the JSON):
  ``splitc learn --weights teacher --epochs 3`` (R_W clears the cut for ``--learn-epochs``),
  ``split``, then ``finetune`` for the rest, without / with ``--distill``;
- ``oneshot`` (+kd, +kd-soft): the default from trained weights, ``learn --epochs 0``: the groups
  cut at once from the teacher and every post epoch spent in finetune (the authors' ImageNet
  practice); +kd-soft: distilled at T 2, a 0.5 instead of the common T 4, a 0.9;
- ``transplant``: the same with ``learn --transplant`` (each group's channels taken from those
  most important to its classes before the refit);
- ``classifier`` (+kd): ``default`` with the classes grouped by the classifier's rows;
- ``random-oneshot`` (+kd): SplitNet-Random, cut at once, every post epoch in finetune;
  ``random-transplant``: the same with ``--transplant``;
- ``random`` / ``random+kd``: the same with SplitNet-Random (``--assign random``) from the teacher;
- ``pruned`` / ``pruned+kd``: the teacher pruned by Torch-Pruning (L2 magnitude, DepGraph-coupled,
  its ``--split-from`` region, ``anchors.prune_to``) to the split's params, then finetuned with
  finetune's optimiser (SGD lr 0.01, Nesterov, wd 5e-4, cosine) without / with distillation;
- ``narrow``: resnet20 at the split's params trained from scratch for teacher + post epochs;
- ``scratch``: the split architecture itself (the oneshot row's split model, else the default's, re-initialised)
  trained from scratch for teacher + post epochs: the control of Liu et al. 2019;
- ``e2e``: today's from-scratch path (learn, split, finetune at their default budgets, no teacher),
  run in the same pool as the rows above: the wall time the from-trained path is compared with.

A hierarchy (``2,2``) has no one-shot grouping: its split rows learn for ``--learn-epochs`` first.
Beside each accuracy the JSON keeps, per run: the class groups by name, the split (or pruned
network) before finetune with its BatchNorm statistics re-estimated on 50 training batches (how
much of the drop at the cut is stale statistics), and with ``--epoch-curve`` the validation
accuracy after every finetune epoch (finetune validates after its last epoch only by default, so
without it the seconds are the defaults').

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
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from from_trained_table import ROWS, SOFT_KD, dump, fill_flops, markdown, report

from splitc.compile.distill import DEFAULT_ALPHA, DEFAULT_T, distill_loss
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.compile.finetune_loop import finetune_sgd
from splitc.compile.split_dir import load_split, read_meta
from splitc.compile.split_run import run_split
from splitc.core.files import ASSIGNMENT_JSON, FINETUNE_METRICS
from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.data.sizes import choose_input_size
from splitc.graph import zoo
from splitc.learn.groups import members_of_groups
from splitc.learn.loop import LearnConfig, learn

CPU = torch.device("cpu")


def data_of(args: argparse.Namespace, seed: int):
    """The data at the input size ``splitc learn`` picks for the model (an ImageFolder of 32x32
    images is read at resnet20's 32x32, not at the ImageFolder's 224x224 default)."""
    spec = zoo.resolve(args.model)
    size, _ = choose_input_size(args.data, spec.default_input_size, spec.source == "builtin")
    return load_data(args.data, size, seed=seed)


def recalibrated(model: torch.nn.Module, bundle, batches: int = 50, batch_size: int = 64) -> float:
    """Accuracy of a copy of ``model`` whose BatchNorm statistics are re-estimated on ``batches``
    training batches (no augmentation, no gradient): how much of a cut's drop is stale statistics."""
    import copy

    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None          # a cumulative average over the batches below
    loader = torch.utils.data.DataLoader(bundle.train_probe or bundle.train, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i == batches:
                break
            model(x)
    return accuracy(model, bundle.val, CPU)


def split_from(args: argparse.Namespace, groups: int | str) -> str:
    """The scope of a row: ``--split-from`` for one level, ``--split-from-tree`` for a hierarchy."""
    return args.split_from_tree if "," in str(groups) else args.split_from


def groups_key(text: str) -> int | str:
    """``2`` -> 2 (as the earlier JSON has it), ``2,2`` -> "2,2" (a hierarchy)."""
    return int(text) if text.isdigit() else text


def named_groups(run_dir: Path) -> list[list[str]] | None:
    """The split's class groups by name, from learn's assignment.json."""
    return members_of_groups(json.loads((run_dir / ASSIGNMENT_JSON).read_text()).get("class_groups"))


def epoch_curve(split_dir: Path) -> list[float]:
    """Validation accuracy after each finetune epoch (finetune's metrics journal)."""
    path = split_dir / FINETUNE_METRICS
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["val_acc"] for r in lines if r.get("kind") == "epoch_end"]


def teacher_path(args: argparse.Namespace, seed: int) -> Path:
    return Path(args.out) / f"teacher-seed{seed}.pt"


def train_teacher(args: argparse.Namespace, seed: int) -> dict:
    from splitc.learn.plain import fit_plain

    torch.manual_seed(seed)
    started = time.perf_counter()
    bundle = data_of(args, seed)
    model = zoo.build(args.model, bundle.num_classes)
    fit_plain(model, bundle, args.teacher_epochs, args.batch_size, args.lr, seed, progress=False)
    seconds = round(time.perf_counter() - started, 1)   # what acceptance 4 divides the split's time by
    path = teacher_path(args, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {"seed": seed, "val_acc": accuracy(model, bundle.val, CPU), "seconds": seconds}


SPLIT_ROWS = {"default": {}, "classifier": {"init_groups": "classifier-cut"}, "random": {"assign": "random"},
              "oneshot": {}, "random-oneshot": {"assign": "random"}, "oneshot-norefit": {"refit": False},
              "transplant": {"transplant": True}, "random-transplant": {"assign": "random", "transplant": True},
              "random-oneshot-norefit": {"assign": "random", "refit": False}}
ONESHOT = ("oneshot", "random-oneshot", "oneshot-norefit", "random-oneshot-norefit", "transplant", "random-transplant")   # learn --epochs 0: the cut made at once, every post epoch in finetune


def split_rows(args: argparse.Namespace, key: str, groups: int, seed: int) -> list[dict]:
    """learn from the teacher -> split -> finetune twice (plain, distilled) from the same split."""
    out = Path(args.out) / f"{key}-g{groups}-seed{seed}"
    started = time.perf_counter()
    # a hierarchy has no one-shot grouping (cut inits are one level): its learn runs --learn-epochs
    learn_epochs = 0 if key in ONESHOT and "," not in str(groups) else args.learn_epochs
    result = learn(LearnConfig(model=args.model, data=args.data, groups=str(groups), split_from=split_from(args, groups),
                               weights=str(teacher_path(args, seed)), epochs=learn_epochs, **SPLIT_ROWS[key],
                               batch_size=args.batch_size, seed=seed, out=str(out / "run"), force=True),
                   progress=False)
    summary = run_split(out / "run", out / "split", force=True, accept_unlearned=True)
    shared = time.perf_counter() - started
    bundle = data_of(args, seed)
    cut_model = load_split(out / "split").model
    cleared = accuracy(cut_model, bundle.val, CPU)
    recal = recalibrated(cut_model, bundle)
    rows = []
    for distill in (False,) if args.no_kd else (False, True):
        folder = out / ("split-kd" if distill else "split")
        if distill:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(out / "split", folder)
        t0 = time.perf_counter()
        tuned = finetune(FinetuneConfig(split_dir=str(folder), data=args.data, seed=seed, force=True,
                                        epochs=args.post_epochs - learn_epochs,
                                        batch_size=args.batch_size, eval_every=int(args.epoch_curve),
                                        lr=args.finetune_lr, branch_lr_mult=args.branch_lr_mult,
                                        distill=distill), progress=False)
        rows.append({"key": key + ("+kd" if distill else ""), "groups": groups, "seed": seed,
                     "params": summary["params"], "flops": summary["flops"], "val_acc": tuned.val_acc,
                     "start_val_acc": result.start_val_acc, "oneshot_val_acc": result.oneshot_val_acc,
                     "refit_val_acc": result.refit_val_acc,
                     "cleared_val_acc": cleared, "cut_energy": result.cut_energy,
                     "superclass_ari": result.superclass_ari, "split_dir": str(folder),
                     "recal_val_acc": recal, "class_groups": named_groups(out / "run"),
                     "epoch_val_acc": epoch_curve(folder), "learn_epochs": learn_epochs,
                     "finetune_lr": args.finetune_lr, "branch_lr_mult": tuned_mult(folder),
                     "seconds": round(shared + time.perf_counter() - t0, 1),
                     "finetune_seconds": round(time.perf_counter() - t0, 1)})
    return rows


def tuned_mult(split_dir: Path) -> float | None:
    """The branch lr multiple the split's finetune ran with (split.json records the config)."""
    return read_meta(split_dir).get("finetune", {}).get("branch_lr_mult")


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
                   teacher: torch.nn.Module | None, on_epoch=None, opt: torch.optim.Optimizer | None = None) -> None:
    """finetune's optimiser on a dense (pruned) model: SGD at finetune's lr (or --finetune-lr),
    Nesterov, wd 5e-4, cosine; ``opt`` replaces the SGD (benchmarks/region_lr.py's groups)."""
    from splitc.learn.plain import train_epochs

    steps = epochs * max(1, len(bundle.train) // args.batch_size)
    opt = opt or finetune_sgd([(list(model.parameters()), 1.0)], args.finetune_lr)

    def distilled(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return distill_loss(logits, target, y, DEFAULT_T, DEFAULT_ALPHA)

    train_epochs(model, bundle, epochs, args.batch_size, seed, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps),
                 None if teacher is None else distilled, on_epoch=on_epoch)


def anchor_row(args: argparse.Namespace, key: str, groups: int, seed: int) -> dict:
    from anchors import flops, narrow_widths, params, prune_to, split_params
    from splitc.learn.plain import fit_plain
    from splitc.models.resnet_cifar import CifarResNet

    torch.manual_seed(seed)
    started = time.perf_counter()
    bundle = data_of(args, seed)
    target = split_params(args.model, groups, split_from(args, groups), bundle.num_classes, bundle.input_size)
    extra: dict = {}
    if key.startswith("pruned"):
        teacher = zoo.build(args.model, bundle.num_classes)
        teacher.load_state_dict(torch.load(teacher_path(args, seed), weights_only=True))
        # a hierarchy prunes every level's region (its first entry alone left layer3 whole at 2,2)
        model = prune_to(teacher, tuple(split_from(args, groups).split(",")), target, bundle.input_size)
        extra["oneshot_val_acc"] = accuracy(model, bundle.val, CPU)
        extra["recal_val_acc"] = recalibrated(model, bundle)
        extra["epoch_val_acc"] = []
        extra["finetune_lr"] = args.finetune_lr
        finetune_dense(model, bundle, args.post_epochs, args, seed, teacher.eval() if key.endswith("+kd") else None,
                       on_epoch=(lambda e: extra["epoch_val_acc"].append(accuracy(model, bundle.val, CPU)))
                       if args.epoch_curve else None)
    elif key == "narrow":
        model = CifarResNet(20, bundle.num_classes, narrow_widths(target, bundle.num_classes))
        fit_plain(model, bundle, args.teacher_epochs + args.post_epochs, args.batch_size, args.lr, seed, progress=False)
    else:   # scratch: the default split's architecture, every layer re-initialised
        made = [Path(args.out) / f"{k}-g{groups}-seed{seed}" / "split" for k in ("oneshot", "default")]
        model = load_split(next((m for m in made if m.is_dir()), made[-1])).model
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()
        fit_plain(model, bundle, args.teacher_epochs + args.post_epochs, args.batch_size, args.lr, seed, progress=False)
    return {"key": key, "groups": groups, "seed": seed, "params": params(model), "target_params": target,
            "flops": flops(model, args.model, bundle.num_classes, bundle.input_size),
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
                try:
                    rows = future.result()
                except Exception as exc:  # noqa: BLE001 (one failed row must not end an hour-long table)
                    tqdm.write(f"a run failed: {type(exc).__name__}: {exc}")
                    continue
                for row in rows:
                    results.append(row)
                    tqdm.write(f"{row['key']} G={row.get('groups', '-')} seed {row['seed']}: "
                               f"val acc {row['val_acc']:.4f} ({row.get('seconds', 0):.0f} s)")
                    dump(args, results)
    return results


def main() -> None:
    from end_to_end import training_parser

    parser = training_parser(__doc__)
    parser.set_defaults(data="synthetic:families")
    parser.add_argument("--groups-list", dest="groups_list", nargs="+", default=["2", "4"],
                        help="each a --groups value: 2 4 2,2 (a hierarchy)")
    parser.add_argument("--split-from-tree", default="layer3,layer3.1",
                        help="--split-from of the hierarchical rows (pruned over every entry's region)")
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
    parser.add_argument("--finetune-lr", dest="finetune_lr", type=float, default=FinetuneConfig.lr,
                        help="finetune's peak lr for every row after the teacher (default: finetune's own)")
    parser.add_argument("--branch-lr-mult", dest="branch_lr_mult", type=float, default=None,
                        help="finetune's branch lr multiple for the split rows (default: finetune's own, "
                             "4 for a split cut from trained weights)")
    parser.add_argument("--epoch-curve", dest="epoch_curve", action="store_true",
                        help="validate after every finetune epoch (the accuracy-per-epoch lines; costs time)")
    parser.add_argument("--merge", nargs="*", default=[], help="earlier runs' JSON (same teachers) to report with")
    parser.add_argument("--report-only", action="store_true",
                        help="print the table of --merge and exit (--json-out: write the runs, FLOPs filled in)")
    args = parser.parse_args()
    earlier = [r for path in args.merge for r in json.loads(Path(path).read_text())["runs"]]
    done = {(r["key"], r.get("groups"), r["seed"]) for r in earlier}
    if args.report_only:
        fill_flops(args, earlier)
        if args.json_out:
            dump(args, earlier)
        report(earlier)
        print(markdown(earlier))
        return
    keys = ([k for k in ROWS if not k.startswith("classifier") and k != "oneshot+kd-soft"] if args.rows == "all"
            else args.rows.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    gs = [groups_key(g) for g in args.groups_list]
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
