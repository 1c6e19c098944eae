"""Build the channel IR of a traced model (the IR itself is ``channel_ir``).

``build_channel_graph(gm, input_size)`` runs the traced model once on a sample input (batch 1,
eval mode, no grad) and, alongside, runs the op-rule registry (``channel_rules``) on *label
tensors*: every tensor's twin whose entries are channel element ids. The rules write into a
:class:`~splitc.graph.channel_builder.ChannelGraphBuilder`; ``channel_finalize`` freezes it.
An op without a rule never yields a silently wrong answer: its inputs and outputs become
*opaque* (never permuted, never split) and a warning names it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.fx as fx

from splitc.core.errors import SplitcError, SplitcWarning
from splitc.graph.channel_builder import ChannelGraphBuilder
from splitc.graph.channel_finalize import finish
from splitc.graph.channel_ir import ChannelIR, ParamUse, flat_tensors, has_tensor
from splitc.graph.channel_rules import RULES, Decline, RuleContext
from splitc.graph import channelwise_rule  # noqa: F401  (registers the user's channelwise kind)
from splitc.graph.opkinds import kind_of


class LabelInterpreter(fx.Interpreter):
    """Runs the real graph and, beside it, the channel rules on label tensors."""

    def __init__(self, gm: fx.GraphModule, builder: ChannelGraphBuilder) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.builder = builder
        self.labels: dict[fx.Node, Any] = {}
        self.output_labels: Any = None

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        label_args = fx.node.map_arg(n.args, lambda a: self.labels[a])
        label_kwargs = fx.node.map_arg(n.kwargs, lambda a: self.labels[a])
        self.labels[n] = self._labels_for(n, out, label_args, label_kwargs)
        for dead in self.user_to_last_uses.get(n, []):
            self.labels.pop(dead, None)
        return out

    def _labels_for(self, n: fx.Node, out: Any, label_args: tuple, label_kwargs: dict) -> Any:
        b = self.builder
        if n.op == "placeholder":
            labels = b.fresh_like(out, n, "input")
            b.flag(labels.unique(), "opaque", "graph input channels are fixed")
            return labels
        if n.op == "get_attr":
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return out  # integer tables (indices) are constants, not channels
            if all(kind_of(user, b.modules) is None for user in n.users):
                # only ops without rules read it (a fused attention kernel's weights): one
                # frozen element stands for the whole tensor instead of one per entry
                elem = b.fresh(1, n, "param")
                b.flag(elem, "opaque", f"read only by ops without rules ({n.name})")
                labels = elem.reshape([1] * out.dim()).expand(out.shape)
            else:
                labels = b.fresh_entries(out, n, "param")
            b.param_uses.append(ParamUse(str(n.target), None, labels.numpy()))
            return labels
        if n.op == "output":
            self.output_labels = label_args[0]
            return label_args[0]
        if not has_tensor(out):
            return out
        return self._apply_rule(n, out, label_args, label_kwargs)

    def _apply_rule(self, n: fx.Node, out: Any, label_args: tuple, label_kwargs: dict) -> Any:
        kind = kind_of(n, self.builder.modules)
        rule = RULES.get(kind) if kind is not None else None
        result = None
        if rule is not None:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            module = self.builder.modules.get(n.target) if n.op == "call_module" else None
            ctx = RuleContext(n, module, args, kwargs, label_args, label_kwargs, out, self.builder)
            result = rule(ctx)
        if result is None or isinstance(result, Decline):
            inputs = flat_tensors((label_args, label_kwargs))
            result = self.builder.opaque(n, inputs, out, getattr(result, "why", None))
        return result


def build_channel_graph(gm: fx.GraphModule, input_size: tuple[int, ...]) -> ChannelIR:
    """Analyse ``gm`` on a sample input of ``input_size`` (C,H,W) and return its ChannelIR."""
    builder = ChannelGraphBuilder(gm)
    interp = LabelInterpreter(gm, builder)
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            interp.run(torch.randn(1, *input_size))
    finally:
        gm.train(was_training)
    output = interp.output_labels
    if not isinstance(output, torch.Tensor):
        raise_output_error(output)
    ir = finish(builder, gm, tuple(input_size), output)
    for message in ir.warnings:
        warnings.warn(message, SplitcWarning, stacklevel=2)
    return ir


def raise_output_error(output: Any) -> None:
    raise SplitcError(
        f"the model returns {type(output).__name__}, not one logits tensor; splitc splits "
        "classifiers whose forward returns a (batch, classes) tensor. Wrap the model to return it."
    )


