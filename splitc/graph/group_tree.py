"""The group tree of a split: which group of which level holds each channel, and its names.

A split with ``groups = (G0, G1, ...)`` is a tree: level 0 has G0 groups, and group ``c`` of
level ``l`` is a child of group ``c // (G_l // G_{l-1})`` of level ``l - 1``. One module holds
that arithmetic (ancestor, subgraph name) and the two values every later stage reads:

- :class:`HardAssignment`: the group id of every node of every space in scope (plus the fuzzy
  nodes an overlap split duplicates);
- :class:`Placement`: per channel element, its level, group and the groups holding a copy, with
  the one "held" rule (how many of some elements each group of a level holds) that counting,
  masking and partitioning share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.scope import Scope


def ancestor(groups: Sequence[int], level: int, group: int, to_level: int) -> int:
    """The group of ``to_level`` (at most ``level``) on the path of ``group`` of ``level``."""
    return group // (groups[level] // groups[to_level])


def node_name(groups: Sequence[int], level: int, group: int) -> str:
    """The subgraph name of ``group`` at tree ``level``: its path from the top. ``g1`` at level 0;
    ``g0.1`` for group 1 of level 1 under group 0 of level 0; ``trunk`` for level -1."""
    if level < 0:
        return "trunk"
    return "g" + ".".join(str(ancestor(groups, level, group, k)) for k in range(level + 1))


def parent_name(groups: Sequence[int], level: int, group: int) -> str | None:
    """The name of the tree node above ``group`` of ``level`` (None at level 0)."""
    if level <= 0:
        return None
    return node_name(groups, level - 1, ancestor(groups, level, group, level - 1))


@dataclass(frozen=True)
class HardAssignment:
    """Group id of every node, per space in scope (groups of that space's level)."""

    groups_of_space: dict[int, np.ndarray]
    # Overlap (docs/METHOD.md §6): fuzzy nodes duplicated into several groups, per space
    # {node index: all its groups}; empty for a plain split.
    overlap: dict[int, dict[int, tuple[int, ...]]] = field(default_factory=dict)

    def group_sizes(self, ir: ChannelIR, scope: Scope) -> dict[int, list[int]]:
        """Channels per group for each space (node sizes summed; a duplicated node counts in
        every group that holds a copy)."""
        sizes = {}
        for s, g in self.groups_of_space.items():
            node_sizes = ir.spaces[s].node_sizes
            counts = np.bincount(g, weights=node_sizes, minlength=scope.groups_of(s))
            for node, groups in self.overlap.get(s, {}).items():
                for extra in set(groups) - {int(g[node])}:
                    counts[extra] += node_sizes[node]
            sizes[s] = counts.astype(int).tolist()
        return sizes

    def membership(self, space: int) -> np.ndarray:
        """Bit mask of the groups holding each node of ``space``."""
        bits = np.left_shift(1, self.groups_of_space[space].astype(np.int64))
        for node, groups in self.overlap.get(space, {}).items():
            for g in groups:
                bits[node] |= 1 << g
        return bits


def balanced_assignment(ir: ChannelIR, scope: Scope, rng: np.random.Generator | None = None) -> HardAssignment:
    """Contiguous, channel-balanced groups; node order shuffled first when ``rng`` is given
    (the SplitNet-Random baseline)."""
    result = {}
    for space, level in scope.level_of.items():
        sizes = ir.spaces[space].node_sizes
        order = rng.permutation(len(sizes)) if rng is not None else np.arange(len(sizes))
        before = np.cumsum(sizes[order]) - sizes[order]
        groups = np.empty(len(sizes), dtype=np.int64)
        groups[order] = np.minimum((2 * before + sizes[order]) * scope.groups[level] // (2 * sizes.sum()),
                                   scope.groups[level] - 1)
        result[space] = groups
    return HardAssignment(result)



class Placement:
    """Per element: the level and group it lives in (-1 = trunk)."""

    def __init__(self, ir: ChannelIR | None, scope: Scope | None, assignment: HardAssignment | None,
                 num_elements: int | None = None) -> None:
        n = len(ir.space_of) if ir is not None else num_elements
        self.level = np.full(n, -1, dtype=np.int64)
        self.group = np.full(n, -1, dtype=np.int64)
        self.in_branch = np.zeros(n, dtype=bool)
        self.member = np.zeros(n, dtype=np.int64)   # bit g: group g holds a copy
        self.groups = scope.groups if scope else ()
        if scope is None or assignment is None:
            return
        for space, groups in assignment.groups_of_space.items():
            elems = np.flatnonzero(ir.space_of == space)
            self.level[elems] = scope.level_of[space]
            self.group[elems] = groups[ir.node_index[elems]]
            self.member[elems] = assignment.membership(space)[ir.node_index[elems]]
            self.in_branch[elems] = scope.in_branches(space)

    @classmethod
    def unsplit(cls, num_elements: int) -> "Placement":
        return cls(None, None, None, num_elements)

    def held(self, elems: np.ndarray, level: int) -> np.ndarray:
        """How many of ``elems`` each group of ``level`` holds: shared trunk elements are held
        by every group, assigned ones by the group on their path of the tree."""
        target = self.groups[level]
        levels = self.level[elems]
        per_group = np.full(target, int((levels < 0).sum()), dtype=np.int64)
        for lev in np.unique(levels[levels >= 0]).tolist():
            members = self._members(elems[levels == lev], lev)
            if self.groups[lev] <= target:  # coarser: feeds each of its descendants
                per_group += np.repeat(members.sum(axis=0), target // self.groups[lev])
            else:                            # finer: folds into its ancestor (once per element)
                per_group += members.reshape(len(members), target, -1).any(axis=2).sum(axis=0)
        return per_group

    def _members(self, elems: np.ndarray, level: int) -> np.ndarray:
        """(elements, groups of ``level``) bool: which groups hold a copy of each element."""
        return (self.member[elems][:, None] >> np.arange(self.groups[level])) & 1 == 1

    def runs_at(self, elems: np.ndarray) -> int:
        """The level an op on these elements runs at inside the branches, or -1 (trunk)."""
        if not self.in_branch[elems].any():
            return -1
        return int(self.level[elems].max())

    def out_counts(self, elems: np.ndarray, level: int) -> np.ndarray:
        return self._members(elems, level).sum(axis=0)
