"""Tests for splitc.learn.simplex: the reduced-gradient optimizer and the two assignment modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitc.learn.simplex import (
    assignment_with_optimizer,
    ReducedGradient,
    SimplexAssignment,
    SoftmaxAssignment,
    is_on_simplex,
    project_to_simplex,
    reduced_gradient,
    uniform_init,
)

# The optimum of min ½‖d − t‖² over the simplex is proj(t); the tolerance is on max|d − d*|.
TOL = 1e-3
MAX_STEPS = 1500
# One grid for both methods; each gets the lr from it that reaches TOL in the fewest steps.
LR_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


Tensor = torch.Tensor


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny tensors in long loops: intra-op threads only add overhead (25× on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _on_simplex_exactly(d: Tensor) -> bool:
    return bool((d >= 0).all()) and bool(((d.sum(0) - 1).abs() <= 1e-6).all())


@settings(max_examples=60, deadline=None)
@given(
    G=st.integers(2, 8),
    C=st.integers(1, 50),
    log_lr=st.floats(-3, 2),
    log_scale=st.floats(-3, 3),
    seed=st.integers(0, 2**31 - 1),
    double=st.booleans(),
)
def test_reduced_gradient_stays_on_simplex(
    G: int, C: int, log_lr: float, log_scale: float, seed: int, double: bool
) -> None:
    """Many steps with random gradients never leave the simplex: all ≥ 0, columns sum to 1 ± 1e-6."""
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    param = torch.nn.Parameter(uniform_init(G, C, noise=0.1, generator=gen, dtype=dtype))
    opt = ReducedGradient([param], lr=10**log_lr)
    with one_thread():
        for _ in range(40):
            grad = 10**log_scale * torch.randn(G, C, generator=gen, dtype=dtype)
            grad[torch.rand(G, C, generator=gen) < 0.2] = 0.0  # ties with the argmax's gradient
            param.grad = grad
            opt.step()
            assert _on_simplex_exactly(param.detach())


@settings(max_examples=60, deadline=None)
@given(G=st.integers(2, 8), C=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_reduced_gradient_sums_to_zero_and_descends(G: int, C: int, seed: int) -> None:
    """−∇red keeps Σd and is a descent direction: ⟨∂J/∂d, −∇red⟩ ≤ 0 per column."""
    gen = torch.Generator().manual_seed(seed)
    d = uniform_init(G, C, noise=0.3, generator=gen, dtype=torch.float64)  # noise makes zeros
    grad = torch.randn(G, C, generator=gen, dtype=torch.float64)
    red = reduced_gradient(d, grad)
    torch.testing.assert_close(red.sum(0), torch.zeros(C, dtype=torch.float64), atol=1e-12, rtol=0)
    assert ((grad * -red).sum(0) <= 1e-12).all()
    blocked = (d == 0) & (red > 0)
    assert not blocked.any(), "a component at 0 must not be pushed below 0"


def test_zero_component_can_grow_back() -> None:
    """A node at d_m = 0 whose gradient favours m moves back into group m."""
    d = torch.tensor([[0.0], [0.6], [0.4]], dtype=torch.float64)
    param = torch.nn.Parameter(d.clone())
    param.grad = torch.tensor([[-1.0], [0.0], [0.0]], dtype=torch.float64)
    ReducedGradient([param], lr=0.1).step()
    assert param[0, 0] > 0


def test_clip_sets_binding_component_to_exact_zero() -> None:
    """A step larger than the admissible one stops exactly on the face d_m = 0."""
    param = torch.nn.Parameter(torch.tensor([[0.7], [0.2], [0.1]]))
    param.grad = torch.tensor([[0.0], [1.0], [5.0]])
    ReducedGradient([param], lr=100.0).step()
    assert param[2, 0].item() == 0.0
    assert _on_simplex_exactly(param.detach())


def test_optimizer_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="momentum"):
        ReducedGradient([torch.nn.Parameter(uniform_init(2, 3))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="simplex"):
        ReducedGradient([torch.nn.Parameter(torch.randn(3, 4))], lr=0.1)
    with pytest.raises(ValueError, match=r"\(G, C\)"):
        ReducedGradient([torch.nn.Parameter(torch.ones(3))], lr=0.1)


def test_project_to_simplex_matches_known_projections() -> None:
    x = torch.tensor([[0.5, 2.0, 0.2], [0.5, 0.0, 0.2], [0.0, -1.0, 0.2]])
    expected = torch.tensor([[0.5, 1.0, 1 / 3], [0.5, 0.0, 1 / 3], [0.0, 0.0, 1 / 3]])
    torch.testing.assert_close(project_to_simplex(x), expected)
    torch.testing.assert_close(project_to_simplex(x[:, 1]), expected[:, 1])
    assert is_on_simplex(project_to_simplex(torch.randn(5, 7)))


def _boundary_problem(G: int = 4, C: int = 16) -> tuple[Tensor, Tensor]:
    """Targets t outside the simplex: the optimum proj(t) has exact zeros."""
    gen = torch.Generator().manual_seed(1)
    t = 1.0 / G + 0.5 * torch.randn(G, C, generator=gen, dtype=torch.float64)
    optimum = project_to_simplex(t)
    assert (optimum == 0).any()
    return t, optimum


def _steps_to_tol(method: str, t: Tensor, optimum: Tensor, lr: float) -> int | None:
    """Steps of ½‖d − t‖² descent until max|d − d*| < TOL, from the same start for both methods."""
    d0 = uniform_init(*t.shape, noise=0.01, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assignment, opt = assignment_with_optimizer(method, d0, lr)
    for step in range(1, MAX_STEPS + 1):
        opt.zero_grad()
        (0.5 * (assignment() - t).pow(2).sum()).backward()
        opt.step()
        if (assignment().detach() - optimum).abs().max() < TOL:
            return step
    return None


def test_reduced_gradient_converges_to_interior_optimum() -> None:
    gen = torch.Generator().manual_seed(3)
    t = uniform_init(5, 12, noise=0.05, generator=gen, dtype=torch.float64)
    t = (t + 0.02) / (t + 0.02).sum(0)
    param = torch.nn.Parameter(uniform_init(5, 12, noise=0.01, generator=gen, dtype=torch.float64))
    opt = ReducedGradient([param], lr=0.15)
    with one_thread():
        for _ in range(200):
            opt.zero_grad()
            (0.5 * (param - t).pow(2).sum()).backward()
            opt.step()
    torch.testing.assert_close(param.detach(), t, atol=1e-9, rtol=0)


def test_reduced_gradient_beats_softmax_on_boundary_optimum() -> None:
    """Both reach TOL with their best lr from LR_GRID; reduced gradient needs fewer steps.

    Softmax only approaches a zero as α → −∞ (the Jacobian vanishes with p), while the reduced
    gradient's clip lands on it exactly.
    """
    t, optimum = _boundary_problem()
    best = {}
    for method in ("reduced", "softmax"):
        with one_thread():
            steps = [_steps_to_tol(method, t, optimum, lr) for lr in LR_GRID]
        best[method] = min((s for s in steps if s is not None), default=MAX_STEPS + 1)
    assert best["reduced"] <= 100, best
    assert best["reduced"] < best["softmax"], best


def test_reduced_gradient_reaches_vertex_of_linear_objective() -> None:
    c = torch.tensor([[0.3, 0.9], [0.1, 0.5], [0.7, 0.2]])
    param = torch.nn.Parameter(uniform_init(3, 2, noise=0.01, generator=torch.Generator().manual_seed(0)))
    opt = ReducedGradient([param], lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        (c * param).sum().backward()
        opt.step()
    assert torch.equal(param.detach(), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))


def test_softmax_assignment_init_and_output() -> None:
    module = SoftmaxAssignment(3, 1000, generator=torch.Generator().manual_seed(0))
    assert module.alpha.shape == (3, 1000)
    assert abs(module.alpha.std().item() - 0.01) < 1e-3  # std 0.01, not variance 0.01
    assert is_on_simplex(module().detach())
    probs = project_to_simplex(torch.rand(3, 5)) * 0.9 + 0.1 / 3
    torch.testing.assert_close(SoftmaxAssignment.from_probs(probs)(), probs)
    assert SoftmaxAssignment.from_probs(probs.double()).alpha.dtype == torch.float64


def test_simplex_assignment_is_a_valid_parameter() -> None:
    module = SimplexAssignment(4, 10, generator=torch.Generator().manual_seed(0))
    assert module().shape == (4, 10) and is_on_simplex(module().detach())
    assert module() is module.probs
    init = project_to_simplex(torch.rand(4, 10))
    assert torch.equal(SimplexAssignment(4, 10, init=init)().detach(), init)
    with pytest.raises(ValueError):
        SimplexAssignment(4, 10, init=torch.rand(4, 10) + 1)
