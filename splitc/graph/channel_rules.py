"""Channel rules: how channels flow through each op kind (the op-rule registry).

Every tensor in the traced graph carries a *label tensor* of the same shape (batch 1) whose
entries are channel-element ids. A rule receives the labels of an op's inputs and returns the
labels of its output, recording ties and weight layers on the builder as it goes:

* a weight layer (conv, linear) creates fresh elements for its output channels;
* an op that keeps channels returns its input labels;
* reshape-like ops (view, cat, chunk, flatten, shuffle) are replayed on the labels themselves,
  so concat offsets, flatten strides and shuffles come out exactly, with no special cases;
* elementwise binary ops tie the elements that meet at each position (residual add, SE gate).

Rules are pure functions of their :class:`RuleContext`, registered once per :class:`Kind` with
``@channel_rule``; registering a kind twice raises. A node whose kind has no rule, or whose rule
returns None or a :class:`Decline` (which says why), becomes an opaque barrier (see
``channel_graph``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from splitc.graph.channel_builder import ChannelGraphBuilder
from splitc.graph.opkinds import Kind


RuleFn = Callable[["RuleContext"], Any]
RULES: dict[Kind, RuleFn] = {}


def channel_rule(kind: Kind) -> Callable[[RuleFn], RuleFn]:
    """Register the rule for ``kind``; a second registration for the same kind is a bug."""

    def register(fn: RuleFn) -> RuleFn:
        if kind in RULES:
            raise ValueError(f"duplicate channel rule for {kind}: {RULES[kind].__name__} and {fn.__name__}")
        RULES[kind] = fn
        return fn

    return register


@dataclass(frozen=True)
class Decline:
    """A rule's answer for a form of its op that channels cannot follow; ``why`` completes
    "<op> ..." in the barrier's warning."""

    why: str


@dataclass
class RuleContext:
    """Everything a rule may read: the node, its module, real and label arguments, the output."""

    node: fx.Node
    module: nn.Module | None
    args: tuple            # real argument values
    kwargs: dict
    label_args: tuple      # the same arguments with tensors replaced by their labels
    label_kwargs: dict
    out: Any               # the real output value
    builder: "ChannelGraphBuilder"

    def arg(self, index: int, name: str, default: Any = None, labels: bool = False) -> Any:
        """Positional-or-keyword argument lookup (real value, or labels)."""
        args, kwargs = (self.label_args, self.label_kwargs) if labels else (self.args, self.kwargs)
        if len(args) > index:
            return args[index]
        return kwargs.get(name, default)


def channel_elems(labels: torch.Tensor, dim: int, builder: "ChannelGraphBuilder | None" = None
                  ) -> torch.Tensor | None:
    """The element of each index along ``dim``.

    When the labels vary along the other dims (a token concat, a spatial concat), an op that
    treats ``dim`` as channels everywhere makes those elements one channel: with a builder they
    are tied; without one, None says the labels are not uniform.
    """
    moved = labels.movedim(dim, -1).reshape(-1, labels.shape[dim])
    first = moved[0]
    if moved.shape[0] > 1 and not bool((moved == first).all()):
        if builder is None:
            return None
        builder.tie(moved, first.expand_as(moved))
    return first.clone()


def broadcast_elems(elems: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """Label tensor of ``shape`` whose entries along ``dim`` are ``elems`` (a cheap view)."""
    view = [1] * len(shape)
    view[dim] = elems.numel()
    return elems.view(view).expand(shape)


# ---------------------------------------------------------------- weight layers
@dataclass(frozen=True)
class FunctionalLayer:
    """What a weight-layer record reads of a module, for ``F.conv2d`` / ``F.linear`` called
    with parameter tensors (timm's Conv2dSame, Linear): ``name`` is the parameters' prefix."""

    name: str
    out_channels: int
    groups: int
    kernel_size: tuple[int, ...]
    bias: Any


def functional_layer(ctx: RuleContext) -> FunctionalLayer | Decline:
    """The layer a functional conv/linear call stands for, when its weight (and bias) are
    parameters ``P.weight`` (``P.bias``) read directly; a computed weight (timm's weight
    standardisation) declines: no pass could slice it."""
    weight_node = _node_arg(ctx.node, 1, "weight")
    bias_node = _node_arg(ctx.node, 2, "bias")
    if not _is_param_read(weight_node, "weight"):
        return Decline("computes its weight from parameters (weight standardisation), which a branch cannot slice")
    name = str(weight_node.target)[: -len(".weight")]
    if len(weight_node.users) > 1 or (bias_node is not None and not (
            _is_param_read(bias_node, "bias") and str(bias_node.target) == f"{name}.bias" and len(bias_node.users) == 1)):
        return Decline("shares its parameters with other ops or reads a bias that is not its own")
    weight = ctx.arg(1, "weight")
    groups = int(ctx.arg(6, "groups", 1)) if weight.dim() > 2 else 1  # a linear weight is 2-D
    for node in (weight_node, bias_node):
        if node is not None:  # recorded per axis by the layer, not as a tensor of entries
            ctx.builder.claim_param(str(node.target))
    return FunctionalLayer(name, weight.shape[0], groups, tuple(weight.shape[2:]), ctx.arg(2, "bias"))


def _node_arg(node: fx.Node, index: int, name: str) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _is_param_read(node: Any, suffix: str) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and str(node.target).endswith(f".{suffix}")


@channel_rule(Kind.CONV)
def conv_rule(ctx: RuleContext) -> torch.Tensor | Decline | None:
    conv = ctx.module if ctx.module is not None else functional_layer(ctx)
    if isinstance(conv, Decline):
        return conv
    if conv is None or ctx.out.dim() != 4:
        return None
    in_elems = channel_elems(ctx.label_args[0], 1, ctx.builder)
    out_elems = ctx.builder.fresh(conv.out_channels, ctx.node, "layer")
    ctx.builder.add_weight_layer(ctx.node, "conv", conv, in_elems, out_elems, ctx.out, getattr(conv, "name", None))
    return broadcast_elems(out_elems, ctx.out.shape, 1)


@channel_rule(Kind.LINEAR)
def linear_rule(ctx: RuleContext) -> torch.Tensor | Decline | None:
    linear = ctx.module if ctx.module is not None else functional_layer(ctx)
    if isinstance(linear, Decline):
        return linear
    if linear is None:
        return None
    in_elems = channel_elems(ctx.label_args[0], -1, ctx.builder)
    out_elems = ctx.builder.fresh(ctx.out.shape[-1], ctx.node, "layer")
    ctx.builder.add_weight_layer(ctx.node, "linear", linear, in_elems, out_elems, ctx.out, getattr(linear, "name", None))
    return broadcast_elems(out_elems, ctx.out.shape, ctx.out.dim() - 1)


# ---------------------------------------------------------------- per-channel ops
@channel_rule(Kind.BATCH_NORM)
def batch_norm_rule(ctx: RuleContext) -> torch.Tensor | None:
    labels = ctx.label_args[0]
    elems = channel_elems(labels, 1, ctx.builder)
    if ctx.module is not None:
        names = ("weight", "bias", "running_mean", "running_var")
        ctx.builder.add_channel_op(ctx.node, elems, [n for n in names if getattr(ctx.module, n) is not None], ctx.out)
    else:  # F.batch_norm (timm's BatchNormAct2d): the vectors arrive as labelled tensors
        names = ("running_mean", "running_var", "weight", "bias")
        ctx.builder.add_channel_op(ctx.node, elems, [], ctx.out, _per_channel_vectors(ctx, elems, names, 1))
    return labels


def _per_channel_vectors(ctx: RuleContext, elems: torch.Tensor, names: tuple[str, ...], first: int
                         ) -> tuple[str, ...]:
    """The per-channel vector arguments of a functional norm. A parameter read directly is
    recorded per channel like a module's (returned, qualified; passes slice it by channel):
    tying its entries would make the parameter a source that joins every channel it covers
    (a DenseNet concat) into one space. A computed vector is tied to the channels."""
    read = []
    for index, name in enumerate(names, start=first):
        vector = ctx.arg(index, name, labels=True)
        if not (isinstance(vector, torch.Tensor) and vector.numel() == elems.numel()):
            continue
        node = _node_arg(ctx.node, index, name)
        if isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == 1:
            ctx.builder.claim_param(str(node.target))
            read.append(str(node.target))
        else:
            ctx.builder.tie(vector.reshape(-1), elems)
    return tuple(read)


@channel_rule(Kind.GROUP_NORM)
def group_norm_rule(ctx: RuleContext) -> torch.Tensor | None:
    """Statistics over each block of C/G channels: a block moves whole (like a conv-group),
    its channels stay distinct; the affine is per channel."""
    labels = ctx.label_args[0]
    groups = ctx.module.num_groups if ctx.module is not None else int(ctx.arg(1, "num_groups"))
    elems = channel_elems(labels, 1, ctx.builder)
    for block in np.split(elems.numpy(), groups):
        ctx.builder.group_together(block)
    if ctx.module is not None:
        params = [n for n in ("weight", "bias") if getattr(ctx.module, n) is not None]
        ctx.builder.add_channel_op(ctx.node, elems, params, ctx.out)
    else:
        ctx.builder.add_channel_op(ctx.node, elems, [], ctx.out, _per_channel_vectors(ctx, elems, ("weight", "bias"), 2))
    return labels


@channel_rule(Kind.LAYER_NORM)
def layer_norm_rule(ctx: RuleContext) -> torch.Tensor | None:
    """Per-channel affine after statistics over *all* normalised channels: keeps the labels,
    but the normalised elements can only be computed where every channel is present."""
    labels = ctx.label_args[0]
    shape = ctx.arg(1, "normalized_shape") if ctx.module is None else ctx.module.normalized_shape
    norm_dims = len(tuple(shape))
    rows = labels.reshape(-1, *labels.shape[labels.dim() - norm_dims:])
    if not bool((rows == rows[0]).all()):  # every row is normalised with the same affine
        ctx.builder.tie(rows, rows[0].expand_as(rows))
    elems = rows[0]
    ctx.builder.flag(elems, "shared_only", f"normalised together by {ctx.node.name}")
    if ctx.module is not None:
        params = [n for n in ("weight", "bias") if getattr(ctx.module, n) is not None]
        ctx.builder.add_channel_op(ctx.node, elems.flatten(), params, ctx.out)
    else:  # functional form: the affine parameters arrive as labelled get_attr tensors
        for index, name in ((2, "weight"), (3, "bias")):
            param = ctx.arg(index, name, labels=True)
            if isinstance(param, torch.Tensor):
                ctx.builder.tie(param, elems)
        ctx.builder.add_channel_op(ctx.node, elems.flatten(), [], ctx.out)
    return labels


@channel_rule(Kind.ELEMENTWISE)
def elementwise_rule(ctx: RuleContext) -> torch.Tensor:
    return ctx.label_args[0]


@channel_rule(Kind.POOL)
def pool_rule(ctx: RuleContext) -> torch.Tensor | None:
    if not isinstance(ctx.out, torch.Tensor):
        return None
    elems = channel_elems(ctx.label_args[0], 1, ctx.builder)
    return broadcast_elems(elems, ctx.out.shape, 1)


@channel_rule(Kind.PAD)
def pad_rule(ctx: RuleContext) -> torch.Tensor | Decline | None:
    """Padding of the spatial dims keeps each channel's positions in that channel (a padded
    entry belongs to its channel); padding the channel dim itself declines (a barrier)."""
    labels = ctx.label_args[0]
    pad = ctx.module.padding if ctx.module is not None else ctx.arg(1, "pad")
    pad = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
    if labels.dim() < 3 or len(pad) > 2 * (labels.dim() - 2):
        return Decline("pads the channel dim")
    elems = channel_elems(labels, 1, ctx.builder)
    return broadcast_elems(elems, ctx.out.shape, 1)


@channel_rule(Kind.SOFTMAX)
def softmax_rule(ctx: RuleContext) -> torch.Tensor | None:
    """Softmax over positions of one channel (attention pooling over H*W) or over parallel
    paths (SK's path attention) keeps the labels; over channels it mixes them, like a
    reduction across channels."""
    labels = ctx.label_args[0]
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim")
    if dim is None:
        return None
    if bool((labels == labels.narrow(dim, 0, 1)).all()) or _tie_parallel_fibers(ctx, labels, (dim,)):
        return labels  # over positions of one channel, or over parallel paths (SK attention)
    ctx.builder.flag(labels.unique(), "shared_only", f"softmax across channels by {ctx.node.name}")
    return ctx.builder.fresh_like(ctx.out, ctx.node, "derived", inputs=labels)


# ---------------------------------------------------------------- ties
@channel_rule(Kind.BINARY)
def binary_rule(ctx: RuleContext) -> torch.Tensor:
    """Elementwise binary op: operands that meet position by position are the same channels.

    An operand broadcast across *varying* channels of the other (a one-channel spatial map, a
    bias table added to attention scores) ties nothing: its entries land by position in a
    tensor whose labels do not carry them, so they are frozen (opaque): never permuted, never
    split, and needed whole by every group.
    """
    tensors = [a for a in ctx.label_args[:2] if isinstance(a, torch.Tensor)]
    if len(tensors) < 2:
        return tensors[0]
    if any(t.numel() == 1 for t in tensors):  # a scalar tensor is channel-agnostic
        return tensors[0] if tensors[1].numel() == 1 else tensors[1]
    a, b = (t.expand(ctx.out.shape) for t in tensors)
    spread = [_spreads_over_varying(tensors[0], b), _spreads_over_varying(tensors[1], a)]
    for operand, spreads in zip(tensors, spread):
        if spreads:  # its values land by position where the output labels do not follow them
            ctx.builder.flag(operand.unique(), "opaque", f"broadcast across channels by {ctx.node.name}")
    if all(spread):
        return ctx.builder.fresh_like(ctx.out, ctx.node, "derived", inputs=torch.cat([a.flatten(), b.flatten()]))
    if any(spread):
        return b if spread[0] else a
    ctx.builder.tie(a, b)
    return a


def _spreads_over_varying(operand: torch.Tensor, other_full: torch.Tensor) -> bool:
    """True when ``operand`` is broadcast along a dim on which ``other_full`` is not constant."""
    lead = other_full.dim() - operand.dim()
    for dim in range(other_full.dim()):
        size = operand.shape[dim - lead] if dim >= lead else 1
        if size == 1 and other_full.shape[dim] > 1:
            first = other_full.narrow(dim, 0, 1)
            if not bool((other_full == first).all()):
                return True
    return False


# ---------------------------------------------------------------- replayed on labels
@channel_rule(Kind.RESHAPE)
def reshape_rule(ctx: RuleContext) -> Any:
    """Run the op itself on the label tensors: exact for any view/cat/chunk/flatten/shuffle."""
    args = tuple(_contiguous(a) for a in ctx.label_args)
    kwargs = {k: _contiguous(v) for k, v in ctx.label_kwargs.items()}
    node = ctx.node
    if node.target is operator.getitem:  # the index is a real value, never a label
        args = (args[0], ctx.args[1])
    if node.op == "call_module":
        result = ctx.module(*args, **kwargs)
    elif node.op == "call_method":
        result = getattr(args[0], node.target)(*args[1:], **kwargs)
    else:
        result = node.target(*args, **kwargs)
    return result if _same_structure(result, ctx.out) else None


def _contiguous(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, (list, tuple)):
        return type(value)(_contiguous(v) for v in value)
    return value


def _same_structure(labels: Any, real: Any) -> bool:
    if isinstance(real, torch.Tensor):
        return isinstance(labels, torch.Tensor) and labels.shape == real.shape
    if isinstance(real, (list, tuple)):
        return isinstance(labels, (list, tuple)) and len(labels) == len(real) and all(
            _same_structure(lab, r) for lab, r in zip(labels, real))
    return True


@channel_rule(Kind.REDUCE)
def reduce_rule(ctx: RuleContext) -> torch.Tensor | None:
    """A reduction keeps channels when it only runs over positions of one channel (spatial
    mean), or over parallel paths that each carry the channel (SK's and ResNeSt's sum over
    paths: like a residual add, it ties channel c of every path); otherwise it mixes channels:
    the inputs become shared_only, the output is new."""
    labels = ctx.label_args[0]
    dims = ctx.arg(1, "dim")
    keepdim = bool(ctx.arg(2, "keepdim", False))
    if dims is None or not isinstance(ctx.out, torch.Tensor):
        dims = tuple(range(1, labels.dim()))
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    low = labels.amin(dim=dims, keepdim=keepdim)
    if bool((low == labels.amax(dim=dims, keepdim=keepdim)).all()):
        return low
    if _tie_parallel_fibers(ctx, labels, dims):
        return low
    ctx.builder.flag(labels.unique(), "shared_only", f"reduced across channels by {ctx.node.name}")
    return ctx.builder.fresh_like(ctx.out, ctx.node, "derived", inputs=labels)


def _tie_parallel_fibers(ctx: RuleContext, labels: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Tie the entries each output position reduces (its fiber) when fibers are pairwise equal
    or disjoint and more than one is distinct: parallel paths, one channel per fiber. A mean
    over all channels (one distinct fiber) or overlapping windows are not that."""
    dims = tuple(d % labels.dim() for d in dims)
    rest = [d for d in range(labels.dim()) if d not in dims]
    size = int(np.prod([labels.shape[d] for d in dims]))
    fibers = torch.unique(labels.permute(*rest, *dims).reshape(-1, size).sort(dim=1).values, dim=0)
    if len(fibers) < 2:
        return False
    stride = int(labels.max()) + 1
    pairs = torch.unique(torch.arange(len(fibers))[:, None] * stride + fibers)
    if len(torch.unique(pairs % stride)) != len(pairs):  # an element in two fibers
        return False
    ctx.builder.tie(fibers, fibers[:, :1].expand_as(fibers))
    return True
