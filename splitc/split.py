"""Compile a hard assignment into a split model: mask -> permute -> partition -> assemble.

The masked model (inter-group weights zeroed) is the reference the split must equal; the
permutation makes each group's channels contiguous so branches read contiguous slices; the
partition cuts trunk, branch tree and merge; the merge undoes the permutation of the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from .channel_graph import ChannelIR
from .counting import HardAssignment
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
