"""Pass: permute channels, space by space, through the channel graph's own mapping.

Contract
  before: a GraphModule and its ChannelIR; an order (rank per node) for some spaces.
  after:  a new GraphModule whose parameters and buffers are reordered so that, in every
          permuted space, each source's channels follow the given node order. The function is
          unchanged, except that the logits come out in the new class order
          (:func:`output_order` gives it), which the merge undoes.
  changes: parameter values only; the graph is untouched.

Channels are reordered per source (a weight layer's output, a parameter used as a tensor),
within cells (nodes covered by the same sources), by node rank, stably. Every other place that
holds a copy of those channels (the next layer's input dim, a BN's vectors, the features a
flatten spreads over, the slots of a concat, a shuffle) follows by matching element ids, so no
op-specific code is needed here: the labels already encode concat offsets, flatten strides and
shuffles. The same pass makes groups contiguous for the split (ranks = group ids).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.conv_layout import ConvLayout


@dataclass(frozen=True)
class ChannelPermutation:
    """``sigma[e]``: the element whose old value now sits where element ``e`` sat."""

    sigma: np.ndarray


def permutation_from_ranks(ir: ChannelIR, ranks: dict[int, np.ndarray]) -> ChannelPermutation:
    """Move node contents so that, in each space's first source, nodes follow ``ranks``.

    The permutation is a bijection rho on *nodes* inside each cell: node n takes over the
    content of node rho(n). Each source then reorders its slots accordingly (the k-th slot of
    n takes the k-th slot of rho(n)), so every tie between sources stays consistent however
    differently they order their channels (a shuffle, a concat).
    """
    rho = np.arange(len(ir.node_cells))
    for space, space_ranks in ranks.items():
        _node_bijection(ir, space, np.asarray(space_ranks), rho)
    sigma = np.arange(len(ir.space_of))
    for src in ir.sources:
        elems = src.elems
        if int(ir.space_of[elems[0]]) in ranks:
            sigma[elems] = follow_nodes(ir.node_of[elems], ir.atom_key[elems], rho, elems)
    return ChannelPermutation(sigma)


def _node_bijection(ir: ChannelIR, space: int, ranks: np.ndarray, rho: np.ndarray) -> None:
    """Per cell: the nodes in the order the space's first source lists them take the contents
    of the same nodes sorted (stably) by rank."""
    info = ir.spaces[space]
    first_slot = {}
    for src_index in info.sources:
        for g in ir.node_of[ir.sources[src_index].elems].tolist():
            first_slot.setdefault(g, len(first_slot))
    cells = ir.node_cells[info.nodes]
    for cell in np.unique(cells):
        nodes = info.nodes[cells == cell]
        listed = nodes[np.argsort([first_slot[int(g)] for g in nodes], kind="stable")]
        by_rank = listed[np.argsort(ranks[ir.node_index_of_node(listed)], kind="stable")]
        rho[listed] = by_rank


def follow_nodes(nodes: np.ndarray, atoms: np.ndarray, rho: np.ndarray, elems: np.ndarray) -> np.ndarray:
    """For each slot (node n, rank r of its channel among this source's channels of n): the
    element at rank r of rho(n). Ranks order channels by their identity (the smallest element
    tied to them), not by slot, so every source pairs the same channels however it orders them."""
    order = np.lexsort((np.arange(len(elems)), atoms, nodes))
    rank = np.empty(len(elems), dtype=np.int64)
    sorted_nodes = nodes[order]
    rank[order] = np.arange(len(elems)) - np.searchsorted(sorted_nodes, sorted_nodes, side="left")
    lookup = {(int(g), int(r)): int(e) for g, r, e in zip(nodes, rank, elems)}
    return np.array([lookup[(int(rho[g]), int(r))] for g, r in zip(nodes, rank)])


def _occurrence(values: np.ndarray) -> np.ndarray:
    """How many times each value has appeared before, position by position."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    occurrence = np.empty(len(values), dtype=np.int64)
    occurrence[order] = np.arange(len(values)) - np.searchsorted(sorted_values, sorted_values, side="left")
    return occurrence


def random_ranks(ir: ChannelIR, spaces, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """A random node order for each of ``spaces``."""
    return {s: rng.permutation(ir.spaces[s].num_nodes) for s in spaces}


def source_index(labels: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """For each position p, the old position holding sigma(labels[p]) at the same occurrence."""
    flat = labels.ravel()
    by_label = np.argsort(flat, kind="stable")
    sorted_labels = flat[by_label]
    occurrence = _occurrence(flat)
    target = sigma[flat]
    start = np.searchsorted(sorted_labels, target, side="left")
    found = start + occurrence
    if (found >= len(flat)).any() or (sorted_labels[np.minimum(found, len(flat) - 1)] != target).any():
        raise ValueError("a permuted element has no matching slot: the channel mapping is inconsistent")
    return by_label[found]


def permute_channels(gm: fx.GraphModule, ir: ChannelIR, perm: ChannelPermutation) -> fx.GraphModule:
    """Entry point: a copy of ``gm`` with every parameter and buffer permuted by ``perm``."""
    new = copy.deepcopy(gm)
    state = new.state_dict()
    state.update(permuted_tensors(ir, state, perm))
    new.load_state_dict(state)
    return new


def permuted_tensors(ir: ChannelIR, state: dict[str, torch.Tensor], perm: ChannelPermutation
                     ) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` that ``perm`` changes, permuted."""
    return dict(iter_permuted(ir, state, perm))


def iter_permuted(ir: ChannelIR, state: dict[str, torch.Tensor], perm: ChannelPermutation):
    """Yield ``(name, permuted tensor)`` one at a time (for in-place use on huge models)."""
    uses: dict[str, dict] = defaultdict(dict)
    for use in ir.param_uses:
        uses[use.param].setdefault(use.dim, use)
    for name, by_dim in uses.items():
        if name in state and _touched(by_dim.values(), perm):
            yield name, _permute_tensor(state[name], by_dim, perm)


def _touched(uses, perm: ChannelPermutation) -> bool:
    return any((perm.sigma[u.labels.ravel()] != u.labels.ravel()).any() for u in uses)


def _permute_tensor(t: torch.Tensor, by_dim: dict, perm: ChannelPermutation) -> torch.Tensor:
    if None in by_dim:  # a parameter used as a tensor: every entry is labelled
        idx = torch.as_tensor(source_index(by_dim[None].labels, perm.sigma))
        return t.reshape(-1)[idx].reshape(t.shape).clone()
    grouped = by_dim.get(1)
    if grouped is not None and grouped.conv_groups > 1:
        return _permute_grouped(t, by_dim, perm)
    for dim, use in sorted(by_dim.items()):
        t = t.index_select(dim, torch.as_tensor(source_index(use.labels, perm.sigma)))
    return t.clone()


def _permute_grouped(w: torch.Tensor, by_dim: dict, perm: ChannelPermutation) -> torch.Tensor:
    """Grouped conv weight: permute in the dense (out, in) layout, then compress back."""
    k = by_dim[1].conv_groups
    layout = ConvLayout(w.shape[0], w.shape[1] * k, k)
    dense = layout.to_dense(w)
    dense = dense.index_select(1, torch.as_tensor(source_index(by_dim[1].labels, perm.sigma)))
    if 0 in by_dim:
        dense = dense.index_select(0, torch.as_tensor(source_index(by_dim[0].labels, perm.sigma)))
    try:
        return layout.from_dense(dense).clone()
    except ValueError:
        raise ValueError("grouped conv permutation moved weights across conv groups") from None



def output_order(ir: ChannelIR, perm: ChannelPermutation) -> np.ndarray:
    """New logit position p holds old logit ``order[p]``."""
    return source_index(ir.output_elems, perm.sigma)


def permutable_spaces(ir: ChannelIR) -> list[int]:
    """Spaces whose channels may be reordered (not opaque, not the fixed input)."""
    return [s.id for s in ir.spaces if "opaque" not in s.flags]


def group_contiguous_ranks(assignment) -> dict[int, np.ndarray]:
    """Ranks that order each space's nodes by group, stably: after :func:`permutation_from_ranks`
    every group is contiguous in each space's first source (and in every source that lists its
    nodes in the same order), which is what the split wants."""
    return {space: np.argsort(np.argsort(groups, kind="stable"), kind="stable")
            for space, groups in assignment.groups_of_space.items()}
