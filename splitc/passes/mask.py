"""Pass: zero the inter-group weights, producing the reference "masked model" (docs/METHOD.md §6).

Contract
  before: a GraphModule, its ChannelIR and Scope, and a HardAssignment for the scope.
  after:  a new GraphModule (a deep copy) in which every conv/linear weight whose output space
          is computed inside the branches keeps only the weights from input channels that its
          output channel's branch holds: shared trunk channels (input space not in scope), and
          assigned channels whose group lies on the output group's path of the tree (the same
          group, an ancestor, or a descendant). All other weights are exactly zero.
  changes: weight values only; biases, norms, buffers and the graph are untouched, and the
          input module is not modified.

The rule is the one :func:`splitc.graph.counting.count` counts with (``Placement.held``), and the
element placement is taken from there, so the number of nonzero weights of the masked model is
the split's weight count by construction, and the split model built by partition must equal
the masked model numerically: each branch is an exact slice of it.

Masking works on element ids, not channel positions, so it needs no prior permutation: groups
need not be contiguous. Grouped convs store (out, in/groups, kh, kw); the keep mask is built in
the dense (out, in) layout and compressed back to the conv-group blocks.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.fx as fx

from splitc.graph.channel_ir import ChannelIR, WeightLayer
from splitc.graph.conv_layout import ConvLayout
from splitc.graph.group_tree import HardAssignment, Placement, ancestor
from splitc.graph.scope import Scope


def keep_mask(ir: ChannelIR, scope: Scope, assignment: HardAssignment, layer: WeightLayer,
              placement: Placement | None = None) -> torch.Tensor:
    """Bool (out, in_full) mask: True where ``layer`` keeps the weight from input index i to
    output channel o in the split.

    Entries outside a grouped conv's own blocks are False (those weights do not exist). A layer
    computed in the trunk keeps every existing weight. ``placement`` may be passed to share one
    element placement across layers.
    """
    place = placement if placement is not None else Placement(ir, scope, assignment)
    keep = ConvLayout(len(layer.out_elems), len(layer.in_elems), layer.conv_groups).block_mask()
    out_level = place.runs_at(layer.out_elems)
    if out_level >= 0:
        keep &= _on_path(place, layer.out_elems, layer.in_elems, out_level)
    return torch.from_numpy(keep)


def mask_inter_group(gm: fx.GraphModule, ir: ChannelIR, scope: Scope,
                     assignment: HardAssignment) -> fx.GraphModule:
    """Entry point: a copy of ``gm`` with every weight outside ``keep_mask`` set to zero."""
    new = copy.deepcopy(gm)
    with torch.no_grad():
        for name, mask in weight_masks(ir, scope, assignment).items():
            weight = new.get_parameter(f"{name}.weight")
            shape = mask.shape + (1,) * (weight.dim() - mask.dim())
            weight.mul_(mask.reshape(shape).to(weight.dtype))
    return new


def weight_masks(ir: ChannelIR, scope: Scope, assignment: HardAssignment) -> dict[str, torch.Tensor]:
    """Per module computed in the branches, the bool keep mask in its weight's (out, in/k)
    layout (the layers :func:`mask_inter_group` masks; a module called twice keeps a weight
    only if every call keeps it)."""
    place = Placement(ir, scope, assignment)
    masks: dict[str, torch.Tensor] = {}
    for layer in ir.layers:
        if place.runs_at(layer.out_elems) < 0:
            continue
        mask = _weight_layout(keep_mask(ir, scope, assignment, layer, place), layer)
        masks[layer.name] = masks[layer.name] & mask if layer.name in masks else mask
    return masks


def mask_for_group(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, assignment: HardAssignment,
                   level: int, group: int) -> fx.GraphModule:
    """The model as leaf ``(level, group)`` of the tree computes it: a copy of ``gm`` in which
    every layer run in the branches keeps only weights between channels that this leaf's
    branch (or its ancestor at the layer's level) holds. With overlap, a duplicated channel is
    held by several leaves, and each computes its own copy this way: this is the reference the
    overlapping split must equal, leaf by leaf."""
    from .placement import held

    new = copy.deepcopy(gm)
    place = Placement(ir, scope, assignment)
    masks: dict[str, torch.Tensor] = {}
    for layer in ir.layers:
        layer_level = place.runs_at(layer.out_elems)
        if layer_level < 0:
            continue
        node = ancestor(scope.groups, level, group, layer_level)
        keep = (held(place, layer.out_elems, layer_level, node)[:, None]
                & held(place, layer.in_elems, layer_level, node)[None, :]
                & ConvLayout(len(layer.out_elems), len(layer.in_elems), layer.conv_groups).block_mask())
        mask = _weight_layout(torch.from_numpy(keep), layer)
        masks[layer.name] = masks[layer.name] & mask if layer.name in masks else mask
    with torch.no_grad():
        for name, mask in masks.items():
            weight = new.get_parameter(f"{name}.weight")
            weight.mul_(mask.reshape(mask.shape + (1,) * (weight.dim() - mask.dim())).to(weight.dtype))
    return new


def _on_path(place: Placement, out_elems: np.ndarray, in_elems: np.ndarray, out_level: int) -> np.ndarray:
    """(out, in) True where the input is shared trunk or on the output group's tree path.

    Groups of two levels relate as a balanced tree, so both sides are folded to the coarser of
    the two levels and compared there (an ancestor or descendant folds onto the same group).
    """
    groups = np.asarray(place.groups)
    out_groups = place.group[out_elems]
    in_level = place.level[in_elems]
    shared = in_level < 0
    g_out = groups[out_level]
    g_in = np.where(shared, g_out, groups[np.maximum(in_level, 0)])
    coarse = np.minimum(g_out, g_in)
    out_folded = out_groups[:, None] // (g_out // coarse)[None, :]
    in_folded = place.group[in_elems] // (g_in // coarse)
    return shared[None, :] | (out_folded == in_folded[None, :])


def _weight_layout(dense: torch.Tensor, layer: WeightLayer) -> torch.Tensor:
    """From the dense (out, in) layout to the weight's (out, in/k) layout (block b's outputs
    read block b's inputs only)."""
    return ConvLayout(len(layer.out_elems), len(layer.in_elems), layer.conv_groups).from_dense(dense, check=False)
