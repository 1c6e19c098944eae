"""Pass: lower block-diagonal convolutions to grouped convolutions (one device, no slices).

Contract
  before: a GraphModule whose channels are permuted so that every group is contiguous and
          whose inter-group weights are zero (the mask and permute passes), its ChannelIR, the
          scope and the assignment in the permuted order.
  after:  a new GraphModule computing the same function, in which every conv named in
          ``chosen`` is an ``nn.Conv2d`` with ``groups = k`` holding only the k diagonal blocks
          its kept weights lie in (:func:`conv_blocks` finds k).
  changes: the chosen conv modules; the graph and every other module are untouched.

Why: when the sibling branches of a split share one device, running them as G small
convolutions plus the slices and concatenations between them costs what the FLOPs saved on a
small model (resnet20, 16 channels per branch at 8x8). The same block-diagonal layer as one
grouped convolution runs as one kernel over contiguous channels, with nothing between the
layers. Whether it is faster than the dense masked conv depends on the device and the shape,
so the exporter measures both and says which it chose (``deploy/lowering.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.conv_layout import ConvLayout
from splitc.graph.group_tree import HardAssignment, Placement
from splitc.graph.scope import Scope
from splitc.passes.mask import keep_mask


@dataclass(frozen=True)
class ConvBlocks:
    """A conv whose kept weights lie in ``blocks`` equal diagonal blocks (a lowering candidate)."""

    name: str           # module qualname in the GraphModule
    blocks: int         # the groups of the lowered conv
    in_channels: int
    out_channels: int


def block_count(keep: np.ndarray) -> int:
    """The largest k such that every kept entry of the (out, in) mask lies in the k equal
    diagonal blocks of a ``ConvLayout``; 1 when there is no such structure."""
    out, inp = keep.shape
    for k in sorted((d for d in range(2, min(out, inp) + 1) if out % d == 0 and inp % d == 0), reverse=True):
        if not (keep & ~ConvLayout(out, inp, k).block_mask()).any():
            return k
    return 1


def conv_blocks(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, assignment: HardAssignment) -> list[ConvBlocks]:
    """Every plain (ungrouped) ``nn.Conv2d`` of ``gm`` whose kept weights are block-diagonal."""
    place = Placement(ir, scope, assignment)
    modules = dict(gm.named_modules())
    found = []
    for layer in ir.layers:
        conv = modules.get(layer.name)
        if layer.op != "conv" or layer.conv_groups != 1 or type(conv) is not nn.Conv2d:
            continue
        keep = np.asarray(keep_mask(ir, scope, assignment, layer, place))
        k = block_count(keep)
        if k > 1:
            found.append(ConvBlocks(layer.name, k, conv.in_channels, conv.out_channels))
    return found


def grouped_conv(conv: nn.Conv2d, k: int) -> nn.Conv2d:
    """``conv`` as ``groups=k``, keeping its k diagonal blocks (the rest must be zero)."""
    lowered = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, groups=k, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                        device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        lowered.weight.copy_(ConvLayout(conv.out_channels, conv.in_channels, k).from_dense(conv.weight))
        if conv.bias is not None:
            lowered.bias.copy_(conv.bias)
    return lowered.train(conv.training)


def lower_grouped(gm: fx.GraphModule, candidates: list[ConvBlocks], chosen: set[str]) -> fx.GraphModule:
    """Entry point: a copy of ``gm`` with each chosen candidate conv grouped."""
    out = copy.deepcopy(gm)
    for c in candidates:
        if c.name not in chosen:
            continue
        parent_name, _, child = c.name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, grouped_conv(getattr(parent, child), c.blocks))
    return out
