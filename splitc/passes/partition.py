"""Pass: partition a (masked, permuted) GraphModule into trunk, branch tree and merge.

Contract
  before: a GraphModule whose inter-group weights are zero (``passes.mask``), its ChannelIR,
          the Scope and the HardAssignment *in this module's channel order* (after
          ``passes.permute_channels`` the caller passes the permuted assignment and the
          logit order, so the merge can undo both).
  after:  a :class:`Partition`: a :class:`~splitc.graph.split_model.SplitPlan` and one standalone
          GraphModule per subgraph. The trunk computes every node whose channels are all shared;
          tree node ``(level, group)`` computes the nodes that run at that level, restricted to
          the positions it holds; the merge writes the leaves' logits back in the original
          class order.
  changes: nothing in the input module; every branch owns sliced copies of its tensors.

How each op is rewritten inside a branch (the subgraph holds a sub-grid of every tensor):
  conv / linear   a smaller layer (``passes.slicing``): in_g -> out_g, whole conv-groups
  batch norm      its channels' statistics and affine only
  element-wise, binary, pool, reduce   unchanged (they act per channel)
  reshape (view, flatten, cat, chunk, shuffle, getitem...)   a gather: the op is replayed once
                  on position ids, so the branch reads exactly the positions the op would have
                  moved; no op-specific code, and sizes computed from the full tensor vanish
  parameters used as tensors   sliced to the held entries
Tensors that cross subgraphs (trunk -> branch, parent -> child) are cut to the consumer's
sub-grid with ``index_select``, one dim at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.group_tree import HardAssignment, Placement, node_name
from splitc.graph.scope import Scope
from splitc.graph.split_model import INPUT, SplitPlan, SubgraphSpec, TensorRef

from .placement import PartitionContext, box_of, record_labels
from .subgraph import SubgraphBuilder


@dataclass
class Partition:
    plan: SplitPlan
    modules: dict[str, fx.GraphModule]


def partition(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, assignment: HardAssignment,
              logit_order: np.ndarray | None = None) -> Partition:
    """Entry point. ``logit_order[p]`` is the original class at logit position p of ``gm``
    (identity when None)."""
    place = Placement(ir, scope, assignment)
    info = record_labels(gm, ir, place)
    ctx = PartitionContext(gm, ir, place, info, scope.groups)
    trunk = SubgraphBuilder(ctx, "trunk", -1, 0)
    builders = {"trunk": trunk}
    nodes = list(gm.graph.nodes)
    output = next(n for n in nodes if n.op == "output")
    _emit_level(trunk, nodes, -1)
    for level, g_level in enumerate(scope.groups):
        for group in range(g_level):
            name = node_name(scope.groups, level, group)
            builders[name] = SubgraphBuilder(ctx, name, level, group, builders)
            _emit_level(builders[name], nodes, level)
    merge, class_groups = _merge(ctx, builders, output, logit_order)
    specs = [b.finish() for b in builders.values()] + [merge]
    modules = {b.name: b.module for b in builders.values()}
    modules["merge"] = merge_module = ctx.merge_module
    del merge_module
    return Partition(SplitPlan(scope.groups, tuple(specs), class_groups), modules)


def _emit_level(builder: SubgraphBuilder, nodes: list[fx.Node], level: int) -> None:
    for n in nodes:
        if n.op == "output" or n.op == "get_attr":
            continue  # parameters are copied where they are read
        node_info = builder.ctx.info[n.name]
        if node_info.level == level:
            builder.emit(n)


def _merge(ctx: PartitionContext, builders: dict[str, SubgraphBuilder], output: fx.Node,
           logit_order: np.ndarray | None) -> tuple[SubgraphSpec, tuple[int, ...]]:
    """The merge reads each leaf's logits and writes them to their original class positions."""
    logits = output.args[0]
    if not isinstance(logits, fx.Node) or ctx.info[logits.name].level is None:
        raise ValueError("the model output is not a single logits tensor")
    info = ctx.info[logits.name]
    level = info.level
    if level < 0 or len(info.shape) != 2:
        raise ValueError("the logits are not computed in the branches, or are not (batch, classes)")
    positions, refs, class_groups = [], [], np.zeros(info.shape[1], dtype=np.int64)
    order = np.arange(info.shape[1]) if logit_order is None else np.asarray(logit_order)
    for group in range(ctx.groups[level]):
        leaf = builders[node_name(ctx.groups, level, group)]
        held_pos = box_of(ctx.place, info, level, group).index[0]
        refs.append(TensorRef(leaf.name, leaf.request(logits)))
        positions.append(held_pos)
        primary = ctx.place.group[info.labels.numpy()[0][held_pos]] == group
        class_groups[order[held_pos[primary]]] = group
    cat_classes = order[np.concatenate(positions)]
    graph = fx.Graph()
    inputs = [graph.placeholder(f"logits_{ref.producer.replace('.', '_')}") for ref in refs]
    joined = graph.call_function(torch.cat, (inputs, 1)) if len(inputs) > 1 else inputs[0]
    root: dict = {}
    copies = np.bincount(cat_classes, minlength=info.shape[1])
    if (copies > 1).any():   # duplicated (fuzzy) classes: the mean of their copies
        average = torch.zeros(len(cat_classes), info.shape[1])
        average[torch.arange(len(cat_classes)), torch.as_tensor(cat_classes)] = torch.as_tensor(
            1.0 / copies[cat_classes], dtype=torch.float32)
        root["class_average"] = average
        joined = graph.call_function(torch.matmul, (joined, graph.get_attr("class_average")))
    elif not np.array_equal(np.argsort(cat_classes, kind="stable"), np.arange(len(cat_classes))):
        root["class_index"] = torch.as_tensor(np.argsort(cat_classes, kind="stable"))
        joined = graph.call_method("index_select", (joined, 1, graph.get_attr("class_index")))
    graph.output((joined,))
    ctx.merge_module = fx.GraphModule(root, graph, class_name="Merge")
    spec = SubgraphSpec("merge", "merge", len(ctx.groups), None, None, tuple(refs), 1)
    return spec, tuple(int(g) for g in class_groups)


__all__ = ["Partition", "partition", "INPUT"]
