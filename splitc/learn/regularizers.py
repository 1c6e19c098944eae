"""SplitNet's regularizers as pure tensor functions (docs/METHOD.md §3).

They know nothing about models: a caller hands in a weight tensor and the assignment matrices of
its input and output channel spaces.

Conventions
- An assignment matrix ``A`` has shape ``(G, C)``: column ``i`` is node ``i``'s distribution over
  the ``G`` groups, so every column lies on the probability simplex.
- ``P`` is the assignment of a layer's input space, shape ``(G, in)``; ``Q`` of its output space,
  shape ``(G, out)``.
- The weight energy matrix is oriented ``(in, out)``, like the paper's ``W`` whose rows ``i`` are
  input channels and whose columns ``j`` are output channels: ``E[i, j] = Σ_taps W[j, i, taps]²``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from splitc.graph.conv_layout import ConvLayout

# Added inside every square root of R_W, so that its gradient stays finite where a row or column
# of inter-group weights is exactly zero (the very point R_W drives towards).
DEFAULT_EPS = 1e-12
# Smallest total energy divided by; only an all-zero layer ever reaches it.
_TINY_ENERGY = 1e-30


def weight_energy_matrix(W: Tensor, conv_groups: int = 1) -> Tensor:
    """Collapse a linear ``(out, in)`` or conv ``(out, in/groups, *kernel)`` weight to ``E (in, out)``.

    ``E[i, j]`` is the squared norm of all weights from input channel ``i`` to output channel ``j``
    (the kernel taps are summed). A grouped conv (``conv_groups > 1``) is expanded into the dense
    matrix, with zeros where the conv has no weights, so that R_W sees its real connectivity.
    """
    if W.dim() < 2:
        raise ValueError(f"weight must have at least 2 dims (out, in, ...), got shape {tuple(W.shape)}")
    energy = W.pow(2).flatten(2).sum(-1) if W.dim() > 2 else W.pow(2)  # (out, in_per_group)
    if conv_groups == 1:
        return energy.t()
    out, in_per = energy.shape
    if conv_groups < 1 or out % conv_groups:
        raise ValueError(f"out channels {out} not divisible by conv_groups={conv_groups}")
    return ConvLayout(out, in_per * conv_groups, conv_groups).to_dense(energy).t()


def group_weight_reg(
    W: Tensor,
    P: Tensor,
    Q: Tensor,
    *,
    normalize_energy: bool = True,
    conv_groups: int = 1,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Group-lasso penalty R_W on the inter-group weights of one layer (docs/METHOD.md §3).

    ``R_W = Σ_g [ Σ_i (1−p_gi)·‖W_{i,:} ⊙ q_g‖₂ + Σ_j (1−q_gj)·‖W_{:,j} ⊙ p_g‖₂ ]``.

    Reading of ``W ⊙ q_g``: ``q_g`` masks the weights elementwise, so it is squared inside the
    norm, and a conv's kernel taps belong to the norm:
    ``‖W_{i,:} ⊙ q_g‖₂ = sqrt(Σ_j q_gj² · E[i, j])``.

    ``normalize_energy`` divides by the layer's own ``sqrt(Σ W²)``, without detaching it. That
    makes R_W invariant to the scale of ``W`` (``R_W(cW) = R_W(W)`` for ``c > 0``), so a conv
    followed by batch norm cannot lower R_W by shrinking all its weights (docs/METHOD.md §8); only
    moving energy out of the inter-group blocks helps. ``eps`` is then relative to that energy.
    """
    E = weight_energy_matrix(W, conv_groups)
    _check_assignments(E, P, Q)
    if normalize_energy:
        E = E / E.sum().clamp_min(_TINY_ENERGY)
    E = E.to(P.dtype)
    row_norms = torch.sqrt(Q.pow(2) @ E.t() + eps)  # (G, in): input row i, weighted by q_g
    col_norms = torch.sqrt(P.pow(2) @ E + eps)  # (G, out): output column j, weighted by p_g
    return ((1 - P) * row_norms).sum() + ((1 - Q) * col_norms).sum()


def _check_assignments(E: Tensor, P: Tensor, Q: Tensor) -> None:
    """Raise on assignment shapes that do not fit the ``(in, out)`` energy matrix."""
    n_in, n_out = E.shape
    if P.dim() != 2 or Q.dim() != 2 or P.shape[0] != Q.shape[0]:
        raise ValueError(f"P and Q must be (G, C) with the same G, got {tuple(P.shape)}, {tuple(Q.shape)}")
    if P.shape[1] != n_in or Q.shape[1] != n_out:
        raise ValueError(
            f"weight has {n_in} in / {n_out} out channels but P is {tuple(P.shape)}, Q is {tuple(Q.shape)}"
        )


def disjoint_reg(A: Tensor) -> Tensor:
    """R_D = Σ_{g<g'} ⟨a_g, a_g'⟩, divided by ``C·(G−1)/(2G)`` as in the authors' code.

    With that divisor R_D is 1 at the uniform assignment and 0 for a hard (one-hot) one.
    A single group (G = 1) has no pairs, so R_D is 0.
    """
    G, C = A.shape
    if G < 2:
        return A.sum() * 0
    gram = A @ A.t()
    pairs = (gram.sum() - gram.diagonal().sum()) / 2
    return pairs / (C * (G - 1) / (2 * G))


def balance_reg(A: Tensor, node_weights: Tensor | None = None) -> Tensor:
    """R_E = Σ_g (Σ_i w_i·a_gi)², divided by ``(Σ_i w_i)²/G`` (``C²/G`` for unit weights).

    ``node_weights`` lets a node that stands for several channels count that many times, so that
    group sizes are channel counts. With this divisor R_E is not 0 at its optimum: it is at least
    1 (Cauchy–Schwarz, since the group sizes sum to ``Σ w``), with equality exactly when every
    group has the same size.
    """
    G, C = A.shape
    if node_weights is None:
        sizes = A.sum(dim=1)
        total = float(C)
    else:
        if node_weights.shape != (C,):
            raise ValueError(f"node_weights must have shape ({C},), got {tuple(node_weights.shape)}")
        node_weights = node_weights.to(A.dtype)
        sizes = A @ node_weights
        total = node_weights.sum()
    return sizes.pow(2).sum() / (total**2 / G)


def combine_layer_terms(terms: list[Tensor]) -> Tensor:
    """Combine per-layer R_W terms the way the authors' code does: ``Σ_l (r_l / Σ_k r_k)·r_l``.

    The weights ``r_l / Σ_k r_k`` are detached, so each layer's gradient is scaled by its share
    of the total: the layers that still carry the most inter-group weight get the strongest push.
    Terms are non-negative; if all are 0 the result is 0 with zero gradient (no host sync to
    special-case it).
    """
    if not terms:
        raise ValueError("combine_layer_terms needs at least one term")
    r = torch.stack([t.reshape(()) for t in terms])
    weights = r.detach() / r.detach().sum().clamp_min(_TINY_ENERGY)
    return (weights * r).sum()
