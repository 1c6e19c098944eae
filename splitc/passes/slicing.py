"""Real, smaller copies of layers for one branch: the weights are slices, not masked tensors.

A block-diagonal conv becomes, in branch g, a conv of in_g -> out_g channels; an
output-partitioned layer computes only its group's outputs; a grouped or depthwise conv keeps
its whole conv-groups (the channel graph ties each conv-group's inputs and outputs into one
node, so a conv-group is never cut). Each copy owns fresh tensors: branches share no storage.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from splitc.graph.channel_ir import WeightLayer


class SliceError(ValueError):
    """The held channels do not match the layer (a bug in the analysis, never user input)."""


def slice_weight_layer(module: nn.Module, layer: WeightLayer, out_keep: np.ndarray,
                       in_keep: np.ndarray) -> nn.Module:
    """A copy of a conv or linear ``module`` reading the ``in_keep`` inputs and computing the
    ``out_keep`` outputs."""
    new_weight, new_bias, new_groups = slice_weight_tensors(module.weight, module.bias, layer, out_keep, in_keep)
    new = copy.copy(module)              # shallow: then replace every tensor with an owned one
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new.weight = new_weight
    if module.bias is not None:
        new.bias = new_bias
    if layer.op == "conv":
        new.in_channels, new.out_channels, new.groups = int(in_keep.sum()), int(out_keep.sum()), new_groups
    else:
        new.in_features, new.out_features = int(in_keep.sum()), int(out_keep.sum())
    return new


def slice_weight_tensors(weight: torch.Tensor, bias: torch.Tensor | None, layer: WeightLayer,
                         out_keep: np.ndarray, in_keep: np.ndarray) -> tuple[nn.Parameter, nn.Parameter | None, int]:
    """Owned (weight, bias, conv groups) of the slice; also used for ``F.conv2d`` / ``F.linear``
    called with parameter tensors."""
    out_idx = torch.as_tensor(np.flatnonzero(out_keep))
    k = layer.conv_groups
    w = weight.detach()
    if k == 1:
        new_weight = w.index_select(0, out_idx).index_select(1, torch.as_tensor(np.flatnonzero(in_keep)))
        new_groups = 1
    else:
        blocks = _kept_blocks(out_keep, in_keep, k)
        rows = np.concatenate([np.arange(b * (len(out_keep) // k), (b + 1) * (len(out_keep) // k)) for b in blocks])
        new_weight = w.index_select(0, torch.as_tensor(rows))
        new_groups = len(blocks)
    new_bias = None if bias is None else nn.Parameter(
        bias.detach().index_select(0, out_idx).clone(), requires_grad=bias.requires_grad)
    return nn.Parameter(new_weight.clone(), requires_grad=weight.requires_grad), new_bias, new_groups


def _kept_blocks(out_keep: np.ndarray, in_keep: np.ndarray, k: int) -> list[int]:
    outs = out_keep.reshape(k, -1)
    ins = in_keep.reshape(k, -1)
    whole_out, whole_in = outs.all(axis=1), ins.all(axis=1)
    if not ((outs.any(axis=1) == whole_out).all() and (ins.any(axis=1) == whole_in).all()
            and (whole_out == whole_in).all()):
        raise SliceError("a branch holds part of a conv-group: conv-groups must move whole")
    return np.flatnonzero(whole_out).tolist()


def slice_channel_module(module: nn.Module, keep: np.ndarray) -> nn.Module:
    """A copy of a per-channel module (batch norm, a user's channelwise module) keeping the
    ``keep`` channels: every parameter and buffer of that length, its submodules' too, is
    sliced along its first dim; every other tensor is copied (branches share no storage)."""
    idx = torch.as_tensor(np.flatnonzero(keep))
    new = copy.copy(module)
    new._parameters, new._buffers = {}, {}
    for name, p in module._parameters.items():
        new._parameters[name] = None if p is None else nn.Parameter(
            _slice_if_channels(p.detach(), idx, len(keep)), requires_grad=p.requires_grad)
    for name, b in module._buffers.items():
        new._buffers[name] = None if b is None else _slice_if_channels(b, idx, len(keep))
    new._modules = {name: None if m is None else slice_channel_module(m, keep) for name, m in module._modules.items()}
    if hasattr(new, "num_features"):
        new.num_features = len(idx)
    if isinstance(module, nn.GroupNorm):  # whole norm-groups are held (the channel graph ties them)
        new.num_groups, new.num_channels = module.num_groups * len(idx) // len(keep), len(idx)
    return new


def _slice_if_channels(t: torch.Tensor, idx: torch.Tensor, channels: int) -> torch.Tensor:
    if t.dim() >= 1 and t.shape[0] == channels:
        return t.index_select(0, idx).clone()
    return t.clone()


def owned_copy(module: nn.Module) -> nn.Module:
    """A parameter-free module (activation, pool) or one whose tensors are not channel-split:
    a deep copy, so no two subgraphs share storage."""
    return copy.deepcopy(module)
