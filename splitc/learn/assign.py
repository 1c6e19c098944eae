"""Group assignments for every space in a split scope, and SplitNet's loss terms over a model
(docs/METHOD.md §2, §3, §4).

:class:`AssignmentSet` holds one assignment per channel space in ``scope.level_of`` (tied
channels already share one space, so one parameter per space is the whole tie rule). Each space
stores an ``(G_l, num_nodes)`` matrix at *its own* tree level ``l``; a column is a node, and a
node stands for every element (channel, or flattened feature) that ``ir.node_index`` maps to it.

Hierarchy (§4): group ``c`` of level ``l`` is a child of supergroup ``s`` of a coarser level ``k``
exactly when ``c // (G_l // G_k) == s``; that is the tree the partition builds. "A subgroup
assignment's rows summed over the children of s give the assignment of s", so a fine matrix is
read at a coarser level by summing its rows over each supergroup's children
(:meth:`AssignmentSet.matrix_at`). Nothing is ever expanded from coarse to fine: a layer whose
spaces sit at different levels is regularised at the *coarsest* of them, which penalises exactly
the weights the hierarchical split cuts (those that cross supergroups).

:func:`splitnet_regularizers` walks ``ir.layers`` and applies R_W to the layers the split makes
block-diagonal (and to the in-scope part of ``mixed`` ones); output-partitioned and trunk layers
lose no weights, so they get no R_W.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from splitc.graph.channel_ir import ChannelIR, WeightLayer
from splitc.graph.conv_layout import ConvLayout
from splitc.graph.group_tree import HardAssignment, balanced_assignment
from splitc.learn.regularizers import balance_reg, combine_layer_terms, disjoint_reg, group_weight_reg, weight_energy_matrix
from splitc.graph.scope import Scope, layer_kind
from splitc.learn.simplex import SimplexAssignment, SoftmaxAssignment

AssignKind = Literal["softmax", "reduced-gradient", "random"]   # random: SplitNet-Random
ASSIGNMENT_KINDS = get_args(AssignKind)
# Layer kinds whose weights the split cuts, so R_W applies (docs/METHOD.md §4).
CUT_KINDS = ("block-diagonal", "mixed")


class FixedAssignment(nn.Module):
    """A constant assignment held as a buffer: SplitNet-Random's one-hot balanced groups must not
    be trained, yet should move with ``.to(device)`` and live in the ``state_dict``."""

    def __init__(self, probs: Tensor) -> None:
        super().__init__()
        self.register_buffer("probs", probs.detach().clone())

    def forward(self) -> Tensor:
        return self.probs


class AssignmentSet(nn.Module):
    """One assignment module per space in scope; see the module docstring for the hierarchy.

    Build it with :meth:`create`. ``kind`` decides the optimiser: ``softmax`` parameters take any
    optimizer, ``reduced-gradient`` parameters must go to :class:`splitc.learn.simplex.ReducedGradient`,
    and ``random`` has no parameters at all.
    """

    def __init__(self, ir: ChannelIR, scope: Scope, modules: dict[int, nn.Module], kind: str) -> None:
        super().__init__()
        self.ir, self.scope, self.kind = ir, scope, kind
        self.spaces: tuple[int, ...] = tuple(sorted(modules))
        self.by_space = nn.ModuleDict({str(s): modules[s] for s in self.spaces})

    @classmethod
    def create(cls, ir: ChannelIR, scope: Scope, kind: str = "softmax", seed: int = 0) -> AssignmentSet:
        """Initialise every space's assignment: ``softmax`` with α ~ N(0, 0.01), ``reduced-gradient``
        near uniform on the simplex (both seeded, so runs repeat), ``random`` one-hot balanced
        from :func:`splitc.graph.counting.balanced_assignment` (the SplitNet-Random baseline)."""
        if kind not in ASSIGNMENT_KINDS:
            raise ValueError(f"unknown assignment kind {kind!r}; choose from {', '.join(ASSIGNMENT_KINDS)}")
        gen = torch.Generator().manual_seed(seed)
        hard = balanced_assignment(ir, scope, np.random.default_rng(seed)) if kind == "random" else None
        modules: dict[int, nn.Module] = {}
        for space in sorted(scope.level_of):
            G, C = scope.groups_of(space), ir.spaces[space].num_nodes
            if kind == "softmax":
                modules[space] = SoftmaxAssignment(G, C, generator=gen)
            elif kind == "reduced-gradient":
                modules[space] = SimplexAssignment(G, C, generator=gen)
            else:
                onehot = torch.zeros(G, C)
                onehot[torch.as_tensor(hard.groups_of_space[space]), torch.arange(C)] = 1.0
                modules[space] = FixedAssignment(onehot)
        return cls(ir, scope, modules, kind)

    def __contains__(self, space: int) -> bool:
        return str(int(space)) in self.by_space

    def items(self) -> Iterator[tuple[int, Tensor]]:
        """``(space, matrix)`` for every space in scope, in space order."""
        for space in self.spaces:
            yield space, self.matrix(space)

    def matrix(self, space: int) -> Tensor:
        """The ``(G, num_nodes)`` assignment of ``space`` at its own level; columns on the simplex."""
        return self.by_space[str(int(space))]()

    def matrix_at(self, space: int, level: int) -> Tensor:
        """``space``'s assignment read at ``level``: rows summed over each supergroup's children.

        Only coarser (or equal) levels exist: a fine assignment determines its coarse one, not the
        other way round, so asking for a finer level is an error.
        """
        own = self.scope.level_of[int(space)]
        A = self.matrix(space)
        if level == own:
            return A
        G_own, G_to = self.scope.groups[own], self.scope.groups[level]
        if level > own or G_own % G_to:
            raise ValueError(f"space {space} is at level {own} (G={G_own}); it cannot be read at "
                             f"level {level} (G={G_to}): only coarser levels that divide G are defined")
        return A.reshape(G_to, G_own // G_to, A.shape[1]).sum(dim=1)

    def channel_matrix(self, elems: np.ndarray, level: int) -> Tensor | None:
        """``(G_level, len(elems))``: column ``k`` is the assignment of ``elems[k]``'s node.

        The elements may come from several spaces (a concat); each is read at ``level`` with
        :meth:`matrix_at`. Returns None when any element is outside the scope, because such an
        element has no assignment and the caller must decide (drop it, or skip the layer).
        """
        elems = np.asarray(elems)
        spaces = self.ir.space_of[elems]
        if not all(int(s) in self for s in np.unique(spaces)):
            return None
        order = np.argsort(spaces, kind="stable")
        pieces = []
        for space in np.unique(spaces).tolist():
            cols = self.ir.node_index[elems[spaces == space]]
            pieces.append(self.matrix_at(space, level)[:, torch.as_tensor(cols, dtype=torch.long)])
        stacked = torch.cat(pieces, dim=1)  # columns grouped by space, stable within each
        inverse = torch.as_tensor(np.argsort(order, kind="stable"), dtype=torch.long)
        return stacked[:, inverse]

    def hard(self) -> HardAssignment:
        """Each node to its argmax group (docs/METHOD.md §6, harden), as counting and the passes read it."""
        with torch.no_grad():
            return HardAssignment({s: A.argmax(dim=0).cpu().numpy().astype(np.int64)
                                   for s, A in self.items()})

    def soft(self) -> dict[int, np.ndarray]:
        """A detached numpy copy of every space's current assignment (for logging and overlap)."""
        with torch.no_grad():
            return {s: A.detach().cpu().numpy().copy() for s, A in self.items()}


def layer_level(ir: ChannelIR, scope: Scope, layer: WeightLayer) -> int:
    """The tree level a layer's R_W is computed at: the coarsest level among its assigned input
    spaces and its output space (levels only deepen downstream, so this is normally the input's)."""
    spaces = np.concatenate([ir.spaces_of(layer.in_elems), ir.spaces_of(layer.out_elems)])
    return min(scope.level_of[int(s)] for s in spaces if int(s) in scope.level_of)


def dense_conv_weight(W: Tensor, conv_groups: int) -> Tensor:
    """Expand a grouped conv weight ``(out, in/k, *kernel)`` to the dense ``(out, in, *kernel)``
    with zeros off the conv's own blocks, so input columns can be selected by channel index."""
    return ConvLayout(W.shape[0], W.shape[1] * conv_groups, conv_groups).to_dense(W)


def cut_weight(gm: nn.Module, ir: ChannelIR, scope: Scope, layer: WeightLayer
               ) -> tuple[Tensor, np.ndarray, int] | None:
    """``(W, in_elems, conv_groups)``: the weight the split can cut in ``layer`` and the input
    elements its columns read, or None when its kind loses no weights (output-partitioned, trunk).
    A ``mixed`` layer (some inputs shared trunk channels, e.g. a DenseNet concat) keeps its shared
    inputs in every branch, so only its in-scope input columns can be cut: W is that sub-matrix."""
    if layer_kind(ir, scope, layer) not in CUT_KINDS:
        return None
    W = gm.get_submodule(layer.name).weight
    inside = np.isin(ir.space_of[layer.in_elems], list(scope.level_of))
    if inside.all():
        return W, layer.in_elems, layer.conv_groups
    W = dense_conv_weight(W, layer.conv_groups)[:, torch.as_tensor(np.flatnonzero(inside), dtype=torch.long)]
    return W, layer.in_elems[inside], 1


def _cut_operands(gm: nn.Module, ir: ChannelIR, scope: Scope, assignments: AssignmentSet,
                  layer: WeightLayer) -> tuple[Tensor, Tensor, Tensor, int] | None:
    """``(W, P, Q, conv_groups)`` of a layer the split cuts (:func:`cut_weight`), or None.

    P is read per input *index* (``layer.in_elems``), so a linear after a flatten sees each
    channel's assignment repeated over its H·W features."""
    cut = cut_weight(gm, ir, scope, layer)
    if cut is None:
        return None
    W, in_elems, groups = cut
    level = layer_level(ir, scope, layer)
    P = assignments.channel_matrix(in_elems, level)
    Q = assignments.channel_matrix(layer.out_elems, level)
    return W, P.to(W.device), Q.to(W.device), groups


def layer_weight_term(gm: nn.Module, ir: ChannelIR, scope: Scope, assignments: AssignmentSet,
                      layer: WeightLayer, normalize_energy: bool = True) -> Tensor | None:
    """R_W of one layer, or None when its kind loses no weights (output-partitioned, trunk).
    A ``mixed`` layer's term covers its in-scope input columns, normalised by their own energy."""
    operands = _cut_operands(gm, ir, scope, assignments, layer)
    if operands is None:
        return None
    W, P, Q, groups = operands
    return group_weight_reg(W, P, Q, normalize_energy=normalize_energy, conv_groups=groups)


@torch.no_grad()
def cut_energy(gm: nn.Module, ir: ChannelIR, scope: Scope, assignments: AssignmentSet) -> dict[str, float]:
    """Per cut layer, the share of its weight energy that lies between the argmax groups: what
    the split will zero. Near 0 means the run is ready to split; a random assignment of G groups
    leaves about (G-1)/G. ``"total"`` pools every cut layer's energy."""
    shares, cut, whole = {}, 0.0, 0.0
    for layer in ir.layers:
        operands = _cut_operands(gm, ir, scope, assignments, layer)
        if operands is None:
            continue
        W, P, Q, groups = operands
        E = weight_energy_matrix(W.detach().float(), groups)
        between = P.argmax(0)[:, None] != Q.argmax(0)[None, :]
        layer_cut, layer_all = float(E[between].sum()), float(E.sum())
        shares[layer.name if layer.name not in shares else f"{layer.name}@{layer.node}"] = (
            layer_cut / layer_all if layer_all > 0 else 0.0)
        cut, whole = cut + layer_cut, whole + layer_all
    if shares:
        shares["total"] = cut / whole if whole > 0 else 0.0
    return shares


def layer_weight_terms(gm: nn.Module, ir: ChannelIR, scope: Scope, assignments: AssignmentSet,
                       normalize_energy: bool = True) -> list[tuple[WeightLayer, Tensor]]:
    """Every layer call that R_W applies to, with its term, in graph order (a module called
    twice is two calls with different channels, so two terms)."""
    terms = []
    for layer in ir.layers:
        term = layer_weight_term(gm, ir, scope, assignments, layer, normalize_energy)
        if term is not None:
            terms.append((layer, term))
    return terms


def splitnet_regularizers(model_gm: nn.Module, ir: ChannelIR, scope: Scope, assignments: AssignmentSet,
                          *, normalize_energy: bool = True) -> dict[str, Tensor]:
    """``{"R_W", "R_D", "R_E"}`` of docs/METHOD.md §3 for the whole model.

    R_W: per-layer terms combined by :func:`combine_layer_terms` (weighted by their detached
    shares, as the authors' code does); 0 when no layer is cut. R_D and R_E: summed over spaces,
    each at its own level, R_E weighting nodes by ``node_sizes`` so that balance means equal
    channel counts.
    """
    first = next(iter(assignments.items()))[1]
    zero = first.sum() * 0
    terms = [t for _, t in layer_weight_terms(model_gm, ir, scope, assignments, normalize_energy)]
    r_w = combine_layer_terms(terms) if terms else zero
    r_d, r_e = zero, zero
    for space, A in assignments.items():
        sizes = torch.as_tensor(ir.spaces[space].node_sizes, dtype=A.dtype, device=A.device)
        r_d = r_d + disjoint_reg(A)
        r_e = r_e + balance_reg(A, sizes)
    return {"R_W": r_w, "R_D": r_d, "R_E": r_e}


def splitnet_loss(ce: Tensor, regs: dict[str, Tensor],
                  gammas: tuple[float, float, float] = (1.0, 1.0, 10.0)) -> Tensor:
    """``CE + γ_W·R_W + γ_D·R_D + γ_E·R_E`` (docs/METHOD.md §3; the authors' defaults 1, 1, 10).

    Weight decay is left to the optimizer, which is where ``λ‖W‖²`` normally lives.
    """
    gamma_w, gamma_d, gamma_e = gammas
    return ce + gamma_w * regs["R_W"] + gamma_d * regs["R_D"] + gamma_e * regs["R_E"]
