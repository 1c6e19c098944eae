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
