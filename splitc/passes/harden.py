"""Pass: harden soft group assignments into one group per node (docs/METHOD.md section 6).

Contract
  before: a ChannelIR, its Scope, and a soft assignment per space in scope: a matrix of shape
          (G of the space's level, number of nodes of the space) whose columns lie on the
          probability simplex (softmax or reduced-gradient output; a torch tensor or an array).
  after:  a :class:`HardenResult`: the :class:`~splitc.graph.counting.HardAssignment` taking every
          node to its argmax group, and, when ``overlap`` is given, the *fuzzy* nodes (two or
          more groups above the threshold) with those groups.
  changes: nothing; no model is touched, and nothing is re-balanced.

Hardening is a pure argmax on purpose: re-balancing here would silently move channels the
learning put elsewhere, and the counts reported for the split would no longer be the learned
ones. Fuzzy nodes are only recorded; duplicating them into each of their groups is the
partition pass's job. A space whose argmax leaves a group with no node is an error, not a
split: that branch would compute nothing in that space and the tree would be broken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.group_tree import HardAssignment
from splitc.core.errors import SplitcError
from splitc.graph.scope import Scope

FuzzyNode = tuple[int, tuple[int, ...]]   # (node index within its space, groups above threshold)


@dataclass(frozen=True)
class HardenResult:
    """The hard split and, with an overlap threshold, the nodes that several groups share.

    ``fuzzy[space]`` lists ``(node_index, groups)`` for every node of ``space`` where two or
    more groups exceed ``overlap`` (groups ascending); it has an entry (maybe empty) for every
    space in scope when ``overlap`` is set, and is empty when it is not.
    """

    assignment: HardAssignment
    fuzzy: dict[int, list[FuzzyNode]] = field(default_factory=dict)
    overlap: float | None = None

    @property
    def num_fuzzy(self) -> int:
        return sum(len(nodes) for nodes in self.fuzzy.values())


def harden(ir: ChannelIR, scope: Scope, soft: dict[int, np.ndarray | torch.Tensor],
           overlap: float | None = None) -> HardenResult:
    """Entry point: argmax group per node for every space in scope; fuzzy nodes on request."""
    _check_overlap(overlap)
    _check_spaces(ir, scope, soft)
    groups_of_space: dict[int, np.ndarray] = {}
    fuzzy: dict[int, list[FuzzyNode]] = {}
    for space in sorted(scope.level_of):
        matrix = _as_matrix(ir, scope, space, soft[space])
        groups = matrix.argmax(axis=0).astype(np.int64)
        _check_no_empty_group(ir, space, groups, matrix.shape[0])
        groups_of_space[space] = groups
        if overlap is not None:
            fuzzy[space] = fuzzy_nodes(matrix, overlap)
    return HardenResult(HardAssignment(groups_of_space), fuzzy, overlap)


def fuzzy_nodes(matrix: np.ndarray, threshold: float) -> list[FuzzyNode]:
    """Columns of a (G, nodes) assignment where two or more groups exceed ``threshold``.

    Shared with learning, which freezes a space once few of its nodes are fuzzy.
    """
    above = np.asarray(matrix) > threshold
    return [(int(node), tuple(np.flatnonzero(above[:, node]).tolist()))
            for node in np.flatnonzero(above.sum(axis=0) >= 2)]


def _check_overlap(overlap: float | None) -> None:
    """Two groups can both exceed a threshold only below 0.5 (columns sum to one)."""
    if overlap is not None and not 0.0 < overlap < 0.5:
        raise SplitcError(f"overlap threshold must lie in (0, 0.5), got {overlap}; two groups of "
                          "one node can only both exceed a threshold below 0.5 (0.1 is usual).")


def _check_spaces(ir: ChannelIR, scope: Scope, soft: dict) -> None:
    """The soft assignment must cover exactly the scope: a stale file or another scope is a
    user mistake that would otherwise surface as a wrong split much later."""
    missing = sorted(set(scope.level_of) - set(soft))
    extra = sorted(set(soft) - set(scope.level_of))
    if missing:
        s = ir.spaces[missing[0]]
        raise SplitcError(f"no soft assignment for space {s.id} ({s.name}), which is in the split "
                          f"scope ({len(missing)} such spaces); learn with the same scope options.")
    if extra:
        raise SplitcError(f"soft assignment given for space {extra[0]}, which is not in the split "
                          f"scope ({len(extra)} such spaces); learn with the same scope options.")


def _as_matrix(ir: ChannelIR, scope: Scope, space: int, value: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float numpy (G, nodes) matrix, checked against the space and its level."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    matrix = np.asarray(value, dtype=np.float64)
    s = ir.spaces[space]
    expected = (scope.groups_of(space), s.num_nodes)
    if matrix.shape != expected:
        raise SplitcError(f"soft assignment of space {s.id} ({s.name}) has shape {matrix.shape}, "
                          f"expected {expected} (groups x nodes); learn with the same scope options.")
    if not np.isfinite(matrix).all():
        raise SplitcError(f"soft assignment of space {s.id} ({s.name}) has NaN or infinite "
                          "entries; learning diverged: lower the assignment learning rate.")
    return matrix


def _check_no_empty_group(ir: ChannelIR, space: int, groups: np.ndarray, num_groups: int) -> None:
    empty = np.flatnonzero(np.bincount(groups, minlength=num_groups) == 0).tolist()
    if empty:
        s = ir.spaces[space]
        raise SplitcError(f"space {s.id} ({s.name}): group(s) {', '.join(map(str, empty))} of "
                          f"{num_groups} got no channel after hardening, so that branch would be "
                          "empty; train the assignments longer or raise the balance weight "
                          "(gamma_E) so every group keeps channels.")
