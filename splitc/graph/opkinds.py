"""The one table that maps torch targets (modules, functions, methods) to op kinds.

Lookups are exact: module types by class (walking the MRO, so subclasses of ``nn.Conv2d``
count), functions by identity, methods by name. Nothing is classified by substring. A target
that is not here has no kind, and the channel graph turns it into a scope barrier.
"""

from __future__ import annotations

import operator
from enum import Enum

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


class Kind(Enum):
    CONV = "conv"                  # nn.Conv2d: new output space, weight layer
    LINEAR = "linear"              # nn.Linear over the last dim: new output space, weight layer
    BATCH_NORM = "batch_norm"      # per-channel affine on dim 1, keeps the space
    LAYER_NORM = "layer_norm"      # per-channel affine on the last dims, needs all channels
    ELEMENTWISE = "elementwise"    # one tensor in, same channels out (activations, dropout)
    BINARY = "binary"              # add/sub/mul/div with broadcasting: ties the operands
    POOL = "pool"                  # spatial resampling that keeps channels
    RESHAPE = "reshape"            # view/cat/chunk/flatten/...: replayed on channel labels
    REDUCE = "reduce"              # mean/sum over dims: keeps or mixes channels
    GROUP_NORM = "group_norm"      # statistics per block of channels: a block moves whole
    PAD = "pad"                    # constant/reflect padding of the spatial dims
    SOFTMAX = "softmax"            # normalised over one dim: keeps labels only along one channel


def _stochastic_depth_types() -> tuple[type, ...]:
    from torchvision.ops import StochasticDepth

    return (StochasticDepth,)


def _stochastic_depth_functions() -> tuple[object, ...]:
    from torchvision.ops import stochastic_depth

    return (stochastic_depth,)


MODULE_KINDS: dict[type, Kind] = {
    nn.Conv2d: Kind.CONV,
    nn.Linear: Kind.LINEAR,
    nn.BatchNorm1d: Kind.BATCH_NORM,
    nn.BatchNorm2d: Kind.BATCH_NORM,
    nn.LayerNorm: Kind.LAYER_NORM,
    nn.MaxPool2d: Kind.POOL,
    nn.AvgPool2d: Kind.POOL,
    nn.AdaptiveAvgPool2d: Kind.POOL,
    nn.AdaptiveMaxPool2d: Kind.POOL,
    nn.Flatten: Kind.RESHAPE,
    nn.GroupNorm: Kind.GROUP_NORM,
    nn.Upsample: Kind.POOL,
    nn.UpsamplingNearest2d: Kind.POOL,
    nn.UpsamplingBilinear2d: Kind.POOL,
    nn.Softmax: Kind.SOFTMAX,
    **{t: Kind.PAD for t in (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)},
    **{t: Kind.ELEMENTWISE for t in (
        nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.Tanh,
        nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
        nn.Identity, nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
        nn.Hardshrink, nn.Softshrink)},
    **{t: Kind.ELEMENTWISE for t in _stochastic_depth_types()},
}

FUNCTION_KINDS: dict[object, Kind] = {
    **{f: Kind.ELEMENTWISE for f in (
        F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid,
        torch.sigmoid, torch.tanh, F.dropout, F.leaky_relu, F.elu, F.mish, F.hardtanh,
        operator.neg, *_stochastic_depth_functions(),
        F.relu_, F.elu_, F.leaky_relu_, F.hardtanh_, F.selu, F.celu, F.softplus, F.softsign,
        F.tanhshrink, F.logsigmoid, F.hardshrink, F.softshrink, F.dropout2d, F.alpha_dropout,
        torch.clamp, torch.clip, torch.exp, torch.erf, torch.abs, torch.square, torch.sqrt,
        torch.rsqrt, torch.relu_, torch.sigmoid_, torch.tanh_)},
    **{f: Kind.BINARY for f in (
        operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
        operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div)},
    **{f: Kind.POOL for f in (
        F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
        F.upsample, F.upsample_nearest, F.upsample_bilinear, F.lp_pool2d)},
    **{f: Kind.RESHAPE for f in (
        torch.flatten, torch.cat, torch.concat, torch.chunk, torch.split, torch.transpose,
        torch.permute, torch.reshape, torch.squeeze, torch.unsqueeze, torch.narrow,
        operator.getitem, torch.stack, torch.movedim, torch.swapaxes)},
    **{f: Kind.REDUCE for f in (torch.mean, torch.sum, torch.amax)},
    F.layer_norm: Kind.LAYER_NORM,
    # functional forms of the weight layers and norms (timm's BatchNormAct2d, Conv2dSame,
    # Linear call these with parameter tensors read by get_attr)
    F.batch_norm: Kind.BATCH_NORM,
    F.group_norm: Kind.GROUP_NORM,
    F.conv2d: Kind.CONV,
    F.linear: Kind.LINEAR,
    torch._C._nn.linear: Kind.LINEAR,
    F.pad: Kind.PAD,
    **{f: Kind.SOFTMAX for f in (F.softmax, torch.softmax, F.log_softmax, torch.log_softmax)},
}

METHOD_KINDS: dict[str, Kind] = {
    **{m: Kind.RESHAPE for m in (
        "view", "reshape", "flatten", "permute", "transpose", "contiguous", "chunk", "split",
        "squeeze", "unsqueeze", "expand", "narrow", "unflatten", "expand_as", "view_as",
        "reshape_as", "movedim", "swapaxes")},
    **{m: Kind.ELEMENTWISE for m in (
        "relu", "relu_", "sigmoid", "sigmoid_", "clone", "tanh", "tanh_", "clamp", "clamp_",
        "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "exp", "abs", "neg", "sqrt",
        "rsqrt", "square", "float")},
    **{m: Kind.BINARY for m in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")},
    **{m: Kind.REDUCE for m in ("mean", "sum", "amax")},
    **{m: Kind.SOFTMAX for m in ("softmax", "log_softmax")},
}


def kind_of(node: fx.Node, modules: dict[str, nn.Module]) -> Kind | None:
    """The op kind of an fx node, or None when splitc has no rule for its target."""
    if node.op == "call_module":
        for cls in type(modules[node.target]).__mro__:
            if cls in MODULE_KINDS:
                return MODULE_KINDS[cls]
        return None
    if node.op == "call_function":
        try:
            return FUNCTION_KINDS.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return METHOD_KINDS.get(node.target)
    return None


def target_name(node: fx.Node) -> str:
    """A readable name for a node's target, for warnings."""
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        return f"module {type(module).__module__}.{type(module).__name__}"
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        return f"function {mod}.{getattr(node.target, '__name__', node.target)}".replace("_operator.", "operator.")
    return f"{node.op} {node.target}"
