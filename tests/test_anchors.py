"""The non-split anchors of the end-to-end table (benchmarks/anchors.py) hit the split's params."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from anchors import narrow_widths, params, prune_to, split_params  # noqa: E402
from splitc.models.resnet_cifar import CifarResNet, resnet20  # noqa: E402


def test_pruned_and_narrow_models_match_the_split_params() -> None:
    target = split_params("resnet20", 4, "layer3", 10, (3, 32, 32))
    assert 0.4 < target / params(resnet20(10)) < 0.6           # G=4 from layer3 halves resnet20
    torch.manual_seed(0)
    full = resnet20(10)
    pruned = prune_to(full, "layer3", target, (3, 32, 32))
    assert abs(params(pruned) - target) / target < 0.02
    untouched = {n for n, p in full.named_parameters() if not n.startswith("layer3")}
    assert all(dict(pruned.named_parameters())[n].shape == dict(full.named_parameters())[n].shape
               for n in untouched if n in dict(pruned.named_parameters()) and not n.startswith("fc"))
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    narrow = CifarResNet(20, 10, narrow_widths(target, 10))
    assert abs(params(narrow) - target) / target < 0.05


def test_flops_filled_for_earlier_anchor_rows_are_the_structure_s() -> None:
    """fill_flops rebuilds a pruned row from a fresh model: that holds because the channel counts,
    not the weights, set a pruned network's FLOPs; two different weight draws prune alike."""
    import argparse

    from anchors import flops
    from from_trained_table import fill_flops

    target = split_params("resnet20", 4, "layer3", 10, (3, 32, 32))
    pruned = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = prune_to(resnet20(10), "layer3", target, (3, 32, 32))
        pruned.append((params(model), flops(model, "resnet20", 10, (3, 32, 32))))
    assert pruned[0] == pruned[1] and pruned[0][1] < flops(resnet20(10), "resnet20", 10, (3, 32, 32))
    narrow = CifarResNet(20, 10, narrow_widths(target, 10))
    runs = [{"key": "pruned+kd", "groups": 4, "seed": 0, "params": pruned[0][0], "target_params": target},
            {"key": "narrow", "groups": 4, "seed": 0, "params": params(narrow), "target_params": target},
            {"key": "oneshot", "groups": 4, "seed": 0, "params": 111, "flops": 222},
            {"key": "scratch", "groups": 4, "seed": 0, "params": 111, "target_params": target}]
    fill_flops(argparse.Namespace(model="resnet20", data="digits", split_from="layer3",   # 10 classes at 32x32
                                  split_from_tree="layer2,layer3"), runs)
    assert [r["flops"] for r in runs] == [pruned[0][1], flops(narrow, "resnet20", 10, (3, 32, 32)), 222, 222]
