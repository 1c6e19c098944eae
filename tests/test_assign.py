"""Assignments over a scope and SplitNet's loss terms over a model (splitc.learn.assign).

The key checks: one parameter per space; hierarchical levels are read by summing children;
R_W vanishes exactly on weights masked block-diagonally under the same (hard) groups and is
large for dense weights; gradients reach weights and assignments; only cut layers carry R_W.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import analyse, randomize
from splitc.graph import zoo
from splitc.learn.assign import AssignmentSet, cut_energy, layer_weight_terms, splitnet_loss, splitnet_regularizers
from splitc.graph.group_tree import balanced_assignment
from splitc.learn.regularizers import group_weight_reg
from splitc.graph.scope import ScopeSpec, layer_kind, resolve_scope
from splitc.learn.simplex import ReducedGradient, is_on_simplex

FLAT = ScopeSpec(groups=(2,), split_from=("layer3",))
HIER = ScopeSpec(groups=(2, 4), split_from=("layer2", "layer3"))


@pytest.fixture(scope="module")
def resnet():
    model = randomize(zoo.build("resnet20", num_classes=10), seed=0)
    gm, ir = analyse(model, (3, 32, 32))
    return gm, ir


def tiny(name: str, split_from: str):
    gm, ir = analyse(randomize(zoo.build(name, num_classes=10), seed=1), (3, 16, 16))
    return gm, ir, resolve_scope(ir, ScopeSpec(groups=(2,), split_from=(split_from,)))


def one_hot_set(ir, scope, seed: int = 0) -> AssignmentSet:
    """A softmax set whose α = 50·onehot(balanced random groups): numerically hard."""
    aset = AssignmentSet.create(ir, scope, "softmax", seed=seed)
    hard = balanced_assignment(ir, scope, np.random.default_rng(seed))
    with torch.no_grad():
        for space, groups in hard.groups_of_space.items():
            alpha = aset.by_space[str(space)].alpha
            alpha.zero_()
            alpha[torch.as_tensor(groups), torch.arange(alpha.shape[1])] = 50.0
    return aset


def group_of(ir, scope, hard, elems: np.ndarray, level: int) -> np.ndarray:
    """Each element's group folded to ``level`` (children c of s: c // ratio == s)."""
    out = np.empty(len(elems), dtype=np.int64)
    for k, e in enumerate(elems):
        space = int(ir.space_of[e])
        own = scope.level_of[space]
        out[k] = hard.groups_of_space[space][ir.node_index[e]] // (scope.groups[own] // scope.groups[level])
    return out


def mask_block_diagonal(gm, ir, scope, hard) -> None:
    """Zero weight[o, i] unless i and o are in the same group at the layer's coarsest level."""
    with torch.no_grad():
        for layer in ir.layers:
            if layer_kind(ir, scope, layer) != "block-diagonal":
                continue
            level = min(scope.level_of[int(s)] for s in
                        np.concatenate([ir.spaces_of(layer.in_elems), ir.spaces_of(layer.out_elems)]))
            W = gm.get_submodule(layer.name).weight
            gi = group_of(ir, scope, hard, layer.in_elems, level)
            go = group_of(ir, scope, hard, layer.out_elems, level)
            out_per, in_per = W.shape[0] // layer.conv_groups, W.shape[1]  # grouped: own block only
            cols = (np.arange(W.shape[0]) // out_per * in_per)[:, None] + np.arange(in_per)[None, :]
            keep = torch.as_tensor(go[:, None] == gi[cols], dtype=W.dtype)
            W.mul_(keep.reshape(*keep.shape, *([1] * (W.dim() - 2))))


@pytest.mark.parametrize("spec", [FLAT, HIER])
@pytest.mark.parametrize("kind", ["softmax", "reduced-gradient"])
def test_one_parameter_per_space(resnet, spec, kind) -> None:
    gm, ir = resnet
    scope = resolve_scope(ir, spec)
    aset = AssignmentSet.create(ir, scope, kind)
    params = list(aset.parameters())
    assert len(params) == len(scope.level_of)
    for space in scope.level_of:
        A = aset.matrix(space)
        assert A.shape == (scope.groups_of(space), ir.spaces[space].num_nodes)
        assert is_on_simplex(A.detach(), 1e-5)


def test_hierarchical_children_sum_to_coarse_assignment(resnet) -> None:
    gm, ir = resnet
    scope = resolve_scope(ir, HIER)
    aset = AssignmentSet.create(ir, scope, "softmax", seed=3)
    fine = [s for s, lev in scope.level_of.items() if lev == 1]
    assert fine and any(lev == 0 for lev in scope.level_of.values())
    for space in fine:
        A = aset.matrix(space)
        coarse = aset.matrix_at(space, 0)
        assert coarse.shape == (2, A.shape[1])
        torch.testing.assert_close(coarse, torch.stack([A[0] + A[1], A[2] + A[3]]))
        torch.testing.assert_close(coarse.sum(0), torch.ones(A.shape[1]))
    with pytest.raises(ValueError):
        aset.matrix_at(next(s for s, lev in scope.level_of.items() if lev == 0), 1)


def test_boundary_layer_uses_coarse_q(resnet) -> None:
    """layer3.0.conv1 reads the stage-2 stream (2 supergroups) into a stage-3 space (4 groups)."""
    gm, ir = resnet
    scope = resolve_scope(ir, HIER)
    aset = AssignmentSet.create(ir, scope, "softmax", seed=4)
    layer = ir.layer("layer3.0.conv1")
    s_in, s_out = int(ir.space_of[layer.in_elems[0]]), int(ir.space_of[layer.out_elems[0]])
    assert (scope.level_of[s_in], scope.level_of[s_out]) == (0, 1)
    terms = {lay.name: t for lay, t in layer_weight_terms(gm, ir, scope, aset)}
    Q_fine = aset.matrix(s_out)
    Q_coarse = torch.stack([Q_fine[0] + Q_fine[1], Q_fine[2] + Q_fine[3]])
    P = aset.matrix(s_in)[:, torch.as_tensor(ir.node_index[layer.in_elems])]
    Q = Q_coarse[:, torch.as_tensor(ir.node_index[layer.out_elems])]
    expected = group_weight_reg(gm.get_submodule(layer.name).weight, P, Q)
    torch.testing.assert_close(terms["layer3.0.conv1"], expected)


@pytest.mark.parametrize("spec", [FLAT, HIER])
def test_rw_vanishes_on_masked_weights_and_not_on_dense(spec) -> None:
    gm, ir = analyse(randomize(zoo.build("resnet20", num_classes=10), seed=2), (3, 32, 32))
    scope = resolve_scope(ir, spec)
    aset = one_hot_set(ir, scope, seed=5)
    assert splitnet_regularizers(gm, ir, scope, aset)["R_W"].item() > 0.5
    mask_block_diagonal(gm, ir, scope, aset.hard())
    regs = splitnet_regularizers(gm, ir, scope, aset)
    assert regs["R_W"].item() < 1e-3
    assert regs["R_D"].item() < 1e-6
    assert aset.hard().groups_of_space.keys() == scope.level_of.keys()


@pytest.mark.parametrize("spec", [FLAT, HIER])
def test_cut_energy_is_zero_when_masked_and_near_random_share_when_dense(spec) -> None:
    """learn's readiness figure: the share of weight energy between the argmax groups."""
    gm, ir = analyse(randomize(zoo.build("resnet20", num_classes=10), seed=3), (3, 32, 32))
    scope = resolve_scope(ir, spec)
    aset = one_hot_set(ir, scope, seed=6)
    dense = cut_energy(gm, ir, scope, aset)
    assert set(dense) == {layer.name for layer, _ in layer_weight_terms(gm, ir, scope, aset)} | {"total"}
    assert 0.3 < dense["total"] < 0.9  # random weights: about (G-1)/G of the energy is between groups
    mask_block_diagonal(gm, ir, scope, aset.hard())
    assert all(v < 1e-9 for v in cut_energy(gm, ir, scope, aset).values())


def test_rw_vanishes_on_masked_grouped_conv() -> None:
    """tiny_grouped: a groups=4 conv whose nodes are 4 channels each (whole conv-groups move
    together); masking under the one-hot groups clears R_W, and R_E counts channels."""
    gm, ir, scope = tiny("tiny_grouped", "stem")
    assert layer_kind(ir, scope, ir.layer("block.grouped.0")) == "block-diagonal"
    aset = one_hot_set(ir, scope, seed=12)
    assert splitnet_regularizers(gm, ir, scope, aset)["R_W"].item() > 0.5
    mask_block_diagonal(gm, ir, scope, aset.hard())
    regs = splitnet_regularizers(gm, ir, scope, aset)
    assert regs["R_W"].item() < 1e-3
    sizes = aset.hard().group_sizes(ir, scope)
    expected = sum(2 * sum(g * g for g in sz) / sum(sz) ** 2 for sz in sizes.values())
    assert regs["R_E"].item() == pytest.approx(expected, rel=1e-5)


def test_gradients_reach_weights_and_assignments(resnet) -> None:
    gm, ir = resnet
    scope = resolve_scope(ir, HIER)
    aset = AssignmentSet.create(ir, scope, "softmax", seed=6)
    gm.zero_grad()
    ce = gm(torch.randn(2, 3, 32, 32)).logsumexp(1).mean()
    regs = splitnet_regularizers(gm, ir, scope, aset)
    splitnet_loss(ce, regs).backward()
    for name in ("layer2.1.conv1", "layer3.0.conv1", "fc"):
        grad = gm.get_submodule(name).weight.grad
        assert grad is not None and grad.abs().sum() > 0
    for p in aset.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    gm.zero_grad()


def test_only_cut_layers_carry_rw(resnet) -> None:
    gm, ir = resnet
    scope = resolve_scope(ir, FLAT)
    aset = AssignmentSet.create(ir, scope)
    used = {layer.name for layer, _ in layer_weight_terms(gm, ir, scope, aset)}
    diag = {lay.name for lay in ir.layers if layer_kind(ir, scope, lay) == "block-diagonal"}
    assert used == diag
    assert "layer3.0.conv1" not in used and "layer3.0.downsample.0" not in used
    assert "fc" in used and "layer2.2.conv2" not in used


def test_random_kind_is_fixed_and_balanced(resnet) -> None:
    gm, ir = resnet
    scope = resolve_scope(ir, HIER)
    aset = AssignmentSet.create(ir, scope, "random", seed=7)
    assert list(aset.parameters()) == []
    hard = aset.hard()
    for space, A in aset.items():
        assert not A.requires_grad
        assert set(A.unique().tolist()) <= {0.0, 1.0} and torch.all(A.sum(0) == 1)
        sizes = hard.group_sizes(ir, scope)[space]
        assert max(sizes) - min(sizes) <= ir.spaces[space].node_sizes.max()
    again = AssignmentSet.create(ir, scope, "random", seed=7).hard()
    assert all(np.array_equal(hard.groups_of_space[s], again.groups_of_space[s]) for s in scope.level_of)
    regs = splitnet_regularizers(gm, ir, scope, aset)
    assert regs["R_D"].item() == pytest.approx(0.0, abs=1e-6)


def test_reduced_gradient_starts_and_stays_on_simplex(resnet) -> None:
    gm, ir = resnet
    scope = resolve_scope(ir, FLAT)
    aset = AssignmentSet.create(ir, scope, "reduced-gradient", seed=8)
    params = list(aset.parameters())
    assert all(is_on_simplex(p.detach(), 1e-6) for p in params)
    opt = ReducedGradient(params, lr=0.05)
    splitnet_loss(torch.zeros(()), splitnet_regularizers(gm, ir, scope, aset)).backward()
    opt.step()
    assert all(is_on_simplex(p.detach(), 1e-6) for p in params)
    gm.zero_grad()


def test_splitnet_loss_weights() -> None:
    regs = {"R_W": torch.tensor(2.0), "R_D": torch.tensor(3.0), "R_E": torch.tensor(5.0)}
    assert splitnet_loss(torch.tensor(1.0), regs).item() == pytest.approx(1 + 2 + 3 + 50)
    assert splitnet_loss(torch.tensor(1.0), regs, (0.5, 0.0, 1.0)).item() == pytest.approx(1 + 1 + 5)


def test_flatten_linear_repeats_channel_columns() -> None:
    """tiny_seq's fc reads C×4×4 features: each channel's column appears 16 times in P."""
    gm, ir, scope = tiny("tiny_seq", "conv2")
    aset = AssignmentSet.create(ir, scope, seed=9)
    fc = ir.layer("fc")
    P = aset.channel_matrix(fc.in_elems, 0)
    assert P.shape == (2, 192)
    A = aset.matrix(int(ir.space_of[fc.in_elems[0]]))
    torch.testing.assert_close(P, A.repeat_interleave(16, dim=1))
    assert {lay.name for lay, _ in layer_weight_terms(gm, ir, scope, aset)} == {"fc"}


def test_mixed_layer_uses_in_scope_inputs() -> None:
    """tiny_concat split from the dense layer: conv.0 reads shared trunk channels plus the
    in-scope growth channels; R_W sees only the latter columns."""
    gm, ir, scope = tiny("tiny_concat", "dense")
    aset = AssignmentSet.create(ir, scope, seed=10)
    conv = ir.layer("conv.0")
    assert layer_kind(ir, scope, conv) == "mixed"
    assert aset.channel_matrix(conv.in_elems, 0) is None
    terms = {lay.name: t for lay, t in layer_weight_terms(gm, ir, scope, aset)}
    inside = np.flatnonzero(np.isin(ir.space_of[conv.in_elems], list(scope.level_of)))
    W = gm.get_submodule("conv.0").weight[:, torch.as_tensor(inside)]
    P = aset.channel_matrix(conv.in_elems[inside], 0)
    Q = aset.channel_matrix(conv.out_elems, 0)
    torch.testing.assert_close(terms["conv.0"], group_weight_reg(W, P, Q))
    assert "dense.f.0" not in terms


def test_grouped_mixed_and_depthwise_layers_run() -> None:
    """tiny_mixed split from the shuffle unit: a depthwise conv (block-diagonal) and a flatten
    linear that mixes trunk and scope features; R_W is finite and differentiable."""
    gm, ir, scope = tiny("tiny_mixed", "shuffle")
    aset = AssignmentSet.create(ir, scope, seed=11)
    kinds = {lay.name: layer_kind(ir, scope, lay) for lay, _ in layer_weight_terms(gm, ir, scope, aset)}
    assert kinds["fc1"] == "mixed" and any(ir.layer(n).conv_groups > 1 for n in kinds)
    regs = splitnet_regularizers(gm, ir, scope, aset)
    assert all(torch.isfinite(v) for v in regs.values())
    splitnet_loss(torch.zeros(()), regs).backward()
    assert all(p.grad is not None for p in aset.parameters())
