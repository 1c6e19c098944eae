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

from splitc.core.pipeline import PassRunner
from splitc.graph.channel_ir import ChannelIR
from splitc.graph.group_tree import HardAssignment
from splitc.graph.counting import Cost, count_graph
from splitc.passes.assemble import assemble
from splitc.passes.mask import mask_for_group, mask_inter_group
from splitc.passes.partition import partition
from splitc.passes.permute_channels import (
    ChannelPermutation,
    group_contiguous_ranks,
    output_order,
    permutation_from_ranks,
    permute_channels,
)
from splitc.graph.scope import Scope
from splitc.graph.split_model import SplitModel


@dataclass
class CompiledSplit:
    model: SplitModel
    masked: torch.nn.Module   # the masked model (with overlap: extended by the duplicated channels)


def compile_split(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, assignment: HardAssignment,
                  permute: bool = True, runner: PassRunner | None = None) -> CompiledSplit:
    """The split model and its masked reference for ``assignment`` (in ``gm``'s channel order):
    the passes mask -> permute -> partition -> assemble of ``core/pipeline.py``, timed by ``runner``."""
    runner = runner or PassRunner()
    with runner.step("mask"):
        if assignment.overlap:   # fuzzy nodes live in several branches: each slices its own copy
            masked, source = overlap_reference(gm, ir, scope, assignment), gm
        else:
            masked = source = mask_inter_group(gm, ir, scope, assignment)
    local, order = assignment, None
    if permute:
        with runner.step("permute"):
            perm = permutation_from_ranks(ir, group_contiguous_ranks(assignment))
            source = permute_channels(source, ir, perm)
            local = permuted_assignment(ir, assignment, perm)
            order = output_order(ir, perm)
    parts = runner.run("partition", partition, source, ir, scope, local, order)
    model = runner.run("assemble", assemble, parts)
    return CompiledSplit(model.eval(), masked.eval())


def permuted_assignment(ir: ChannelIR, assignment: HardAssignment, perm: ChannelPermutation) -> HardAssignment:
    """Groups in the permuted model: position e now holds the content of element sigma(e)."""
    result = {}
    overlap = {}
    for space, groups in assignment.groups_of_space.items():
        nodes = ir.spaces[space].nodes
        moved_from = ir.node_index[perm.sigma[ir.node_first_elem[nodes]]]
        result[space] = np.asarray(groups)[moved_from]
        fuzzy = assignment.overlap.get(space, {})
        overlap[space] = {i: fuzzy[int(j)] for i, j in enumerate(moved_from) if int(j) in fuzzy}
    return HardAssignment(result, {s: v for s, v in overlap.items() if v})


class OverlapReference(torch.nn.Module):
    """The masked model extended with duplicated channels: every leaf's masked model
    (``mask_for_group``), each class the mean of the leaves that compute it."""

    def __init__(self, leaves: list[fx.GraphModule], weights: torch.Tensor) -> None:
        super().__init__()
        self.leaves = torch.nn.ModuleList(leaves)
        self.register_buffer("weights", weights)   # (leaves, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([leaf(x) for leaf in self.leaves])
        return (outputs * self.weights[:, None, :]).sum(dim=0)


def overlap_reference(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, assignment: HardAssignment) -> OverlapReference:
    level = scope.level_of[ir.class_space]
    G = scope.groups[level]
    members = assignment.membership(ir.class_space)[ir.node_index[ir.output_elems]]
    holds = torch.as_tensor(((members[None, :] >> np.arange(G)[:, None]) & 1).astype(np.float32))
    leaves = [mask_for_group(gm, ir, scope, assignment, level, g) for g in range(G)]
    return OverlapReference(leaves, holds / holds.sum(dim=0, keepdim=True)).eval()


def module_inputs(model: torch.nn.Module, modules: dict[str, torch.nn.Module], x: torch.Tensor
                  ) -> dict[str, tuple[torch.Tensor, ...]]:
    """The arguments each of ``modules`` (by name) is called with when ``model`` runs on ``x``."""
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, tuple(args)))
               for name, m in modules.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def subgraph_inputs(model: SplitModel, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    """The tensors each subgraph reads when the model runs on ``x`` (for counting, export)."""
    return module_inputs(model, {s.name: model.subgraph(s.name) for s in model.plan.subgraphs}, x)


def subgraph_costs(model: SplitModel, input_size: tuple[int, ...]) -> dict[str, Cost]:
    """Params and FLOPs of every subgraph, counted from its real tensors by the one counting
    function (``count_graph``)."""
    inputs = subgraph_inputs(model.eval(), torch.randn(1, *input_size))
    return {name: count_graph(model.subgraph(name), *args) for name, args in inputs.items()}


def total_cost(costs: dict[str, Cost]) -> Cost:
    return Cost(sum(c.params for c in costs.values()), sum(c.flops for c in costs.values()))
