"""The one table that maps torch targets (modules, functions, methods) to op kinds.

Lookups are exact: module types by class (walking the MRO, so subclasses of ``nn.Conv2d``
count), functions by identity, methods by name. Nothing is classified by substring. A target
that is not here has no kind, and the channel graph turns it into a scope barrier.

The user extends the table with ``splitc.register_module(cls, kind)`` and
``register_function(fn, kind)`` (their own layer, e.g. a custom norm as ``"channelwise"``); the
tracer keeps what they register as one call (``frontend.LeafTracer``), and a second
registration of the same target raises.
"""

from __future__ import annotations

import contextlib
import operator
import sys
import types
from collections.abc import Iterator
from enum import Enum

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from splitc.core.errors import SplitcError


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
    CHANNELWISE = "channelwise"    # a user's op: one tensor in, same channels out, [C] tensors sliced


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
}

FUNCTION_KINDS: dict[object, Kind] = {
    **{f: Kind.ELEMENTWISE for f in (
        F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid,
        torch.sigmoid, torch.tanh, F.dropout, F.leaky_relu, F.elu, F.mish, F.hardtanh,
        operator.neg,
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


# Ops of packages splitc does not import itself, named by (module, attribute): each joins the
# tables above the first time a lookup finds its module loaded (a model that holds the op has
# imported it), so analysing a model never pays for importing torchvision (about 3 s).
DEFERRED_KINDS: dict[tuple[str, str], Kind] = {
    ("torchvision.ops.stochastic_depth", "StochasticDepth"): Kind.ELEMENTWISE,
    ("torchvision.ops.stochastic_depth", "stochastic_depth"): Kind.ELEMENTWISE,
}


def _resolve_deferred() -> None:
    for (module_name, attr), kind in list(DEFERRED_KINDS.items()):
        module = sys.modules.get(module_name)
        if module is not None:
            target = getattr(module, attr)
            (MODULE_KINDS if isinstance(target, type) else FUNCTION_KINDS)[target] = kind
            del DEFERRED_KINDS[(module_name, attr)]


# The user's own op types (``register_module`` / ``register_function``): looked up like the
# built-in tables, the user's entry first for each class of the MRO.
USER_MODULE_KINDS: dict[type, Kind] = {}
USER_FUNCTION_KINDS: dict[object, Kind] = {}


def kind_of(node: fx.Node, modules: dict[str, nn.Module]) -> Kind | None:
    """The op kind of an fx node, or None when splitc has no rule for its target."""
    if DEFERRED_KINDS:
        _resolve_deferred()
    if node.op == "call_module":
        for cls in type(modules[node.target]).__mro__:
            kind = USER_MODULE_KINDS.get(cls) or MODULE_KINDS.get(cls)
            if kind is not None:
                return kind
        return None
    if node.op == "call_function":
        try:
            return USER_FUNCTION_KINDS.get(node.target) or FUNCTION_KINDS.get(node.target)
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


# ---------------------------------------------------------------- the user's registrations
def parse_kind(kind: Kind | str) -> Kind:
    """A Kind from itself or its name; an unknown name is one line listing the kinds."""
    if isinstance(kind, Kind):
        return kind
    try:
        return Kind(kind)
    except ValueError:
        known = ", ".join(repr(k.value) for k in Kind)
        raise SplitcError(f"unknown op kind {kind!r}; the kinds are {known} (or splitc.Kind's members)") from None


def register_module(cls: type, kind: Kind | str) -> type:
    """Declare the user's module type ``cls`` as an op of ``kind`` (``"channelwise"`` for a
    custom per-channel norm or scale): it is traced as a leaf, keeps its own forward and gets
    that kind's channel rule, so a split runs through it instead of stopping there. A module
    declared as a built-in kind must carry that module's attributes (a ``"conv"``: ``weight``,
    ``bias``, ``groups``, ``kernel_size``, ``out_channels``). Returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise SplitcError(f"register_module takes an nn.Module subclass (the class, not an instance), got {cls!r}")
    return _register(cls, kind, "module", USER_MODULE_KINDS, MODULE_KINDS)


def register_function(fn: object, kind: Kind | str) -> object:
    """Declare the user's function ``fn`` as an op of ``kind``. A Python function called by name
    from a traced forward is kept as one call (not traced into) and gets that kind's rule.
    Returns ``fn``."""
    if not callable(fn) or isinstance(fn, type):
        raise SplitcError(f"register_function takes a function, got {fn!r}")
    return _register(fn, kind, "function", USER_FUNCTION_KINDS, FUNCTION_KINDS)


def _register(target, kind: Kind | str, what: str, user: dict, builtin: dict):
    """One registration; a target already in either table (the user's or the built-in) raises."""
    new = parse_kind(kind)
    _resolve_deferred()
    old = user.get(target) or builtin.get(target)
    if old is not None:
        raise SplitcError(f"{what} {_qualname(target)} is already registered as {old.value!r} "
                         f"({_who(target in user)}); cannot register it again as {new.value!r}")
    user[target] = new
    return target


def unregister(target: object) -> None:
    """Undo ``register_module`` / ``register_function`` (a built-in kind stays)."""
    table = USER_MODULE_KINDS if isinstance(target, type) else USER_FUNCTION_KINDS
    if target not in table:
        raise SplitcError(f"{_qualname(target)} was not registered by the user")
    del table[target]


@contextlib.contextmanager
def registered(target: object, kind: Kind | str) -> Iterator[object]:
    """``register_module`` / ``register_function`` for the duration of a ``with`` block (tests)."""
    (register_module if isinstance(target, type) else register_function)(target, kind)
    try:
        yield target
    finally:
        unregister(target)


def user_leaf_types() -> tuple[type, ...]:
    """Module types the tracer keeps as leaves: the user's registered ones."""
    return tuple(USER_MODULE_KINDS)


def user_functions() -> tuple[types.FunctionType, ...]:
    """Python functions the tracer keeps as one call (``autowrap_functions``)."""
    return tuple(f for f in USER_FUNCTION_KINDS if isinstance(f, types.FunctionType))


def registration_hint(node: fx.Node) -> str:
    """The call that declares ``node``'s target (for a barrier's warning); an op traced from
    inside the user's own module names that module, the unit the user wrote."""
    apart, fix = "treats each channel apart, declare it with", "to split through it"
    if node.op == "call_module":
        name = type(node.graph.owning_module.get_submodule(node.target)).__name__
        return f'if it {apart} splitc.register_module({name}, "channelwise") {fix}'
    owner = _enclosing_module(node)
    if owner is not None:
        path, cls = owner
        return (f"it runs inside {cls.__name__} ({path}): if that module {apart} "
                f'splitc.register_module({cls.__name__}, "channelwise") {fix}')
    if node.op == "call_function":
        name = getattr(node.target, "__name__", node.target)
        return f'if it {apart} splitc.register_function({name}, "channelwise") {fix}'
    return f"wrap the call in a module and declare that with splitc.register_module {fix}"


def _enclosing_module(node: fx.Node) -> tuple[str, type] | None:
    """The innermost module outside torch whose forward was traced into ``node`` (path, type)."""
    for path, cls in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
        if isinstance(cls, type) and not cls.__module__.startswith("torch."):
            return path, cls
    return None


def _qualname(target: object) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}".lstrip(".")


def _who(user: bool) -> str:
    return "by register_module/register_function" if user else "built in"
