"""Compile a hard assignment into a split model: mask -> permute -> partition -> assemble.

The masked model (inter-group weights zeroed) is the reference the split must equal; the
permutation makes each group's channels contiguous so branches read contiguous slices; the
partition cuts trunk, branch tree and merge; the merge undoes the permutation of the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from .channel_graph import ChannelIR
from .counting import Cost, HardAssignment, count_graph
from .passes.assemble import assemble
from .passes.mask import mask_inter_group
from .passes.partition import partition
from .passes.permute_channels import (
    ChannelPermutation,
    group_contiguous_ranks,
    output_order,
    permutation_from_ranks,
    permute_channels,
)
from .scope import Scope
from .split_model import SplitModel


@dataclass
class CompiledSplit:
    model: SplitModel
    masked: fx.GraphModule


def compile_split(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, assignment: HardAssignment,
                  permute: bool = True) -> CompiledSplit:
    """The split model and its masked reference for ``assignment`` (in ``gm``'s channel order)."""
    masked = mask_inter_group(gm, ir, scope, assignment)
    source, local, order = masked, assignment, None
    if permute:
        perm = permutation_from_ranks(ir, group_contiguous_ranks(assignment))
        source = permute_channels(masked, ir, perm)
        local = permuted_assignment(ir, assignment, perm)
        order = output_order(ir, perm)
    model = assemble(partition(source, ir, scope, local, order))
    return CompiledSplit(model.eval(), masked.eval())


def permuted_assignment(ir: ChannelIR, assignment: HardAssignment, perm: ChannelPermutation) -> HardAssignment:
    """Groups in the permuted model: position e now holds the content of element sigma(e)."""
    result = {}
    for space, groups in assignment.groups_of_space.items():
        nodes = ir.spaces[space].nodes
        moved_from = perm.sigma[ir.node_first_elem[nodes]]
        result[space] = np.asarray(groups)[ir.node_index[moved_from]]
    return HardAssignment(result)


def subgraph_inputs(model: SplitModel, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    """The tensors each subgraph reads when the model runs on ``x`` (for counting, export)."""
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    handles = [model.subgraph(s.name).register_forward_pre_hook(
        lambda _m, args, name=s.name: seen.__setitem__(name, tuple(args))) for s in model.plan.subgraphs]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def subgraph_costs(model: SplitModel, input_size: tuple[int, ...]) -> dict[str, Cost]:
    """Params and FLOPs of every subgraph, counted from its real tensors by the one counting
    function (``count_graph``)."""
    inputs = subgraph_inputs(model.eval(), torch.randn(1, *input_size))
    return {name: count_graph(model.subgraph(name), *args) for name, args in inputs.items()}


def total_cost(costs: dict[str, Cost]) -> Cost:
    return Cost(sum(c.params for c in costs.values()), sum(c.flops for c in costs.values()))
