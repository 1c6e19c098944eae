"""The channel IR: which channels of which tensors must share one group assignment.

``build_channel_graph(gm, input_size)`` runs the traced model once on a sample input (batch 1,
eval mode, no grad) and, alongside, runs the op-rule registry on *label tensors* (see
``channel_rules``). The result is a :class:`ChannelIR`:

* **elements**: one integer per channel created by a *source* (a weight layer's output, a
  parameter used as a tensor, the graph input, an opaque op's output);
* **nodes**: elements that must take one group together (connected components of the ties:
  residual adds, SE gates, depthwise and grouped-conv blocks). A node is one column of an
  assignment matrix;
* **spaces** (domains): nodes connected through a common source, i.e. the paper's channel
  spaces closed under ties. ``ir.graph`` is a ``networkx.DiGraph`` over spaces whose edges say
  which space feeds which (through a weight layer or a channel-mixing op);
* **weight layers**, **channel ops** (BN/LN) and **parameter uses**: for every parameter axis,
  the element at each index. Passes (permute, mask, partition) and counting read these; none of
  them re-analyses the graph.

An op without a rule never yields a silently wrong answer: its inputs and outputs become
*opaque* (never permuted, never split) and a warning names it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .channel_rules import RULES, Decline, RuleContext
from .opkinds import kind_of, target_name

FLAGS = ("opaque", "shared_only")


@dataclass(frozen=True)
class Source:
    """A tensor whose channels are fresh elements ``start .. start+size-1``."""

    index: int
    node: str
    role: str  # layer | param | input | derived | opaque
    start: int
    size: int
    topo: int

    @property
    def elems(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.size)


@dataclass(frozen=True)
class WeightLayer:
    """A conv or linear call: input elements per input index, fresh output elements."""

    name: str            # module qualname (the parameter prefix)
    node: str            # fx node name
    op: str              # conv | linear
    in_elems: np.ndarray
    out_elems: np.ndarray
    conv_groups: int
    taps: int            # kernel elements per weight (kh*kw; 1 for linear)
    positions: int       # output positions per sample (H*W, or tokens)
    has_bias: bool
    topo: int


@dataclass(frozen=True)
class ChannelOp:
    """A per-channel op with parameters (BN, LN): the element of each of its channels."""

    name: str
    node: str
    elems: np.ndarray
    params: tuple[str, ...]   # parameter/buffer names, qualified
    positions: int
    topo: int


@dataclass(frozen=True)
class ParamUse:
    """The element at each index of one axis of a parameter (``dim=None``: every entry)."""

    param: str
    dim: int | None
    labels: np.ndarray
    conv_groups: int = 1


@dataclass
class Space:
    """A channel space (domain): its nodes, sources and flags."""

    id: int
    name: str
    nodes: np.ndarray           # global node ids, in order; index = position within the space
    node_sizes: np.ndarray      # channels each node stands for (max count over one source)
    sources: tuple[int, ...]
    topo: int                   # topo index of its first source
    flags: dict[str, str] = field(default_factory=dict)  # flag -> reason

    @property
    def size(self) -> int:
        return int(self.node_sizes.sum())

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def splittable(self) -> bool:
        return not self.flags and self.role != "param"

    role: str = "activation"


@dataclass
class ChannelIR:
    gm: fx.GraphModule
    input_size: tuple[int, ...]
    sources: list[Source]
    layers: list[WeightLayer]
    channel_ops: list[ChannelOp]
    param_uses: list[ParamUse]
    output_elems: np.ndarray
    node_of: np.ndarray        # element -> global node id
    space_of: np.ndarray       # element -> space id
    node_index: np.ndarray     # element -> index of its node within its space
    spaces: list[Space]
    graph: nx.DiGraph
    node_cells: np.ndarray     # global node -> cell id (nodes covered by the same sources)
    node_first_elem: np.ndarray  # global node -> one of its elements
    atom_key: np.ndarray       # element -> smallest element that is the same channel as it
    topo_of: dict[str, int]
    warnings: list[str]
    barriers: dict[str, list[str]]

    @property
    def class_space(self) -> int:
        return int(self.space_of[self.output_elems[0]])

    def layer(self, name: str) -> WeightLayer:
        return next(layer for layer in self.layers if layer.name == name)

    def node_index_of_node(self, nodes: np.ndarray) -> np.ndarray:
        """Index within its space of each global node id."""
        return self.node_index[self.node_first_elem[nodes]]

    def spaces_of(self, elems: np.ndarray) -> np.ndarray:
        return np.unique(self.space_of[elems])


class ChannelGraphBuilder:
    """Mutable state the rules write into; frozen into a ChannelIR by :meth:`finish`."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.topo_of = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        self.count = 0
        self.sources: list[Source] = []
        self.layers: list[WeightLayer] = []
        self.channel_ops: list[ChannelOp] = []
        self.param_uses: list[ParamUse] = []
        self.ties: list[np.ndarray] = []       # (2, k) pairs that are the same channel
        self.group_ties: list[np.ndarray] = []  # (2, k) pairs that only share a group
        self.block_anchors: list[tuple[int, np.ndarray]] = []  # conv-group input -> its outputs
        self.edges: list[tuple[np.ndarray, int]] = []  # (input elems, output source)
        self.flags: dict[str, list[tuple[np.ndarray, str]]] = {f: [] for f in FLAGS}
        self.warnings: list[str] = []
        self.barriers: dict[str, list[str]] = {}  # op target -> nodes it made opaque

    # -- element creation
    def fresh(self, n: int, node: fx.Node, role: str, inputs: Any = None) -> torch.Tensor:
        src = Source(len(self.sources), node.name, role, self.count, n, self.topo_of[node.name])
        self.sources.append(src)
        self.count += n
        if inputs is not None:
            self.edges.append((_as_np(inputs), src.index))
        return torch.arange(src.start, src.start + n)

    def fresh_like(self, real: torch.Tensor, node: fx.Node, role: str, inputs: Any = None) -> torch.Tensor:
        """Fresh elements along the channel dim of ``real`` (dim 1 of NCHW, the last dim of
        token tensors), broadcast over every other dim."""
        if real.dim() < 2:
            elems = self.fresh(1, node, role, inputs)
            labels = elems.reshape([1] * real.dim()).expand(real.shape) if real.dim() else elems[0]
        else:
            dim = real.dim() - 1 if real.dim() == 3 else 1
            elems = self.fresh(real.shape[dim], node, role, inputs)
            view = [1] * real.dim()
            view[dim] = real.shape[dim]
            labels = elems.view(view).expand(real.shape)
        if role == "derived":
            self.flag(elems, "shared_only", f"channel-mixing output of {node.name}")
        return labels

    def fresh_entries(self, real: torch.Tensor, node: fx.Node, role: str) -> torch.Tensor:
        """Fresh elements for every entry of ``real`` (parameters used as tensors)."""
        return self.fresh(max(real.numel(), 1), node, role).reshape(real.shape)

    # -- relations
    def tie(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Elements meeting position by position in ``a`` and ``b`` belong to one node."""
        stride = max(self.count, 1)  # pack each pair into one int64: a 1-D unique is far faster
        keys = torch.unique(a.reshape(-1).long() * stride + b.expand(a.shape).reshape(-1).long())
        self.ties.append(torch.stack([keys // stride, keys % stride]).numpy())

    def group_together(self, elems: np.ndarray) -> None:
        """These elements take one group, but stay distinct channels (a conv-group block)."""
        if len(elems) > 1:
            self.group_ties.append(np.stack([elems[:-1], elems[1:]]))

    def flag(self, elems: Any, flag: str, reason: str) -> None:
        self.flags[flag].append((np.unique(_as_np(elems)), reason))

    # -- records
    def add_weight_layer(self, node: fx.Node, op: str, module: Any, in_elems: torch.Tensor,
                         out_elems: torch.Tensor, out: torch.Tensor, name: str | None = None) -> None:
        """Record a conv/linear call; ``module`` is the module, or for a functional call an
        object with the same ``groups``/``kernel_size``/``bias`` and ``name`` its parameters'
        prefix."""
        groups = getattr(module, "groups", 1)
        taps = int(np.prod(module.kernel_size)) if op == "conv" else 1
        positions = int(out.shape[2:].numel()) if op == "conv" else int(out.shape[1:-1].numel())
        ins, outs = in_elems.numpy(), out_elems.numpy()
        if groups > 1 and len(ins) == len(outs) == groups:  # depthwise: out j is in j's channel
            self.ties.append(np.stack([ins, outs]))
        elif groups > 1:  # whole conv-groups move together, on both sides
            for block_in, block_out in zip(np.split(ins, groups), np.split(outs, groups)):
                self.group_together(np.concatenate([block_in, block_out]))
                self.block_anchors.append((int(block_in[0]), block_out))
        name = str(node.target) if name is None else name
        self.layers.append(WeightLayer(name, node.name, op, ins, outs, groups, taps, positions,
                                       module.bias is not None, self.topo_of[node.name]))
        self.param_uses += [ParamUse(f"{name}.weight", 0, outs), ParamUse(f"{name}.weight", 1, ins, groups)]
        if module.bias is not None:
            self.param_uses.append(ParamUse(f"{name}.bias", 0, outs))
        self.edges.append((np.unique(ins), self.sources[-1].index))

    def add_channel_op(self, node: fx.Node, elems: torch.Tensor, params: list[str], out: torch.Tensor,
                       read: tuple[str, ...] = ()) -> None:
        """``params``: the module's own parameter names; ``read``: qualified parameters a
        functional call reads (get_attr), per channel too."""
        name = str(node.target) if node.op == "call_module" else node.name
        qualified = tuple(f"{name}.{p}" for p in params)
        positions = int(out[0].numel() // max(elems.numel(), 1))
        self.channel_ops.append(ChannelOp(name, node.name, elems.numpy(), qualified + tuple(read), positions,
                                          self.topo_of[node.name]))
        self.param_uses += [ParamUse(p, 0, elems.numpy()) for p in qualified + tuple(read)]

    def claim_param(self, param: str) -> None:
        """A rule records ``param`` per axis (a functional layer's weight): drop its use as a
        tensor of entries, so passes permute and slice it by the layer's axes."""
        self.param_uses = [u for u in self.param_uses if not (u.param == param and u.dim is None)]

    def opaque(self, node: fx.Node, label_inputs: list[torch.Tensor], out: Any, why: str | None = None) -> Any:
        """No rule (or the rule declined, saying ``why``): freeze the inputs, give the output
        opaque elements."""
        what = target_name(node)
        reason = f"no channel rule for {what} (node {node.name})" if why is None else f"{what} {why} (node {node.name})"
        self.barriers.setdefault(what, []).append(node.name)
        fix = ("register a rule with @channel_rule to split through it" if why is None
               else "choose --split-from below it")
        self.warnings.append(f"{reason}: treated as a scope barrier; {fix}")
        inputs = torch.cat([t.reshape(-1) for t in label_inputs]) if label_inputs else None
        if inputs is not None:
            self.flag(inputs.unique(), "opaque", reason)
        return _map_tensors(out, lambda t: self._opaque_out(t, node, inputs, reason))

    def _opaque_out(self, real: torch.Tensor, node: fx.Node, inputs: Any, reason: str) -> torch.Tensor:
        labels = self.fresh_like(real, node, "opaque", inputs)
        self.flag(labels.unique(), "opaque", reason)
        return labels


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
    from .channel_finalize import finish

    ir = finish(builder, gm, tuple(input_size), output)
    for message in ir.warnings:
        warnings.warn(message, stacklevel=2)
    return ir


def raise_output_error(output: Any) -> None:
    from .errors import SplitcError

    raise SplitcError(
        f"the model returns {type(output).__name__}, not one logits tensor; splitc splits "
        "classifiers whose forward returns a (batch, classes) tensor. Wrap the model to return it."
    )


def _as_np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).numpy()
    return np.asarray(x).reshape(-1)


def has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(has_tensor(v) for v in x)
    return False


def flat_tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flat_tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in flat_tensors(v)]
    return []


def _map_tensors(x: Any, fn) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x
