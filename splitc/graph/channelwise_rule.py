"""The channel rule of ``Kind.CHANNELWISE``: the user's own per-channel op.

``splitc.register_module(MyNorm, "channelwise")`` declares that ``MyNorm`` reads one tensor and
returns one of the same shape whose channel c depends only on channel c of the input and on
entry c of its parameters and buffers: a custom norm, a learned per-channel scale, a
parameter-free activation. The rule keeps the labels and records every [C] parameter and
buffer in a ``ChannelOp``, as BatchNorm's are, so the passes permute and slice them with their
channel and counting counts them. What cannot follow one channel (a parameter of another
shape, a second tensor input, a [C] buffer that no state dict carries, so no pass could
permute it) declines: the op stays a barrier, and the warning says why.

It lives beside ``channel_rules`` (which is full) and ``channel_graph`` imports it, which
registers the rule.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from splitc.graph.channel_ir import flat_tensors
from splitc.graph.channel_rules import Decline, RuleContext, channel_elems, channel_rule
from splitc.graph.opkinds import Kind


@channel_rule(Kind.CHANNELWISE)
def channelwise_rule(ctx: RuleContext) -> torch.Tensor | Decline:
    """Keep the labels; record the module's per-channel tensors like a batch norm's."""
    labels = ctx.label_args[0] if ctx.label_args else None
    tensors = flat_tensors((ctx.label_args, ctx.label_kwargs))
    if (len(tensors) != 1 or tensors[0] is not labels or not isinstance(ctx.out, torch.Tensor)
            or ctx.out.shape != labels.shape or labels.dim() < 2):
        return Decline("is declared channelwise but does not map one tensor to one of the same shape")
    elems = channel_elems(labels, 1, ctx.builder)
    state = channelwise_state(ctx.module, len(elems))
    if isinstance(state, str):
        return Decline(f"is declared channelwise but {state}")
    if state:
        ctx.builder.add_channel_op(ctx.node, elems, list(state), ctx.out)
    return labels


def channelwise_state(module: nn.Module | None, channels: int) -> tuple[str, ...] | str:
    """The names (inside ``module``) of its [C] parameters and buffers, or why one of its
    tensors cannot follow a channel. Scalar buffers (a step counter) are left alone."""
    if module is None:
        return ()
    saved = set(module.state_dict(keep_vars=True))
    names = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        per_channel = tuple(t.shape) == (channels,)
        if per_channel and name in saved:
            names.append(name)
        elif per_channel:
            return f"holds buffer {name}, which its state dict does not save (register it persistent)"
        elif isinstance(t, nn.Parameter) or t.numel() > 1:
            shape = ", ".join(map(str, t.shape))
            return f"holds {name} of shape [{shape}], not [{channels}] (one entry per channel)"
    return tuple(names)
