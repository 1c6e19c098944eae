"""An experiment, not a splitc option: the split's branches with a dense classifier.

    .venv/bin/python benchmarks/dense_head.py SPLIT_DIR --data D --epochs E --seed S --head dense|split

A SplitNet splits the classes with the channels: each class reads only its own branch's
features, so the classifier is block-diagonal. At G = 4 on Fashion-MNIST the split loses most
on shirts, to coats in the same branch, and every lever measured on the finetune left it under
pruning, whose classifier reads all its features. This measures what a dense classifier (every
class reads every branch's pooled features: the branches still share nothing, the merge
gathers G feature vectors and applies one small linear layer) would win after the cut.

SPLIT_DIR is ``splitc split`` output from a cut of a trained network; its weights as split
(``split.safetensors``, before any finetune) are taken in their dense view (the permuted masked
model, :mod:`splitc.compile.dense_view`), whose inter-group entries are exactly zero. That
model is trained with from_trained.py's dense finetune (SGD at finetune's lr 0.01, Nesterov,
wd 5e-4, cosine, the same batches for both heads) with the zero pattern re-applied after every
step: to every weight with ``--head split`` (the control: the split itself trained as a masked
dense model), to every weight but the classifier's with ``--head dense`` (its inter-group
entries start at zero, so both runs start from the same function). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from splitc.compile.dense_view import dense_split
from splitc.compile.finetune import FinetuneConfig
from splitc.compile.finetune_loop import finetune_sgd
from splitc.compile.split_dir import load_split
from splitc.core.files import SPLIT_WEIGHTS
from splitc.data.batches import accuracy

CPU = torch.device("cpu")


def zero_masks(model: torch.nn.Module, classifier: str, keep_classifier_dense: bool) -> dict[str, torch.Tensor]:
    """The cut's zero pattern per weight matrix or kernel that has one (the cut layers, the
    classifier), without the classifier's when it is to be trained dense."""
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        mask = p.detach() != 0
        if bool(mask.all()):
            continue
        if keep_classifier_dense and name == classifier:
            continue
        masks[name] = mask
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split_dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--head", choices=("dense", "split"), required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from from_trained import data_of, finetune_dense

    started = time.perf_counter()
    loaded = load_split(args.split_dir, weights=SPLIT_WEIGHTS)
    view, why = dense_split(loaded)
    if view is None:
        raise SystemExit(f"dense_head: {why}")
    module = view.module().train()
    linears = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    classifier = linears[-1] + ".weight"
    masks = zero_masks(module, classifier, args.head == "dense")
    params = dict(module.named_parameters())
    torch.manual_seed(args.seed)
    bundle = data_of(argparse.Namespace(model=loaded.meta["model"], data=args.data), args.seed)
    start = accuracy(module, bundle.val, CPU)
    opt = finetune_sgd([(list(module.parameters()), 1.0)], FinetuneConfig.lr)

    @torch.no_grad()
    def remask(*_):
        for name, mask in masks.items():
            params[name].mul_(mask)

    opt.register_step_post_hook(remask)
    finetune_dense(module, bundle, args.epochs, argparse.Namespace(batch_size=64), args.seed, None, opt=opt)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(p.numel() for p in module.parameters())
    masked_out = sum(int((~m).sum()) for m in masks.values())
    print(json.dumps({"split_dir": args.split_dir, "head": args.head, "data": args.data, "seed": args.seed,
                      "epochs": args.epochs, "params": total - masked_out, "masked_weights": len(masks),
                      "kept_in_masked": kept, "start_val_acc": start,
                      "val_acc": accuracy(module, bundle.val, CPU),
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
