"""Non-split anchors for the end-to-end table (issue 13): at the split rows' parameter count,
what do structured pruning and a narrower network reach at the same total epochs?

- **pruned**: a plain resnet20 trained for the learn epochs, then its split region (the layers
  a split from ``--split-from`` cuts) pruned channel-wise with Torch-Pruning (``MetaPruner``,
  L2 magnitude importance, DepGraph keeps the residual channels coupled) to the split's params,
  then trained on for the finetune epochs;
- **narrow**: resnet20 with every stage's width scaled by one factor chosen so that its params
  are the closest to the split's, trained from scratch for learn + finetune epochs.

Both train with ``end_to_end.fit_plain`` (the baseline's optimiser and lr schedule).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.graph.analysis import analyse
from splitc.graph.counting import count
from splitc.graph.group_tree import balanced_assignment
from splitc.graph.scope import make_spec
from splitc.models.resnet_cifar import CifarResNet, resnet20


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def split_params(model_name: str, groups: int, split_from: str, num_classes: int, input_size) -> int:
    """The params of a balanced split of this scope (every split row has them, up to a few channels)."""
    a = analyse(model_name, make_spec(str(groups), split_from), num_classes, input_size)
    return count(a.ir, a.scope, balanced_assignment(a.ir, a.scope)).split.params


def flops(model: nn.Module, model_name: str, num_classes: int, input_size) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), counted on the traced graph by splitc."""
    return count(analyse(model_name, make_spec("2", split_depth="1"), num_classes, input_size, model=model).ir).baseline.flops


def narrow_widths(target: int, num_classes: int) -> tuple[int, int, int]:
    """resnet20 widths (16w, 32w, 64w) whose params are the closest to ``target``."""
    best = None
    for w1 in range(4, 17):
        widths = (w1, 2 * w1, 4 * w1)
        gap = abs(params(CifarResNet(20, num_classes, widths)) - target)
        if best is None or gap < best[0]:
            best = (gap, widths)
    return best[1]


def prune_to(model: nn.Module, region: str | tuple[str, ...], target: int, input_size) -> nn.Module:
    """A copy of ``model`` whose layers under ``region`` (a module prefix, or several: a
    hierarchy's every level) are pruned (L2 magnitude, uniform ratio found by bisection) until its
    params are as close to ``target`` as the ratio allows."""
    import torch_pruning as tp

    example = torch.randn(1, *input_size)
    ignored = [name for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.startswith(tuple(region) if isinstance(region, tuple) else region)]

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(model).eval()
        modules = dict(m.named_modules())
        tp.pruner.MetaPruner(m, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                             ignored_layers=[modules[n] for n in ignored]).step()
        return m

    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(pruned(mid)) > target else (lo, mid)
    return min((pruned(lo), pruned(hi)), key=lambda m: abs(params(m) - target))


def anchor_row(args, kind: str, seed: int, progress: bool) -> dict:
    """One anchor row ('pruned' or 'narrow') for ``seed``: params, FLOPs, val acc."""
    from end_to_end import fit_plain  # the baseline's trainer (benchmarks/ is the import root)

    torch.manual_seed(seed)
    bundle = load_data(args.data, seed=seed)
    target = split_params(args.model, args.groups, args.split_from, bundle.num_classes, bundle.input_size)
    if kind == "narrow":
        model = CifarResNet(20, bundle.num_classes, narrow_widths(target, bundle.num_classes))
        fit_plain(model, bundle, args.learn_epochs + args.finetune_epochs, args.batch_size, args.lr, seed, progress=progress)
        method = f"narrow resnet20 (widths {model.conv1.out_channels}/{model.layer2[0].conv1.out_channels}/{model.fc.in_features})"
    else:
        model = resnet20(bundle.num_classes)
        fit_plain(model, bundle, args.learn_epochs, args.batch_size, args.lr, seed, progress=progress)
        model = prune_to(model, args.split_from, target, bundle.input_size)
        fit_plain(model, bundle, args.finetune_epochs, args.batch_size, args.lr, seed, progress=progress)
        method = f"pruned (Torch-Pruning, L2 magnitude, {args.split_from})"
    return {"method": method, "params": params(model), "flops": flops(model, args.model, bundle.num_classes, bundle.input_size), "target_params": target,
            "val_acc": accuracy(model, bundle.val, torch.device("cpu")), "superclass_ari": None}
