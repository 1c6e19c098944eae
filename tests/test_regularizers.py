"""Tests for splitc.learn.regularizers against explicit NumPy loops over the docs/METHOD.md §3 formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitc.learn.regularizers import (
    balance_reg,
    combine_layer_terms,
    disjoint_reg,
    group_weight_reg,
    weight_energy_matrix,
)
from splitc.learn.simplex import SimplexAssignment, SoftmaxAssignment, project_to_simplex, uniform_init

Tensor = torch.Tensor


# ---- NumPy references: literal loops, W masked elementwise before the norm -------------------


def np_dense_weight(W: np.ndarray, conv_groups: int) -> np.ndarray:
    """Grouped conv weight (out, in/k, ...) → dense (out, in, ...) with zeros between conv groups."""
    out, in_per = W.shape[:2]
    dense = np.zeros((out, in_per * conv_groups) + W.shape[2:])
    out_per = out // conv_groups
    for j in range(out):
        k = j // out_per
        for a in range(in_per):
            dense[j, k * in_per + a] = W[j, a]
    return dense


def np_group_weight_reg(
    W: np.ndarray, P: np.ndarray, Q: np.ndarray, normalize: bool, conv_groups: int = 1
) -> float:
    W = np_dense_weight(W, conv_groups)
    G, n_in = P.shape
    n_out = Q.shape[1]
    total = 0.0
    for g in range(G):
        for i in range(n_in):  # row i (input channel i), masked by q_g over out-channels
            masked = np.stack([Q[g, j] * W[j, i] for j in range(n_out)])
            total += (1 - P[g, i]) * np.sqrt(np.sum(masked**2))
        for j in range(n_out):  # column j (output channel j), masked by p_g over in-channels
            masked = np.stack([P[g, i] * W[j, i] for i in range(n_in)])
            total += (1 - Q[g, j]) * np.sqrt(np.sum(masked**2))
    return total / np.sqrt(np.sum(W**2)) if normalize else total


def np_disjoint_reg(A: np.ndarray) -> float:
    G, C = A.shape
    total = sum(A[g, i] * A[h, i] for g in range(G) for h in range(g + 1, G) for i in range(C))
    return total / (C * (G - 1) / (2 * G))


def np_balance_reg(A: np.ndarray, w: np.ndarray) -> float:
    G, C = A.shape
    sizes = [sum(w[i] * A[g, i] for i in range(C)) for g in range(G)]
    return sum(s**2 for s in sizes) / (w.sum() ** 2 / G)


def _random_assignment(G: int, C: int, rng: np.random.Generator) -> np.ndarray:
    return project_to_simplex(torch.from_numpy(rng.normal(1 / G, 0.3, (G, C)))).numpy()


def _t(x: np.ndarray) -> Tensor:
    return torch.from_numpy(x)


# ---- values against the references ----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    G=st.integers(1, 4),
    shape=st.sampled_from([(5, 3), (6, 4, 3, 3), (4, 2, 1, 1), (3, 5, 3)]),
    normalize=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_group_weight_reg_matches_numpy(G: int, shape: tuple[int, ...], normalize: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    W = rng.normal(size=shape)
    P, Q = _random_assignment(G, shape[1], rng), _random_assignment(G, shape[0], rng)
    got = group_weight_reg(_t(W), _t(P), _t(Q), normalize_energy=normalize, eps=0.0)
    assert got.item() == pytest.approx(np_group_weight_reg(W, P, Q, normalize), rel=1e-9)


@pytest.mark.parametrize("conv_groups", [2, 3])
def test_group_weight_reg_grouped_conv_matches_numpy(conv_groups: int) -> None:
    rng = np.random.default_rng(conv_groups)
    W = rng.normal(size=(6, 2, 3, 3))  # out=6, in=2·conv_groups
    n_in = 2 * conv_groups
    P, Q = _random_assignment(3, n_in, rng), _random_assignment(3, 6, rng)
    for normalize in (True, False):
        got = group_weight_reg(
            _t(W), _t(P), _t(Q), normalize_energy=normalize, conv_groups=conv_groups, eps=0.0
        )
        assert got.item() == pytest.approx(np_group_weight_reg(W, P, Q, normalize, conv_groups), rel=1e-9)


def test_weight_energy_matrix_orientation() -> None:
    W = torch.arange(24.0).reshape(3, 2, 2, 2)  # (out=3, in=2, 2, 2)
    E = weight_energy_matrix(W)
    assert E.shape == (2, 3)
    assert E[1, 2] == W[2, 1].pow(2).sum()
    torch.testing.assert_close(weight_energy_matrix(W[:, :, 0, 0]), W[:, :, 0, 0].t() ** 2)


def test_group_weight_reg_rejects_mismatched_shapes() -> None:
    W = torch.randn(4, 3)
    with pytest.raises(ValueError, match="in"):
        group_weight_reg(W, uniform_init(2, 4), uniform_init(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        weight_energy_matrix(torch.randn(5, 2, 3, 3), conv_groups=2)


@settings(max_examples=40, deadline=None)
@given(G=st.integers(1, 5), C=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), weighted=st.booleans())
def test_disjoint_and_balance_match_numpy(G: int, C: int, seed: int, weighted: bool) -> None:
    rng = np.random.default_rng(seed)
    A = _random_assignment(G, C, rng)
    w = rng.integers(1, 5, size=C).astype(float) if weighted else np.ones(C)
    expected_d = np_disjoint_reg(A) if G > 1 else 0.0
    assert disjoint_reg(_t(A)).item() == pytest.approx(expected_d, rel=1e-9, abs=1e-12)
    got_e = balance_reg(_t(A), _t(w) if weighted else None)
    assert got_e.item() == pytest.approx(np_balance_reg(A, w), rel=1e-9)
    assert got_e.item() >= 1 - 1e-9  # the normalised minimum is 1
    assert disjoint_reg(_t(A)).item() >= -1e-12


# ---- structure: zero exactly where the split is clean ---------------------------------------


def _hard(groups: list[int], G: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.tensor(groups), G).t().double()


def test_group_weight_reg_zero_for_block_diagonal_weight() -> None:
    in_groups, out_groups = [0, 1, 2, 0, 1], [2, 2, 1, 0, 0, 1]
    P, Q = _hard(in_groups, 3), _hard(out_groups, 3)
    mask = torch.tensor([[float(gj == gi) for gi in in_groups] for gj in out_groups])  # (out, in)
    W = torch.randn(6, 5, 3, 3, dtype=torch.float64) * mask[:, :, None, None]
    for normalize in (True, False):
        assert group_weight_reg(W, P, Q, normalize_energy=normalize).item() < 1e-4
    W[0, 0, 1, 1] = 0.5  # one inter-group weight: out 0 (group 2) from in 0 (group 0)
    assert group_weight_reg(W, P, Q).item() > 0.01
    assert group_weight_reg(W, P, Q, normalize_energy=False).item() > 0.5


def test_group_weight_reg_zero_for_aligned_grouped_conv() -> None:
    """A 2-group conv whose conv groups coincide with the split groups has no inter-group weights."""
    P, Q = _hard([0, 0, 1, 1], 2), _hard([0, 0, 0, 1, 1, 1], 2)
    W = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    assert group_weight_reg(W, P, Q, conv_groups=2).item() < 1e-4
    assert group_weight_reg(W, _hard([0, 1, 0, 1], 2), Q, conv_groups=2).item() > 0.1


def test_disjoint_and_balance_extremes() -> None:
    hard = _hard([0, 1, 2, 0, 1, 2], 3)
    assert disjoint_reg(hard).item() == 0.0
    assert balance_reg(hard).item() == pytest.approx(1.0)
    uniform = torch.full((3, 6), 1 / 3, dtype=torch.float64)
    assert disjoint_reg(uniform).item() == pytest.approx(1.0)
    assert balance_reg(uniform).item() == pytest.approx(1.0)
    assert balance_reg(_hard([0, 0, 0, 0, 1, 2], 3)).item() > 1.0
    # With node sizes (channel counts) the same hard map is balanced: 4 | 4 | 4 channels.
    sizes = torch.tensor([1.0, 1.0, 1.0, 1.0, 4.0, 4.0])
    assert balance_reg(_hard([0, 0, 0, 0, 1, 2], 3), sizes).item() == pytest.approx(1.0)


# ---- gradients and scale invariance ---------------------------------------------------------


def test_gradients_reach_weights_and_both_parameterisations() -> None:
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, 3, 3, requires_grad=True)
    P = SoftmaxAssignment(2, 4, generator=gen)
    Q = SimplexAssignment(2, 6, generator=gen)
    loss = group_weight_reg(W, P(), Q()) + disjoint_reg(P()) + balance_reg(Q())
    loss.backward()
    for grad in (W.grad, P.alpha.grad, Q.probs.grad):
        assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("c", [1e-3, 0.37, 5.0, 1e3])
def test_normalized_group_weight_reg_is_scale_invariant(c: float) -> None:
    rng = np.random.default_rng(0)
    W = _t(rng.normal(size=(6, 4, 3, 3)))
    P, Q = _t(_random_assignment(3, 4, rng)), _t(_random_assignment(3, 6, rng))
    assert group_weight_reg(c * W, P, Q).item() == pytest.approx(group_weight_reg(W, P, Q).item(), rel=1e-12)
    assert group_weight_reg(c * W, P, Q, normalize_energy=False).item() != pytest.approx(
        group_weight_reg(W, P, Q, normalize_energy=False).item(), rel=1e-3
    )


def test_normalized_gradient_cannot_shrink_weights() -> None:
    """The norm keeps its gradient, so ⟨∇_W R_W, W⟩ = 0 (Euler): shrinking W (as BN allows) is
    no descent direction. Detaching the norm would leave this inner product positive."""
    rng = np.random.default_rng(1)
    W = _t(rng.normal(size=(6, 4, 3, 3))).requires_grad_()
    P, Q = _t(_random_assignment(3, 4, rng)), _t(_random_assignment(3, 6, rng))
    group_weight_reg(W, P, Q).backward()
    assert abs((W.grad * W.detach()).sum().item()) < 1e-9
    assert W.grad.abs().sum() > 0


def test_combine_layer_terms_weights_by_detached_share() -> None:
    r = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64, requires_grad=True)
    combined = combine_layer_terms(list(r.unbind()))
    assert combined.item() == pytest.approx((1 + 9 + 0.25) / 4.5)
    combined.backward()
    torch.testing.assert_close(r.grad, r.detach() / 4.5)  # detached weights: d/dr_l = r_l / Σr
    zeros = [torch.zeros((), requires_grad=True) for _ in range(2)]
    assert combine_layer_terms(zeros).item() == 0.0
    with pytest.raises(ValueError):
        combine_layer_terms([])
