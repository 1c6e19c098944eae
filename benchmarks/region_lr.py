"""The branches' learning rate, paired: one split (or pruned network) finetuned at 1x and at M x.

    .venv/bin/python benchmarks/region_lr.py split SPLIT_DIR --data D --epochs E --seed S --mult M [--only P] [--out DIR]
    .venv/bin/python benchmarks/region_lr.py pruned TEACHER.pt --data D --epochs E --seed S --mult M

``split``: a copy of SPLIT_DIR (``split`` output; a finetune there is replaced) is finetuned by
splitc's own ``finetune --branch-lr-mult M`` (the branches at M x finetune's lr, the trunk and the
merge at 1x). ``--only P`` puts only that subset of the branches' parameters at M x (resnet20's
names: the convolutions, the first convolution and the shortcut, the other convolutions, the
BatchNorms, the classifier's slices), through finetune's optimizer factory, which is why this is
a script. ``pruned``: the teacher pruned by Torch-Pruning to the G = 4 split's params from
``layer3``, as ``from_trained.py``'s ``pruned`` row, and trained with the same optimiser,
``layer3`` and the classifier at ``M`` x. Both print one JSON line (docs/RESULTS.md, "The
branches' learning rate").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import splitc.compile.finetune_loop as loop
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.data.batches import accuracy

LR = FinetuneConfig.lr


def region_optimizer(named: list[tuple[str, torch.nn.Parameter]], in_region, mult: float, config=None):
    """finetune's SGD with two groups: the rest at 1x, the region at ``mult`` x lr."""
    lr = config.lr if config is not None else LR
    return loop.finetune_sgd([([p for n, p in named if not in_region(n)], 1.0),
                              ([p for n, p in named if in_region(n)], mult)], lr)


ONLY = {"all": lambda n: True, "conv": lambda n: "conv" in n or "downsample.0" in n,
        "conv-first": lambda n: "layer3.0.conv1" in n or "downsample.0" in n,
        "conv-inner": lambda n: ONLY["conv"](n) and not ONLY["conv-first"](n),
        "norm": lambda n: "bn" in n or "downsample.1" in n, "fc": lambda n: ".fc." in n}   # resnet20's names


def split_run(args: argparse.Namespace) -> dict:
    if args.only != "all":   # M x on a subset of the branches' parameters, 1x on the rest
        loop.make_optimizer = lambda model, config: region_optimizer(
            list(model.named_parameters()), lambda n: n.startswith(loop.branch_prefixes(model.plan)) and ONLY[args.only](n),
            args.mult, config)
    out = Path(args.out or tempfile.mkdtemp(prefix="region-lr-")) / "split"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(args.source, out)
    result = finetune(FinetuneConfig(split_dir=str(out), data=args.data, seed=args.seed, force=True, epochs=args.epochs,
                                     eval_every=0, branch_lr_mult=args.mult), progress=False)
    return {"val_acc": result.val_acc}


def pruned_run(args: argparse.Namespace) -> dict:
    """from_trained.py's ``pruned`` row (its prune, its finetune) with the region's optimiser."""
    from anchors import params, prune_to, split_params
    from from_trained import data_of, finetune_dense

    from splitc.graph import zoo

    torch.manual_seed(args.seed)
    bundle = data_of(argparse.Namespace(model="resnet20", data=args.data), args.seed)
    target = split_params("resnet20", 4, "layer3", bundle.num_classes, bundle.input_size)
    teacher = zoo.build("resnet20", bundle.num_classes)
    teacher.load_state_dict(torch.load(args.source, weights_only=True))
    model = prune_to(teacher, ("layer3",), target, bundle.input_size)
    opt = region_optimizer(list(model.named_parameters()), lambda n: n.startswith(("layer3", "fc")), args.mult)
    finetune_dense(model, bundle, args.epochs, argparse.Namespace(batch_size=64), args.seed, None, opt=opt)
    return {"params": params(model), "val_acc": accuracy(model, bundle.val, torch.device("cpu"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("split", "pruned"))
    parser.add_argument("source", help="a split dir (split) or a teacher state_dict (pruned)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mult", type=float, required=True, help="the region's lr as a multiple of finetune's")
    parser.add_argument("--only", choices=tuple(ONLY), default="all",
                        help="split: which of the branches' parameters get the multiple (resnet20's names)")
    parser.add_argument("--out", default=None, help="where the split's copy is finetuned (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    started = time.perf_counter()
    row = (split_run if args.kind == "split" else pruned_run)(args)
    print(json.dumps({"kind": args.kind, "source": args.source, "data": args.data, "seed": args.seed, "mult": args.mult,
                      "only": args.only,
                      "epochs": args.epochs, **row, "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
