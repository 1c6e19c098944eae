"""Pass: pad every split channel space to equal groups with zero channels.

Contract
  before: a GraphModule whose channels are permuted so that every group is contiguous and whose
          inter-group weights are zero (mask + permute), its ChannelIR, the scope and the
          assignment in the permuted order. Its channel-carrying modules are plain ``Conv2d``
          (ungrouped), ``BatchNorm2d`` and ``Linear``.
  after:  a new GraphModule computing the same logits, in which every space in scope except the
          classes holds G x (its largest group) channels: group g's channels, then zero channels
          up to the largest group's size. Every conv between two padded spaces is then
          block-diagonal with equal blocks (``lower_grouped`` can group it); the returned
          :class:`~splitc.passes.lower_grouped.ConvBlocks` list says which, with their k.
  changes: the shapes of the modules that read or write a padded space; nothing else.

Why: a learned split's groups are rarely equal (15, 15, 22, 12 channels), and a grouped
convolution needs equal groups. Zero channels stay zero through the graph: a padded conv output
has zero weights and bias, a padded BatchNorm channel has weight 0, bias 0, mean 0, var 1, a
ReLU or an add of zeros is zero, and the next layer reads them with zero weights. The padding
costs FLOPs; the exporter keeps it only where the grouped form measures faster.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.group_tree import HardAssignment, Placement
from splitc.graph.scope import Scope
from splitc.passes.lower_grouped import ConvBlocks

CHANNEL_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


class Unpaddable(ValueError):
    """A channel axis padding cannot follow (the reason is the message)."""


class Padding:
    """Per padded space: the padded index of each channel position, and the padded width."""

    def __init__(self, ir: ChannelIR, scope: Scope, assignment: HardAssignment) -> None:
        self.place = Placement(ir, scope, assignment)
        self.ir = ir
        self.spaces = {s for s in scope.level_of if s != ir.class_space}
        self.groups = {s: scope.groups_of(s) for s in self.spaces}

    def axis(self, labels: np.ndarray) -> tuple[np.ndarray, int, int] | None:
        """For a channel axis (its element per index): (padded index per index, padded width,
        groups), or None when the axis is not in a padded space. Groups must be contiguous."""
        spaces = np.unique(self.ir.space_of[labels])
        if not any(int(s) in self.spaces for s in spaces):
            return None
        if len(spaces) != 1:
            names = ", ".join(self.ir.spaces[int(s)].name for s in spaces)
            raise Unpaddable(f"one axis concatenates the spaces {names}; padding cannot follow a concatenation")
        space = self.ir.spaces[int(spaces[0])]
        covered = len(np.unique(self.ir.node_of[labels]))   # a flatten repeats each channel per position
        if covered != space.num_nodes:
            raise Unpaddable(f"space {space.name} is read or written in parts ({covered} of its "
                             f"{space.num_nodes} channels: a slice, or a part of a concatenation); padding cannot follow it")
        G = self.groups[int(spaces[0])]
        group = self.place.group[labels]
        if (np.diff(group) < 0).any():
            raise Unpaddable(f"the channels of space {space.name} reach one axis out of group order "
                             "(a shuffle, or a concatenation of its parts); padding cannot follow it")
        sizes = np.bincount(group, minlength=G)
        width = int(sizes.max())
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return group * width + (np.arange(len(labels)) - start[group]), G * width, G


def pad_groups(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, assignment: HardAssignment
               ) -> tuple[fx.GraphModule | None, list[ConvBlocks], str]:
    """Entry point: the padded copy, its grouping candidates, and "" (or None, [], the reason)."""
    pad = Padding(ir, scope, assignment)
    uses: dict[str, dict] = defaultdict(dict)
    for use in ir.param_uses:
        uses[use.param].setdefault(use.dim, use)
    try:
        axes = _padded_axes(pad, uses)
    except Unpaddable as exc:
        return None, [], str(exc)
    new = copy.deepcopy(gm)
    modules = dict(new.named_modules())
    owners = {name.rpartition(".")[0] for name in axes}
    for owner in sorted(owners):
        module = modules.get(owner)
        if not isinstance(module, CHANNEL_MODULES) or (isinstance(module, nn.Conv2d) and module.groups != 1):
            return None, [], f"{owner} ({type(module).__name__}) carries a split space; only Conv2d, BatchNorm2d and Linear are padded"
        parent, _, child = owner.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, child, _padded(module, owner, axes))
    candidates = []
    for owner in sorted(owners):
        module = new.get_submodule(owner)
        dims = axes.get(f"{owner}.weight", {})
        if isinstance(module, nn.Conv2d) and 0 in dims and 1 in dims:
            k = min(dims[0][2], dims[1][2])
            candidates.append(ConvBlocks(owner, k, module.in_channels, module.out_channels))
    return new, candidates, ""


def _padded_axes(pad: Padding, uses: dict[str, dict]) -> dict[str, dict[int, tuple[np.ndarray, int, int]]]:
    """Per parameter, per padded dim: ``Padding.axis``; raises Unpaddable where it cannot follow."""
    axes: dict[str, dict[int, tuple[np.ndarray, int, int]]] = {}
    for name, by_dim in uses.items():
        for dim, use in by_dim.items():
            found = pad.axis(use.labels.ravel())
            if dim is None and found is not None:
                raise Unpaddable(f"{name} is used as a tensor over a split space; padding cannot follow it")
            if found is not None and dim is not None:
                axes.setdefault(name, {})[dim] = found
    return axes


def _padded(module: nn.Module, owner: str, axes: dict) -> nn.Module:
    """A copy of ``module`` with its padded axes widened, real entries scattered, pads neutral."""
    shape_of = {n: p.shape for n, p in module.state_dict().items()}
    new_shape = {}
    for n, shape in shape_of.items():
        s = list(shape)
        for dim, (_, width, _) in axes.get(f"{owner}.{n}", {}).items():
            s[dim] = width
        new_shape[n] = s
    if isinstance(module, nn.Conv2d):
        out_c, in_c = new_shape["weight"][0], new_shape["weight"][1]
        fresh = nn.Conv2d(in_c, out_c, module.kernel_size, module.stride, module.padding, module.dilation,
                          bias=module.bias is not None, padding_mode=module.padding_mode)
    elif isinstance(module, nn.Linear):
        fresh = nn.Linear(new_shape["weight"][1], new_shape["weight"][0], bias=module.bias is not None)
    else:
        fresh = nn.BatchNorm2d(new_shape["weight"][0] if "weight" in new_shape else new_shape["running_mean"][0],
                               eps=module.eps, momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats)
    state = {}
    for n, t in module.state_dict().items():
        if t.dim() == 0:
            state[n] = t.clone()
            continue
        fill = 1.0 if n == "running_var" else 0.0
        out = torch.full(new_shape[n], fill, dtype=t.dtype)
        index = [slice(None)] * t.dim()
        for dim, (pos, _, _) in axes.get(f"{owner}.{n}", {}).items():
            index[dim] = torch.as_tensor(pos)
        _scatter(out, t, index)
        state[n] = out
    fresh.load_state_dict(state)
    return fresh.train(module.training)


def _scatter(out: torch.Tensor, t: torch.Tensor, index: list) -> None:
    """``out[index] = t`` where ``index`` holds an index tensor on up to two leading dims."""
    tensors = [i for i, x in enumerate(index) if isinstance(x, torch.Tensor)]
    if not tensors:
        out.copy_(t)
    elif len(tensors) == 1:
        out.index_copy_(tensors[0], index[tensors[0]], t)
    else:
        a, b = tensors
        rows = torch.zeros(out.shape[a], *t.shape[1:], dtype=t.dtype) if (a, b) == (0, 1) else None
        if rows is None:
            raise ValueError("only the two leading dims may be padded")
        rows.index_copy_(0, index[0], t)
        out.index_copy_(1, index[1], rows)
