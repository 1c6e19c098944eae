"""Freeze a ChannelGraphBuilder into a ChannelIR: components, spaces, cells, space graph."""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from splitc.graph.channel_builder import ChannelGraphBuilder
from splitc.graph.channel_ir import ChannelIR, Space
from splitc.graph.channel_rules import channel_elems
from splitc.core.errors import SplitcError


def _components(n: int, pairs: list[np.ndarray]) -> np.ndarray:
    """Connected components over ``n`` elements given (2, k) pair arrays."""
    if pairs:
        edges = np.concatenate(pairs, axis=1)
    else:
        edges = np.zeros((2, 0), dtype=np.int64)
    adj = coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(n, n))
    return connected_components(adj, directed=False)[1]


def _shared_parameter_ties(builder: ChannelGraphBuilder) -> list[np.ndarray]:
    """A parameter used twice (weight sharing) must be permuted once: tie its two label sets."""
    first: dict[tuple[str, int | None], np.ndarray] = {}
    ties = []
    for use in builder.param_uses:
        key = (use.param, use.dim)
        if key in first and first[key].shape == use.labels.shape:
            ties.append(np.stack([first[key].ravel(), use.labels.ravel()]))
        first.setdefault(key, use.labels)
    return ties


def finish(builder: ChannelGraphBuilder, gm: fx.GraphModule, input_size: tuple[int, ...],
           output: torch.Tensor) -> ChannelIR:
    n = builder.count
    same = builder.ties + _shared_parameter_ties(builder)
    atom_of = _components(n, same)
    atom_key = _identity_keys(builder, atom_of, n)
    together = same + builder.group_ties
    node_of = _components(n, together)
    in_source = [np.stack([s.elems[:-1], s.elems[1:]]) for s in builder.sources if s.size > 1]
    raw_space = _components(n, together + in_source)
    output_elems = _output_elems(output)
    spaces, space_of = _make_spaces(builder, node_of, raw_space)
    node_index = np.zeros(n, dtype=np.int64)
    for space in spaces:
        lookup = {int(g): i for i, g in enumerate(space.nodes)}
        elems = np.flatnonzero(space_of == space.id)
        node_index[elems] = [lookup[int(g)] for g in node_of[elems]]
    return ChannelIR(
        gm=gm, input_size=input_size, sources=builder.sources, layers=builder.layers,
        channel_ops=builder.channel_ops, param_uses=builder.param_uses, output_elems=output_elems,
        node_of=node_of, space_of=space_of, node_index=node_index, spaces=spaces,
        graph=_space_graph(builder, spaces, space_of), node_cells=_cells(builder, node_of),
        node_first_elem=_first_elem(node_of), atom_key=atom_key[atom_of], topo_of=builder.topo_of, warnings=builder.warnings,
        barriers=builder.barriers,
    )


def _output_elems(output: torch.Tensor) -> np.ndarray:
    elems = channel_elems(output, output.dim() - 1) if output.dim() >= 2 else None
    if elems is None or output.dim() != 2:
        raise SplitcError(
            f"the model output has shape {tuple(output.shape)} (batch 1); splitc expects "
            "(batch, classes) logits. Wrap the model so that forward returns them."
        )
    return elems.numpy()


def _make_spaces(builder: ChannelGraphBuilder, node_of: np.ndarray, raw_space: np.ndarray
                 ) -> tuple[list[Space], np.ndarray]:
    """Renumber raw components by the topo order of their first source and describe them."""
    by_raw: dict[int, list] = defaultdict(list)
    for src in builder.sources:
        by_raw[int(raw_space[src.start])].append(src)
    order = sorted(by_raw, key=lambda r: (by_raw[r][0].topo, by_raw[r][0].start))
    space_of = np.empty(len(raw_space), dtype=np.int64)
    spaces = []
    for new_id, raw in enumerate(order):
        srcs = by_raw[raw]
        elems = np.concatenate([s.elems for s in srcs])
        space_of[elems] = new_id
        spaces.append(_describe_space(new_id, srcs, elems, node_of, builder))
    return spaces, space_of


def _describe_space(space_id: int, srcs: list, elems: np.ndarray, node_of: np.ndarray,
                    builder: ChannelGraphBuilder) -> Space:
    nodes_sorted = np.unique(node_of[elems])
    first_elem = np.full(int(node_of.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_elem, node_of[elems], elems)
    nodes = nodes_sorted[np.argsort(first_elem[nodes_sorted], kind="stable")]
    sizes = np.zeros(len(nodes), dtype=np.int64)
    pos = np.zeros(len(first_elem), dtype=np.int64)
    pos[nodes] = np.arange(len(nodes))
    for src in srcs:
        ids, counts = np.unique(node_of[src.elems], return_counts=True)
        sizes[pos[ids]] = np.maximum(sizes[pos[ids]], counts)
    flags = {}
    for flag in ("opaque", "shared_only"):
        hit = next((reason for flagged, reason in builder.flags[flag]
                    if np.isin(flagged, elems, assume_unique=True).any()), None)
        if hit is not None:
            flags[flag] = hit
    role = "param" if all(s.role == "param" for s in srcs) else "activation"
    first = min(srcs, key=lambda s: (s.topo, s.start))
    name = _space_name(first, builder)
    return Space(space_id, name, nodes, sizes, tuple(s.index for s in srcs), first.topo, flags, role)


def _space_name(src, builder: ChannelGraphBuilder) -> str:
    node = next(n for n in builder.gm.graph.nodes if n.name == src.node)
    return str(node.target) if node.op in ("call_module", "get_attr") else node.name


def _space_graph(builder: ChannelGraphBuilder, spaces: list[Space], space_of: np.ndarray) -> nx.DiGraph:
    """Which space feeds which, through a weight layer or a channel-mixing op."""
    graph = nx.DiGraph()
    for space in spaces:
        graph.add_node(space.id, name=space.name, size=space.size, nodes=space.num_nodes)
    for in_elems, src_index in builder.edges:
        dst = int(space_of[builder.sources[src_index].start])
        via = builder.sources[src_index].node
        for src in np.unique(space_of[np.asarray(in_elems, dtype=np.int64)]):
            if int(src) != dst:
                graph.add_edge(int(src), dst, via=via)
    return graph


def _identity_keys(builder: ChannelGraphBuilder, atom_of: np.ndarray, n: int) -> np.ndarray:
    """A rank per atom (same-channel class) that every source orders the atom by.

    Plain atoms rank by their smallest element. The outputs of a conv-group block rank right
    after the block's input channel (key + offset), so a block keeps its place among its node's
    channels however a shuffle reordered the input: each source then pairs the same channels.
    """
    n_atoms = int(atom_of.max()) + 1 if n else 0
    first = np.full(n_atoms, n, dtype=np.int64)
    np.minimum.at(first, atom_of, np.arange(n))
    keys: list[tuple[int, ...]] = [(int(e),) for e in first]
    for anchor, outs in builder.block_anchors:  # creation order: anchors are final already
        base = keys[atom_of[anchor]]
        for offset, out in enumerate(outs.tolist()):
            if first[atom_of[out]] == out:  # this output defines its atom's key
                keys[atom_of[out]] = base + (offset,)
    order = sorted(range(n_atoms), key=keys.__getitem__)
    rank = np.empty(n_atoms, dtype=np.int64)
    rank[order] = np.arange(n_atoms)
    return rank


def _first_elem(node_of: np.ndarray) -> np.ndarray:
    first = np.zeros(int(node_of.max()) + 1 if len(node_of) else 0, dtype=np.int64)
    first[node_of[::-1]] = np.arange(len(node_of))[::-1]
    return first


def _cells(builder: ChannelGraphBuilder, node_of: np.ndarray) -> np.ndarray:
    """Nodes covered by exactly the same sources and read by exactly the same parameter uses,
    with the same multiplicities, form a cell. Permutations stay inside cells, so every source
    is reordered consistently with its ties, and a chunk or slice keeps its channels in place.

    Vectorised: each (owner, multiplicity) pair gets a random 64-bit key and a node's
    signature is the wrapping sum of its keys (collisions have probability ~2^-64 per pair).
    """
    n_nodes = int(node_of.max()) + 1 if len(node_of) else 0
    signature = np.zeros(n_nodes, dtype=np.uint64)
    rng = np.random.default_rng(0x5EED)
    owners = [s.elems for s in builder.sources] + [u.labels.ravel() for u in builder.param_uses]
    keys = rng.integers(1, 2**63, size=len(owners), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for key, elems in zip(keys, owners):
            ids, counts = np.unique(node_of[elems], return_counts=True)
            signature[ids] += key * counts.astype(np.uint64) + key // np.uint64(3)
    return np.unique(signature, return_inverse=True)[1].astype(np.int64)
