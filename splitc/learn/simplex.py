"""Group assignments on the probability simplex, and the reduced-gradient optimizer (docs/METHOD.md §2, §5).

An assignment matrix has shape ``(G, C)``; every column (one node's distribution over the ``G``
groups) lies on the simplex. Two parameterisations:

- :class:`SoftmaxAssignment` holds logits ``α`` and returns ``softmax(α, dim=0)``; any optimizer
  works (the paper's CIFAR choice).
- :class:`SimplexAssignment` holds the matrix itself; it must be optimised by
  :class:`ReducedGradient`, which keeps every column on the simplex exactly (the paper's ImageNet
  choice). Columns can reach exact zeros, where softmax only approaches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

SIMPLEX_ATOL = 1e-4  # tolerance for accepting a parameter as "on the simplex" at construction


def project_to_simplex(x: Tensor) -> Tensor:
    """Euclidean projection of every column of ``x`` (shape ``(G,)`` or ``(G, C)``) onto the simplex.

    Sort-based algorithm (Duchi et al., 2008), vectorised over columns; used to turn a noisy
    initial matrix into a valid assignment.
    """
    squeeze = x.dim() == 1
    cols = x.unsqueeze(1) if squeeze else x
    G = cols.shape[0]
    u, _ = torch.sort(cols, dim=0, descending=True)
    css = u.cumsum(dim=0) - 1
    k = torch.arange(1, G + 1, dtype=cols.dtype, device=cols.device).unsqueeze(1)
    rho = (u - css / k > 0).sum(dim=0, keepdim=True)  # size of the support, >= 1
    theta = css.gather(0, rho - 1) / rho.to(cols.dtype)
    out = (cols - theta).clamp_min(0)
    return out.squeeze(1) if squeeze else out


def uniform_init(
    G: int,
    C: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform ``(G, C)`` assignment plus Gaussian ``noise`` (std), projected onto the simplex.

    The noise breaks the symmetry of the exactly uniform point, where R_D's gradient is zero
    (docs/METHOD.md §8).
    """
    x = torch.full((G, C), 1.0 / G, dtype=dtype)
    if noise > 0:
        x = x + noise * torch.randn(G, C, generator=generator, dtype=dtype)
    return project_to_simplex(x)


def is_on_simplex(A: Tensor, atol: float = 1e-6) -> bool:
    """True when every column of ``A`` is non-negative and sums to 1 within ``atol``."""
    return bool((A >= 0).all()) and bool(((A.sum(dim=0) - 1).abs() <= atol).all())


def reduced_gradient(d: Tensor, grad: Tensor) -> Tensor:
    """SimpleMKL's reduced gradient of every column of ``d`` (docs/METHOD.md §5); shape ``(G, C)``.

    With ``μ`` the argmax of the column and ``δ_m = ∂J/∂d_m − ∂J/∂d_μ``:
    ``∇red_m = δ_m`` where ``d_m > 0``, and ``0`` where ``d_m = 0`` and ``δ_m > 0`` (the bound blocks it);
    ``∇red_μ = −Σ_{m≠μ} ∇red_m``. §5 leaves ``d_m = 0, δ_m < 0`` open; like the SimpleMKL code
    (``desc = -gradnew.*((d>0)|(gradnew<0))``) we keep ``δ_m`` there, so that a node can move
    back into a group it left: otherwise every zero is permanent and the optimum of a problem
    with an interior solution is unreachable once a step has clipped a component.

    Each column sums to zero (the step keeps ``Σ d = 1``) and
    ``⟨∂J/∂d, −∇red⟩ = −Σ_{m≠μ} ∇red_m² ≤ 0``, so ``−∇red`` is a descent direction.
    """
    mu = d.argmax(dim=0, keepdim=True)  # (1, C)
    delta = grad - grad.gather(0, mu)  # zero at μ
    free = (d > 0) | (delta < 0)
    red = torch.where(free, delta, torch.zeros_like(delta))
    return red.scatter(0, mu, -red.sum(dim=0, keepdim=True))


def simplex_step(d: Tensor, red: Tensor, lr: float) -> Tensor:
    """``d − γ·red`` per column, with ``γ = min(lr, largest step keeping every component ≥ 0)``.

    Where the clip binds, the binding component is set to exactly 0; a final clamp and
    re-normalisation only remove float round-off (``Σ d = 1`` within 1e-6, nothing negative).
    """
    inf = torch.full_like(d, float("inf"))
    ratio = torch.where(red > 0, d / red, inf)
    gamma_max, binding = ratio.min(dim=0, keepdim=True)  # (1, C)
    clipped = gamma_max <= lr
    new = d - gamma_max.clamp(max=lr) * red
    kept = new.gather(0, binding)
    new = new.scatter(0, binding, torch.where(clipped, torch.zeros_like(kept), kept))
    new = new.clamp_min(0)
    return new / new.sum(dim=0, keepdim=True)


class ReducedGradient(torch.optim.Optimizer):
    """Reduced-gradient descent for ``(G, C)`` parameters whose columns lie on the simplex.

    Each ``step()`` applies docs/METHOD.md §5 to all columns at once (see :func:`reduced_gradient`
    and :func:`simplex_step`). Only plain steps are supported: ``momentum`` must be 0, because a
    buffer of past reduced gradients was built for other active sets and argmaxes, so it is not
    a descent direction on the current face and keeps pushing into bounds that bind, truncating
    every clipped step. Weight decay has no meaning on the simplex and is not offered.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 0.1, momentum: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if momentum != 0:
            raise ValueError("ReducedGradient supports momentum=0 only (see the class docstring)")
        super().__init__(params, {"lr": lr, "momentum": momentum})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"ReducedGradient expects (G, C) parameters, got shape {tuple(p.shape)}")
                if not is_on_simplex(p.detach(), SIMPLEX_ATOL):
                    raise ValueError("ReducedGradient parameter columns must start on the simplex")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one reduced-gradient step on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ReducedGradient does not support sparse gradients")
                red = reduced_gradient(p, p.grad)
                p.copy_(simplex_step(p, red, group["lr"]))
        return loss


class SoftmaxAssignment(nn.Module):
    """Assignment ``softmax(α, dim=0)`` with logits ``α`` of shape ``(G, C)``.

    docs/METHOD.md's ``α ~ N(0, 0.01)`` is read as standard deviation 0.01 (the convention of
    ``torch.normal`` and of TensorFlow initialisers), not variance 0.01.
    """

    def __init__(
        self,
        num_groups: int,
        num_nodes: int,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.alpha = nn.Parameter(init_std * torch.randn(num_groups, num_nodes, generator=generator))

    @classmethod
    def from_probs(cls, probs: Tensor, floor: float = 1e-12) -> SoftmaxAssignment:
        """Start from a given assignment (e.g. one derived from class similarity): ``α = log p``,
        in ``probs``' dtype and device."""
        module = cls(*probs.shape, init_std=0.0)
        module.alpha = nn.Parameter(probs.detach().clamp_min(floor).log())
        return module

    def forward(self) -> Tensor:
        return torch.softmax(self.alpha, dim=0)


class SimplexAssignment(nn.Module):
    """Assignment held directly as a ``(G, C)`` parameter on the simplex; train it with
    :class:`ReducedGradient` (any other optimizer leaves the simplex).

    The default ``noise`` is ``0.01 / G``, which matches to first order the spread of the
    probabilities of :class:`SoftmaxAssignment`'s default initialisation.
    """

    def __init__(
        self,
        num_groups: int,
        num_nodes: int,
        noise: float | None = None,
        generator: torch.Generator | None = None,
        init: Tensor | None = None,
    ):
        super().__init__()
        if init is None:
            noise = 0.01 / num_groups if noise is None else noise
            init = uniform_init(num_groups, num_nodes, noise, generator)
        elif init.shape != (num_groups, num_nodes) or not is_on_simplex(init, SIMPLEX_ATOL):
            raise ValueError(f"init must be a ({num_groups}, {num_nodes}) matrix with columns on the simplex")
        self.probs = nn.Parameter(init.detach().clone())

    def forward(self) -> Tensor:
        return self.probs


def assignment_with_optimizer(method: str, init: Tensor, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    """An assignment module starting at ``init`` (columns on the simplex) and the optimiser its
    parameterisation calls for: ReducedGradient on the simplex, plain SGD on softmax logits."""
    if method == "reduced":
        module: nn.Module = SimplexAssignment(*init.shape, init=init)
        return module, ReducedGradient(module.parameters(), lr=lr)
    if method == "softmax":
        module = SoftmaxAssignment.from_probs(init)
        return module, torch.optim.SGD(module.parameters(), lr=lr)
    raise ValueError(f"unknown assignment method {method!r}: expected 'reduced' or 'softmax'")
