"""Does ``splitc learn``'s default recipe learn on data it was not tuned on? (docs/LEARN.md)

For each data set (a PNG ImageFolder of 12 shapes and the same shapes in CIFAR format, both
written by ``tests/datagen.py``; scikit-learn's real handwritten ``digits``) and each G, runs the
default ``learn resnet20 --split-from layer3`` and prints: the warm-up's end, dense and masked
validation accuracy, cut energy, the gradient share at the regularizers' start, and seconds.
With ``--finetune-epochs F`` it also splits, finetunes F epochs and trains a plain resnet20 for
the same total epochs (learn's epochs + F), side by side.

    python benchmarks/learn_unseen.py [--data shapes,digits,cifar] [--groups 2,4,6]
        [--finetune-epochs 10] [--out runs/unseen] [--json-out docs/learn_unseen.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from datagen import write_shapes_cifar, write_shapes_imagefolder  # noqa: E402
from end_to_end import fit_plain  # noqa: E402

from splitc.graph.analysis import analyse  # noqa: E402
from splitc.data.batches import accuracy  # noqa: E402
from splitc.data.loaders import load_data  # noqa: E402
from splitc.compile.finetune import FinetuneConfig, finetune  # noqa: E402
from splitc.learn.loop import LearnConfig, learn  # noqa: E402
from splitc.graph.scope import make_spec  # noqa: E402
from splitc.compile.split_dir import load_split, read_meta  # noqa: E402
from splitc.compile.split_run import run_split  # noqa: E402
from splitc.core.tables import table  # noqa: E402


def data_spec(name: str, work: Path) -> str:
    if name == "shapes":
        root = work / "shapes12"
        if not (root / "val").is_dir():
            write_shapes_imagefolder(root)
        return f"imagefolder:{root}"
    if name == "cifar":
        root = work / "shapes12-cifar"
        if not (root / "meta").is_file():
            write_shapes_cifar(root)
        return f"cifar100:{root}"
    return name


def one_row(data: str, groups: int, args: argparse.Namespace, out: Path) -> dict:
    start = time.perf_counter()
    result = learn(LearnConfig(model="resnet20", data=data, groups=str(groups), split_from="layer3",
                               seed=args.seed, out=str(out / "run"), force=True), progress=False)
    doc = json.loads((out / "run" / "assignment.json").read_text())
    row = {"data": data.split(":")[0] if "/" in data else data, "G": groups, "steps": result.steps,
           "warmup_end": doc["warmup_steps"], "val": result.val_acc, "masked": result.masked_val_acc,
           "cut_energy": result.cut_energy, "rw_over_ce": (doc.get("grad_share") or {}).get("rw_over_ce"),
           "learned": result.learned, "learn_s": round(time.perf_counter() - start, 1)}
    if args.finetune_epochs:
        row.update(split_and_plain(data, groups, args, out, result.steps))
    return row


def split_and_plain(data: str, groups: int, args: argparse.Namespace, out: Path, learn_steps: int) -> dict:
    start = time.perf_counter()
    run_split(out / "run", out / "split", force=True)
    # the run's own input size: without it an imagefolder loads at 224x224 and the plain model
    # trained for hours (the first run of this row had to be stopped)
    size = tuple(read_meta(out / "split")["input_size"])
    bundle = load_data(data, size, seed=args.seed)
    tuned = finetune(FinetuneConfig(split_dir=str(out / "split"), data=data, epochs=args.finetune_epochs,
                                    seed=args.seed), progress=False)
    spe = max(1, len(bundle.train) // 64)
    epochs = math.ceil(learn_steps / spe) + args.finetune_epochs
    torch.manual_seed(args.seed)
    plain = analyse("resnet20", make_spec(str(groups), "layer3"), bundle.num_classes, bundle.input_size)
    fit_plain(plain.gm, bundle, epochs, 64, 0.1, args.seed, progress=False)
    split_acc = accuracy(load_split(out / "split").model, bundle.val, torch.device("cpu"))
    return {"split_after_finetune": tuned.val_acc, "split_check": split_acc, "plain_epochs": epochs,
            "plain": accuracy(plain.gm, bundle.val, torch.device("cpu")),
            "split_plain_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="shapes,digits,cifar")
    parser.add_argument("--groups", default="4")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/unseen")
    parser.add_argument("--json-out", default=None, help="append one JSON row per finished run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.out)
    rows = []
    for name in args.data.split(","):
        spec = data_spec(name, work)
        for groups in map(int, args.groups.split(",")):
            row = {"dataset": name, **one_row(spec, groups, args, work / f"{name}-g{groups}")}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json_out:
                with open(args.json_out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    keys = [k for k in rows[0] if k != "data"]
    print(table(keys, [[f"{r.get(k):.4g}" if isinstance(r.get(k), float) else r.get(k) for k in keys] for r in rows]))


if __name__ == "__main__":
    main()
