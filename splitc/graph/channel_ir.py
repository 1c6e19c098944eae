"""The channel IR: which channels of which tensors must share one group assignment.

``build_channel_graph(gm, input_size)`` runs the traced model once on a sample input (batch 1,
eval mode, no grad) and, alongside, runs the op-rule registry on *label tensors* (see
``channel_rules``). The result is a :class:`ChannelIR`:

* **elements**: one integer per channel created by a *source* (a weight layer's output, a
  parameter used as a tensor, the graph input, an opaque op's output);
* **nodes**: elements that must take one group together (connected components of the ties:
  residual adds, SE gates, depthwise and grouped-conv blocks). A node is one column of an
  assignment matrix;
* **spaces** (domains): nodes connected through a common source, i.e. the paper's channel
  spaces closed under ties. ``ir.graph`` is a ``networkx.DiGraph`` over spaces whose edges say
  which space feeds which (through a weight layer or a channel-mixing op);
* **weight layers**, **channel ops** (BN/LN) and **parameter uses**: for every parameter axis,
  the element at each index. Passes (permute, mask, partition) and counting read these; none of
  them re-analyses the graph.

An op without a rule never yields a silently wrong answer: its inputs and outputs become
*opaque* (never permuted, never split) and a warning names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch.utils._pytree import tree_leaves, tree_map_only
import torch.fx as fx

FLAGS = ("opaque", "shared_only")


@dataclass(frozen=True)
class Source:
    """A tensor whose channels are fresh elements ``start .. start+size-1``."""

    index: int
    node: str
    role: str  # layer | param | input | derived | opaque
    start: int
    size: int
    topo: int

    @property
    def elems(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.size)


@dataclass(frozen=True)
class WeightLayer:
    """A conv or linear call: input elements per input index, fresh output elements."""

    name: str            # module qualname (the parameter prefix)
    node: str            # fx node name
    op: str              # conv | linear
    in_elems: np.ndarray
    out_elems: np.ndarray
    conv_groups: int
    taps: int            # kernel elements per weight (kh*kw; 1 for linear)
    positions: int       # output positions per sample (H*W, or tokens)
    has_bias: bool
    topo: int


@dataclass(frozen=True)
class ChannelOp:
    """A per-channel op with parameters (BN, LN): the element of each of its channels."""

    name: str
    node: str
    elems: np.ndarray
    params: tuple[str, ...]   # parameter/buffer names, qualified
    positions: int
    topo: int


@dataclass(frozen=True)
class ParamUse:
    """The element at each index of one axis of a parameter (``dim=None``: every entry)."""

    param: str
    dim: int | None
    labels: np.ndarray
    conv_groups: int = 1


@dataclass
class Space:
    """A channel space (domain): its nodes, sources and flags."""

    id: int
    name: str
    nodes: np.ndarray           # global node ids, in order; index = position within the space
    node_sizes: np.ndarray      # channels each node stands for (max count over one source)
    sources: tuple[int, ...]
    topo: int                   # topo index of its first source
    flags: dict[str, str] = field(default_factory=dict)  # flag -> reason

    @property
    def size(self) -> int:
        return int(self.node_sizes.sum())

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def splittable(self) -> bool:
        return not self.flags and self.role != "param"

    role: str = "activation"


@dataclass
class ChannelIR:
    gm: fx.GraphModule
    input_size: tuple[int, ...]
    sources: list[Source]
    layers: list[WeightLayer]
    channel_ops: list[ChannelOp]
    param_uses: list[ParamUse]
    output_elems: np.ndarray
    node_of: np.ndarray        # element -> global node id
    space_of: np.ndarray       # element -> space id
    node_index: np.ndarray     # element -> index of its node within its space
    spaces: list[Space]
    graph: nx.DiGraph
    node_cells: np.ndarray     # global node -> cell id (nodes covered by the same sources)
    node_first_elem: np.ndarray  # global node -> one of its elements
    atom_key: np.ndarray       # element -> smallest element that is the same channel as it
    topo_of: dict[str, int]
    warnings: list[str]
    barriers: dict[str, list[str]]

    @property
    def class_space(self) -> int:
        return int(self.space_of[self.output_elems[0]])

    def layer(self, name: str) -> WeightLayer:
        return next(layer for layer in self.layers if layer.name == name)

    def node_index_of_node(self, nodes: np.ndarray) -> np.ndarray:
        """Index within its space of each global node id."""
        return self.node_index[self.node_first_elem[nodes]]

    def spaces_of(self, elems: np.ndarray) -> np.ndarray:
        return np.unique(self.space_of[elems])


def as_np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).numpy()
    return np.asarray(x).reshape(-1)


def has_tensor(x: Any) -> bool:
    return bool(flat_tensors(x))


def flat_tensors(x: Any) -> list[torch.Tensor]:
    """The tensors of a nested output or argument tree (torch's pytree walks it)."""
    return [t for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


def map_tensors(x: Any, fn) -> Any:
    return tree_map_only(torch.Tensor, fn, x)
