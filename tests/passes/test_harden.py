"""harden: pure argmax per node, fuzzy nodes above an overlap threshold, and a one-line
SplitcError when a group of some space ends up with no node."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import analyse
from splitc.graph import zoo
from splitc.graph.group_tree import balanced_assignment
from splitc.core.errors import SplitcError
from splitc.passes.harden import HardenResult, fuzzy_nodes, harden
from splitc.graph.scope import ScopeSpec, resolve_scope


@pytest.fixture(scope="module")
def hier():
    """resnet20 with a two-level tree: stage 2 in 2 supergroups, stage 3 and fc in 4."""
    gm, ir = analyse(zoo.build("resnet20", num_classes=8), (3, 32, 32))
    return ir, resolve_scope(ir, ScopeSpec((2, 4), split_from=("layer2", "layer3")))


def soft_from(ir, scope, groups_of_space, rng, peak=0.7) -> dict[int, np.ndarray]:
    """Random columns on the simplex whose argmax is the given group."""
    soft = {}
    for space, groups in groups_of_space.items():
        g, n = scope.groups_of(space), ir.spaces[space].num_nodes
        rest = rng.dirichlet(np.ones(g), size=n).T * (1 - peak)
        rest[groups, np.arange(n)] += peak
        soft[space] = rest
    return soft


def test_argmax_per_node_numpy_and_torch(hier) -> None:
    ir, scope = hier
    rng = np.random.default_rng(0)
    expected = balanced_assignment(ir, scope, rng).groups_of_space
    soft = soft_from(ir, scope, expected, rng)
    for given in (soft, {s: torch.tensor(m, dtype=torch.float32) for s, m in soft.items()}):
        result = harden(ir, scope, given)
        assert isinstance(result, HardenResult)
        assert set(result.assignment.groups_of_space) == set(scope.level_of)
        for space, groups in expected.items():
            np.testing.assert_array_equal(result.assignment.groups_of_space[space], groups)
        assert result.fuzzy == {} and result.num_fuzzy == 0


def test_no_rebalancing(hier) -> None:
    """An unbalanced argmax stays unbalanced: hardening moves no node."""
    ir, scope = hier
    rng = np.random.default_rng(1)
    groups = {s: np.r_[np.arange(scope.groups_of(s)),
                       np.zeros(ir.spaces[s].num_nodes - scope.groups_of(s), dtype=int)]
              for s in scope.level_of}
    result = harden(ir, scope, soft_from(ir, scope, groups, rng))
    for space, expected in groups.items():
        np.testing.assert_array_equal(result.assignment.groups_of_space[space], expected)


def test_fuzzy_nodes_of_constructed_matrix() -> None:
    matrix = np.array([[0.55, 0.95, 0.40, 0.10, 0.34],
                       [0.45, 0.05, 0.30, 0.05, 0.33],
                       [0.00, 0.00, 0.20, 0.05, 0.33],
                       [0.00, 0.00, 0.10, 0.80, 0.00]])
    assert fuzzy_nodes(matrix, 0.1) == [(0, (0, 1)), (2, (0, 1, 2)), (4, (0, 1, 2))]
    assert fuzzy_nodes(matrix, 0.35) == [(0, (0, 1))]


def test_harden_records_fuzzy_nodes(hier) -> None:
    ir, scope = hier
    rng = np.random.default_rng(2)
    expected = balanced_assignment(ir, scope, rng).groups_of_space
    space = ir.class_space
    expected[space] = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    soft = soft_from(ir, scope, expected, rng, peak=1.0)  # crisp everywhere
    soft[space][:, 1] = [0.6, 0.0, 0.4, 0.0]             # node 1: groups 0 and 2
    soft[space][:, 6] = [0.0, 0.05, 0.15, 0.8]           # node 6: groups 2 and 3
    result = harden(ir, scope, soft, overlap=0.1)
    assert set(result.fuzzy) == set(scope.level_of)
    assert result.fuzzy[space] == [(1, (0, 2)), (6, (2, 3))]
    assert all(nodes == [] for s, nodes in result.fuzzy.items() if s != space)
    assert result.num_fuzzy == 2 and result.overlap == 0.1
    np.testing.assert_array_equal(result.assignment.groups_of_space[space], expected[space])


def test_empty_group_raises_one_line_error(hier) -> None:
    ir, scope = hier
    rng = np.random.default_rng(3)
    soft = soft_from(ir, scope, balanced_assignment(ir, scope, rng).groups_of_space, rng)
    space = ir.class_space
    soft[space][:, :] = 0.0
    soft[space][0, :] = 1.0
    with pytest.raises(SplitcError) as info:
        harden(ir, scope, soft)
    message = str(info.value)
    assert "\n" not in message
    assert f"space {space} ({ir.spaces[space].name})" in message
    assert "group(s) 1, 2, 3" in message and "balance" in message and "longer" in message


def test_bad_inputs_raise_splitc_errors(hier) -> None:
    ir, scope = hier
    rng = np.random.default_rng(4)
    soft = soft_from(ir, scope, balanced_assignment(ir, scope, rng).groups_of_space, rng)
    space = next(iter(soft))
    with pytest.raises(SplitcError, match="no soft assignment"):
        harden(ir, scope, {s: m for s, m in soft.items() if s != space})
    with pytest.raises(SplitcError, match="shape"):
        harden(ir, scope, {**soft, space: soft[space][:, :-1]})
    with pytest.raises(SplitcError, match="overlap"):
        harden(ir, scope, soft, overlap=0.5)
    outside = next(s.id for s in ir.spaces if s.id not in scope.level_of)
    with pytest.raises(SplitcError, match="not in the split"):
        harden(ir, scope, {**soft, outside: np.ones((2, 1))})
    with pytest.raises(SplitcError, match="NaN"):
        harden(ir, scope, {**soft, space: soft[space] * np.nan})
