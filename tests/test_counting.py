"""The counting function: baseline equals torch's own count; splits equal a brute-force count
of the weights a block-diagonal mask keeps; WRN-16-8 reproduces the paper's Table 1."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import analyse
from splitc.graph import zoo
from splitc.graph.group_tree import balanced_assignment
from splitc.graph.counting import count
from splitc.graph.scope import PRESETS, ScopeSpec, resolve_scope

TABLE1 = {"fc": (0.35, 0.0), "shallow": (32.54, 14.63), "deep": (46.39, 31.97), "hier": (62.58, 39.29)}


@pytest.fixture(scope="module")
def wrn():
    return analyse(zoo.build("wrn16_8", num_classes=100), (3, 32, 32))


@pytest.mark.parametrize("preset", list(TABLE1))
def test_wrn16_8_table1(wrn, preset) -> None:
    gm, ir = wrn
    report = count(ir, resolve_scope(ir, PRESETS["wrn16_8"][preset]))
    assert abs(report.baseline.params - 11.0e6) / 11.0e6 < 0.01
    assert abs(report.baseline.flops - 3.10e9) / 3.10e9 < 0.01
    params_pct, flops_pct = TABLE1[preset]
    assert abs(report.params_reduced_pct - params_pct) <= 0.2
    assert abs(report.flops_reduced_pct - flops_pct) <= 0.2


@pytest.mark.parametrize("name", ["resnet20", "tiny_mixed", "tiny_concat", "wrn16_8"])
def test_baseline_params_equal_torch_count(name) -> None:
    model = zoo.build(name, num_classes=10)
    gm, ir = analyse(model, zoo.resolve(name).default_input_size)
    assert count(ir).baseline.params == sum(p.numel() for p in model.parameters())


def brute_force_weights(ir, scope, assignment) -> int:
    """Weights kept by an explicit (out, in) mask, built independently of counting.py."""
    group = {}
    for space, groups in assignment.groups_of_space.items():
        for e in np.flatnonzero(ir.space_of == space):
            group[int(e)] = (scope.level_of[space], int(groups[ir.node_index[e]]))
    total = 0
    for layer in ir.layers:
        out_in_branch = scope.in_branches(int(ir.space_of[layer.out_elems[0]]))
        k, n_in, n_out = layer.conv_groups, len(layer.in_elems), len(layer.out_elems)
        for o in range(n_out):
            block = o // (n_out // k)
            for i in range(block * (n_in // k), (block + 1) * (n_in // k)):
                total += layer.taps * _connected(group, scope, layer.out_elems[o], layer.in_elems[i], out_in_branch)
    return total


def _connected(group, scope, out_e, in_e, out_in_branch) -> int:
    if not out_in_branch or int(in_e) not in group:
        return 1
    (lo, go), (li, gi) = group[int(out_e)], group[int(in_e)]
    ratio = scope.groups[lo] // scope.groups[li] if scope.groups[lo] >= scope.groups[li] else None
    return int(go // ratio == gi) if ratio else int(gi // (scope.groups[li] // scope.groups[lo]) == go)


@pytest.mark.parametrize("name,spec", [
    ("resnet20", ScopeSpec((2,), split_from=("layer3",))),
    ("resnet20", ScopeSpec((2, 4), split_from=("layer2", "layer3"))),
    ("tiny_mixed", ScopeSpec((2,), split_depth=(4,))),
    ("tiny_concat", ScopeSpec((2,), split_depth=(2,))),
])
def test_split_weights_match_brute_force_for_random_assignments(name, spec) -> None:
    gm, ir = analyse(zoo.build(name, num_classes=8), zoo.resolve(name).default_input_size)
    scope = resolve_scope(ir, spec)
    assignment = balanced_assignment(ir, scope, np.random.default_rng())
    report = count(ir, scope, assignment)
    weights = sum(c.split.params - (len(ir.layer(c.name).out_elems) if ir.layer(c.name).has_bias else 0)
                  for c in report.layers if c.name in {l.name for l in ir.layers})
    assert weights == brute_force_weights(ir, scope, assignment)
    assert report.split.params < report.baseline.params


def test_random_balanced_assignment_is_balanced() -> None:
    gm, ir = analyse(zoo.build("resnet20", num_classes=12), (3, 32, 32))
    scope = resolve_scope(ir, ScopeSpec((4,), split_from=("layer3",)))
    sizes = balanced_assignment(ir, scope, np.random.default_rng(3)).group_sizes(ir, scope)
    for space, per_group in sizes.items():
        assert max(per_group) - min(per_group) <= 1, (space, per_group)
