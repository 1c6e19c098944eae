"""Where every fx node runs in a split, and which of its positions each subgraph holds.

Partition needs, for every fx node, the element labels of its output (which channel sits at
each position). The ChannelIR does not keep them (they are as big as the activations), so
:func:`record_labels` replays the same label interpretation once more and keeps only what
partition reads: the labels of nodes that touch an assigned element, the shape of every tensor,
and the real value of every non-tensor node (sizes that reshapes take as arguments). Element
ids come out identical to the IR's because the interpretation is deterministic; that is
checked, not assumed.

A tree node is ``(level, group)``; the trunk is level -1. A subgraph *holds* an element when
it is shared trunk (unassigned) or assigned to a group on its path of the tree: the rule the
mask pass and the counting function use (``Placement``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from splitc.graph.channel_builder import ChannelGraphBuilder

from splitc.graph.channel_graph import LabelInterpreter

from splitc.graph.channel_ir import ChannelIR, flat_tensors, has_tensor
from splitc.graph.group_tree import Placement
from splitc.graph.opkinds import Kind, kind_of


@dataclass
class NodeInfo:
    """What partition knows about one fx node's output."""

    level: int | None            # -1 trunk, tree level, None: no tensor (free to recompute)
    shape: Any                   # tensor shape (batch 1), a tuple of those, or None
    labels: Any = None           # label tensor(s), kept only when an element is assigned
    value: Any = None            # the real value of a non-tensor node


class _Recorder(LabelInterpreter):
    def __init__(self, gm: fx.GraphModule, builder: ChannelGraphBuilder, place: Placement) -> None:
        super().__init__(gm, builder)
        self.place = place
        self.info: dict[str, NodeInfo] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op == "get_attr" and not (isinstance(out, torch.Tensor) and out.is_floating_point()):
            self.info[n.name] = NodeInfo(None, None, value=out)  # an index table: a constant
        elif n.op != "output":
            self.info[n.name] = self._describe(out, self.labels.get(n))
        return out

    def _describe(self, out: Any, labels: Any) -> NodeInfo:
        tensors = flat_tensors(labels) if has_tensor(out) else []
        if not tensors:
            return NodeInfo(None, None, value=out)
        elems = np.unique(np.concatenate([t.reshape(-1).numpy() for t in tensors]))
        level = self.place.runs_at(elems) if len(elems) else -1
        assigned = bool((self.place.level[elems] >= 0).any()) if len(elems) else False
        shape = _map(out, lambda t: tuple(t.shape))
        return NodeInfo(level, shape, labels=labels if assigned else None)


def record_labels(gm: fx.GraphModule, ir: ChannelIR, place: Placement) -> dict[str, NodeInfo]:
    """Run the label interpretation of ``gm`` again and keep what partition needs."""
    builder = ChannelGraphBuilder(gm)
    recorder = _Recorder(gm, builder, place)
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            recorder.run(torch.randn(1, *ir.input_size))
    finally:
        gm.train(was_training)
    if builder.count != len(ir.space_of):
        raise RuntimeError("the label replay created a different number of elements than the "
                           "channel IR: the graph changed since it was analysed")
    return recorder.info


def held(place: Placement, elems: np.ndarray, level: int, group: int) -> np.ndarray:
    """Bool per element: does tree node ``(level, group)`` hold it? Shared trunk elements are
    held everywhere; an assigned element by the nodes on the path of any group holding a copy
    (one group, or several for a duplicated fuzzy node)."""
    elems = np.asarray(elems)
    if level < 0:
        return np.ones(elems.shape, dtype=bool)
    groups = np.asarray(place.groups)
    e_level = place.level[elems]
    shared = e_level < 0
    g_node = groups[level]
    g_elem = groups[np.maximum(e_level, 0)]
    coarse = np.minimum(g_node, g_elem)
    width = g_elem // coarse                       # element groups per coarse group
    node_folded = group // (g_node // coarse)
    window = ((np.int64(1) << width) - 1) << (node_folded * width)
    return shared | ((place.member[elems] & window) != 0)


@dataclass(frozen=True)
class Box:
    """The positions of a tensor one subgraph holds: one index list per dim (batch excluded)."""

    index: tuple[np.ndarray, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(i) for i in self.index)

    def flat_positions(self, full_shape: tuple[int, ...]) -> np.ndarray:
        """Flat (per-sample) positions of the held entries, in row-major order."""
        grids = np.meshgrid(*self.index, indexing="ij")
        return np.ravel_multi_index(tuple(g.ravel() for g in grids), full_shape)


def full_box(shape: tuple[int, ...]) -> Box:
    return Box(tuple(np.arange(s) for s in shape[1:]))


def box_of(place: Placement, info: NodeInfo, level: int, group: int) -> Box:
    """The held positions of a tensor node (batch 1 labels), which must form a box."""
    if info.labels is None or level < 0:
        return full_box(info.shape)
    return Box(grid_of(held(place, info.labels.numpy(), level, group)[0]))


def grid_of(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per dim, the indices where ``mask`` has a True entry; the True entries must be exactly
    that sub-grid (a branch holds whole channels, so they always are)."""
    index = tuple(np.flatnonzero(mask.any(axis=tuple(d for d in range(mask.ndim) if d != dim)))
                  for dim in range(mask.ndim))
    if int(np.prod([len(i) for i in index])) != int(mask.sum()):
        raise ValueError("the channels a branch holds do not form a sub-grid of the tensor")
    return index


def _map(x: Any, fn) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_map(v, fn) for v in x) if not hasattr(x, "_fields") else tuple(_map(v, fn) for v in x)
    return None


@dataclass
class PartitionContext:
    """What partition and every subgraph builder read: the graph, its IR, the placement."""

    gm: fx.GraphModule
    ir: ChannelIR
    place: Placement
    info: dict[str, NodeInfo]
    groups: tuple[int, ...]
    merge_module: fx.GraphModule | None = None

    def __post_init__(self) -> None:
        self.modules = dict(self.gm.named_modules())
        self.layer_of = {layer.node: layer for layer in self.ir.layers}
        self.channel_op_of = {op.node: op for op in self.ir.channel_ops}

    def is_reshape(self, n: fx.Node) -> bool:
        return n.op in ("call_function", "call_method", "call_module") and kind_of(n, self.modules) is Kind.RESHAPE
