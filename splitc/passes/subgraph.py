"""Build one subgraph of a partition (the trunk or one tree node) as a standalone GraphModule.

A :class:`SubgraphBuilder` copies the fx nodes that run in its subgraph, rewriting each one for
the sub-grid of positions the subgraph holds (see ``splitc/passes/partition.py`` for the rules), and
turns every tensor it reads from another subgraph into a placeholder. Producers learn what to
output from their consumers' requests, so the wiring is exact and nothing is computed twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_leaves
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from splitc.graph.group_tree import ancestor, node_name, parent_name
from splitc.graph.split_model import INPUT, SubgraphSpec, TensorRef

from .placement import Box, PartitionContext, box_of, full_box, grid_of, held
from .slicing import owned_copy, slice_channel_module, slice_weight_layer, slice_weight_tensors



EMPTY = object()  # a tensor of which a branch holds no position


class PartitionError(ValueError):
    """The graph has a construct partition cannot rewrite; the message names the node."""


class SubgraphBuilder:
    def __init__(self, ctx: PartitionContext, name: str, level: int, group: int,
                 builders: dict[str, "SubgraphBuilder"] | None = None) -> None:
        self.ctx, self.name, self.level, self.group = ctx, name, level, group
        self.builders = builders or {}
        self.graph = fx.Graph()
        self.root: dict[str, Any] = {}
        self.env: dict[str, fx.Node] = {}
        self.inputs: list[TensorRef] = []
        self.outputs: list[str] = []
        self.module: fx.GraphModule | None = None

    # -- producing
    def request(self, n: fx.Node) -> int:
        """Output index of tensor ``n`` (computed here) for a consumer subgraph."""
        if n.name not in self.env and self.ctx.info[n.name].level == self.level:
            self.value(n)
        if n.name not in self.env:
            raise PartitionError(f"node {n.name} is read by another subgraph but not computed as a tensor in {self.name}")
        if n.name not in self.outputs:
            self.outputs.append(n.name)
        return self.outputs.index(n.name)

    def finish(self) -> SubgraphSpec:
        self.graph.output(tuple(self.env[name] for name in self.outputs))
        draft = fx.GraphModule(self.root, self.graph)   # purity checks need an owning module
        draft.graph.eliminate_dead_code()
        placeholders = [n for n in draft.graph.nodes if n.op == "placeholder"]
        for node, ref in zip(placeholders, list(self.inputs)):
            if not node.users and ref.producer != INPUT:
                draft.graph.erase_node(node)
                self.inputs.remove(ref)
        draft.graph.lint()
        # rebuilt from the draft: only attributes the remaining nodes use are copied over
        self.module = fx.GraphModule(draft, draft.graph, class_name=_class_name(self.name))
        role = "trunk" if self.level < 0 else "branch"
        parent = parent_name(self.ctx.groups, self.level, self.group)
        return SubgraphSpec(self.name, role, self.level, None if self.level < 0 else self.group,
                            parent, tuple(self.inputs), len(self.outputs))

    # -- emitting
    def emit(self, n: fx.Node) -> None:
        ctx = self.ctx
        if n.op == "placeholder":
            if self.inputs:
                raise PartitionError("models with more than one input are not supported")
            self.inputs.append(TensorRef(INPUT, 0))
            self.env[n.name] = self.graph.placeholder(n.name)
            return
        if self.level >= 0 and ctx.is_reshape(n):
            return  # gathered when read: intermediate views (a shuffle's 5-D view) need not be boxes
        if self._holds_nothing(n):
            self.env[n.name] = EMPTY  # this branch holds no channel of it (a chunk's other half)
            return
        if n.name in ctx.layer_of and self._holds_nothing(n.args[0]):
            self.env[n.name] = self._input_free_output(n)
            return
        args = fx.node.map_arg(n.args, self.value)
        kwargs = fx.node.map_arg(n.kwargs, self.value)
        if any(a is EMPTY for a in tree_leaves((args, kwargs))):
            raise PartitionError(f"{n.name} in {self.name} reads a tensor the branch holds no channel of")
        if n.op == "call_module":
            target = self._module_for(n)
            self.env[n.name] = self.graph.call_module(target, args, kwargs)
            return
        if self.level >= 0 and n.op == "call_function" and n.name in ctx.layer_of:
            args, kwargs = self._functional_layer_args(n, list(args), dict(kwargs))
        elif self.level >= 0 and n.op == "call_function" and n.name in ctx.channel_op_of:
            args, kwargs = self._channel_op_args(n, list(args), dict(kwargs))
        self.env[n.name] = self.graph.create_node(n.op, n.target, args, kwargs, name=n.name)

    def value(self, a: fx.Node) -> fx.Node:
        """The node holding ``a`` here: computed here, copied (constants, sizes, parameters),
        or a placeholder fed by the subgraph that computes it."""
        if a.name in self.env:
            return self.env[a.name]
        info = self.ctx.info[a.name]
        if info.level is not None and a.op != "get_attr" and self._holds_nothing(a):
            return EMPTY
        if a.op == "get_attr":
            node = self._parameter(a)
        elif info.level is None:      # a non-tensor (a size): recompute it here
            node = self.graph.create_node(a.op, a.target, fx.node.map_arg(a.args, self.value),
                                          fx.node.map_arg(a.kwargs, self.value), name=a.name)
        elif info.level == self.level and self.ctx.is_reshape(a) and _is_tensor_shape(info.shape):
            node = self._gather(a)
        elif info.level == self.level:
            raise PartitionError(f"node {a.name} (a tuple of tensors) is read directly by an op "
                                 "partition cannot rewrite")
        elif info.level > self.level:
            raise PartitionError(f"node {a.name} runs deeper in the tree than its reader")
        else:
            node = self._placeholder(a)
        self.env[a.name] = node
        return node

    def box(self, a: fx.Node) -> Box:
        return box_of(self.ctx.place, self.ctx.info[a.name], self.level, self.group)

    # -- helpers
    def _holds_nothing(self, a: Any) -> bool:
        if not isinstance(a, fx.Node) or self.level < 0:
            return False
        info = self.ctx.info[a.name]
        return info.level is not None and _is_tensor_shape(info.shape) and 0 in self.box(a).shape

    def _input_free_output(self, n: fx.Node) -> fx.Node:
        """A layer whose held outputs read no held input (the masked model zeroed all their
        weights): its output is the bias, broadcast to the batch."""
        layer = self.ctx.layer_of[n.name]
        keep = held(self.ctx.place, layer.out_elems, self.level, self.group)
        bias = (_get_attr(self.ctx.gm, f"{layer.name}.bias").detach()[torch.as_tensor(np.flatnonzero(keep))]
                if layer.has_bias else torch.zeros(int(keep.sum())))
        shape = self.box(n).shape
        view = (1, -1) + (1,) * (len(shape) - 1) if layer.op == "conv" else (1,) * len(shape) + (-1,)
        value = self._buffer(f"bias_only_{n.name}", bias.reshape(view).clone())
        anchor = next(p for p in self.graph.nodes if p.op == "placeholder")
        batch = self.graph.call_method("size", (anchor, 0))
        return self.graph.call_method("expand", (value, batch, *shape))

    def _placeholder(self, a: fx.Node) -> fx.Node:
        info = self.ctx.info[a.name]
        producer_level = info.level
        groups = self.ctx.groups
        producer = node_name(groups, producer_level,
                             ancestor(groups, self.level, self.group, producer_level) if producer_level >= 0 else 0)
        index = self.builders[producer].request(a)
        self.inputs.append(TensorRef(producer, index))
        node = self.graph.placeholder(f"{a.name}_from_{producer.replace('.', '_')}")
        have = (full_box(info.shape) if producer_level < 0 else
                box_of(self.ctx.place, info, producer_level, self._group_at(producer_level)))
        want = self.box(a)
        for dim, (h, w) in enumerate(zip(have.index, want.index)):
            if len(h) == len(w) and np.array_equal(h, w):
                continue
            pos = np.searchsorted(h, w)
            if (pos >= len(h)).any() or not np.array_equal(h[np.minimum(pos, len(h) - 1)], w):
                raise PartitionError(f"{self.name} reads channels of {a.name} its producer does not hold")
            idx = self._buffer(f"cut_{a.name}_{dim}", torch.as_tensor(pos))
            node = self.graph.call_method("index_select", (node, dim + 1, idx))
        return node

    def _group_at(self, level: int) -> int:
        return self.group // (self.ctx.groups[self.level] // self.ctx.groups[level])

    def _buffer(self, name: str, tensor: torch.Tensor) -> fx.Node:
        target = _unique(name.replace(".", "_"), self.root)
        self.root[target] = tensor
        return self.graph.get_attr(target)

    def _parameter(self, a: fx.Node) -> fx.Node:
        """A parameter or constant read as a tensor: this subgraph's own copy of its held part."""
        original = self.ctx.gm.get_parameter(a.target) if _is_param(self.ctx.gm, a.target) else \
            _get_attr(self.ctx.gm, a.target)
        info = self.ctx.info[a.name]
        if self.level < 0:
            self.root[a.target] = original
            return self.graph.get_attr(a.target)
        tensor = original.detach() if isinstance(original, torch.Tensor) else original
        if info.labels is not None and isinstance(tensor, torch.Tensor):
            index = grid_of(held(self.ctx.place, info.labels.numpy(), self.level, self.group))
            tensor = tensor[np.ix_(*index)] if tensor.dim() else tensor
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.clone()
            if isinstance(original, nn.Parameter):
                tensor = nn.Parameter(tensor, requires_grad=original.requires_grad)
        target = _unique(a.target.replace(".", "_"), self.root)
        self.root[target] = tensor
        return self.graph.get_attr(target)

    def _module_for(self, n: fx.Node) -> str:
        ctx = self.ctx
        module = ctx.modules[n.target]
        if self.level < 0:
            self.root[n.target] = module
            return n.target
        if n.name in ctx.layer_of:
            layer = ctx.layer_of[n.name]
            new = slice_weight_layer(module, layer, *self._layer_keep(n))
        elif n.name in ctx.channel_op_of:
            new = slice_channel_module(module, held(ctx.place, ctx.channel_op_of[n.name].elems,
                                                    self.level, self.group))
        elif any(True for _ in module.parameters()) or any(b.numel() > 1 for b in module.buffers()):
            raise PartitionError(f"module {n.target} ({type(module).__name__}) has per-channel state "
                                 "but no channel rule records it; it cannot be sliced into a branch")
        else:
            new = owned_copy(module)
        target = _unique(n.target, self.root)
        self.root[target] = new
        return target

    def _layer_keep(self, n: fx.Node) -> tuple[np.ndarray, np.ndarray]:
        """The outputs and inputs of weight layer ``n`` this subgraph holds."""
        layer = self.ctx.layer_of[n.name]
        out_keep = held(self.ctx.place, layer.out_elems, self.level, self.group)
        in_keep = held(self.ctx.place, layer.in_elems, self.level, self.group)
        channel_dim = 0 if layer.op == "conv" else -1
        if not np.array_equal(self.box(n.args[0]).index[channel_dim], np.flatnonzero(in_keep)):
            raise PartitionError(f"{n.name}: the input channels held do not match the layer's")
        return out_keep, in_keep

    def _functional_layer_args(self, n: fx.Node, args: list, kwargs: dict) -> tuple[tuple, dict]:
        """``F.conv2d`` / ``F.linear`` with parameter tensors: read this branch's own slices of
        them (named ``P.weight`` / ``P.bias`` so counting recognises the layer) and its conv
        groups."""
        layer = self.ctx.layer_of[n.name]
        bias = _get_attr(self.ctx.gm, f"{layer.name}.bias") if layer.has_bias else None
        weight, bias, groups = slice_weight_tensors(_get_attr(self.ctx.gm, f"{layer.name}.weight"), bias,
                                                    layer, *self._layer_keep(n))
        base = prefix = layer.name.replace(".", "_")
        while f"{prefix}.weight" in self.root:
            prefix = f"{base}_{len(self.root)}"
        self.root[f"{prefix}.weight"] = weight
        _set_arg(args, kwargs, 1, "weight", self.graph.get_attr(f"{prefix}.weight"))
        if bias is not None:
            self.root[f"{prefix}.bias"] = bias
            _set_arg(args, kwargs, 2, "bias", self.graph.get_attr(f"{prefix}.bias"))
        if layer.op == "conv" and (len(args) > 6 or "groups" in kwargs):
            _set_arg(args, kwargs, 6, "groups", groups)
        return tuple(args), kwargs

    def _channel_op_args(self, n: fx.Node, args: list, kwargs: dict) -> tuple[tuple, dict]:
        """``F.batch_norm`` / ``F.group_norm`` on the held channels: their own slices of the
        per-channel parameters they read; a group norm keeps fewer whole norm-groups."""
        op = self.ctx.channel_op_of[n.name]
        keep = held(self.ctx.place, op.elems, self.level, self.group)
        index = torch.as_tensor(np.flatnonzero(keep))
        for i, a in list(enumerate(n.args)) + list(n.kwargs.items()):
            if isinstance(a, fx.Node) and a.op == "get_attr" and a.target in op.params:
                original = _get_attr(self.ctx.gm, a.target)
                tensor = original.detach().index_select(0, index).clone()
                if isinstance(original, nn.Parameter):
                    tensor = nn.Parameter(tensor, requires_grad=original.requires_grad)
                target = _unique(a.target.replace(".", "_"), self.root)
                self.root[target] = tensor
                (args.__setitem__ if isinstance(i, int) else kwargs.__setitem__)(i, self.graph.get_attr(target))
        if n.target is F.group_norm:
            groups = args[1] if len(args) > 1 else kwargs["num_groups"]
            _set_arg(args, kwargs, 1, "num_groups", groups * int(keep.sum()) // len(op.elems))
        return tuple(args), kwargs

    def _gather(self, n: fx.Node) -> fx.Node:
        """A reshape in a branch: read the held positions of its (real) sources directly."""
        if self._param_only(n):
            args = fx.node.map_arg(n.args, self.value)
            return self.graph.create_node(n.op, n.target, args, fx.node.map_arg(n.kwargs, self.value), name=n.name)
        sources: list[tuple[fx.Node, int, int]] = []
        ids = self._ids(n, {}, sources)
        out_box = self.box(n)
        wanted = ids[0].numpy()[np.ix_(*out_box.index)].ravel()
        offsets = np.array([offset for _, offset, _ in sources])
        which = np.searchsorted(offsets, wanted, side="right") - 1
        used = sorted(set(which.tolist()))
        index = np.empty(len(wanted), dtype=np.int64)
        flats, base = [], 0
        for s in used:
            node, offset, numel = sources[s]
            src_box = self.box(node)
            compact = np.full(numel, -1, dtype=np.int64)
            compact[src_box.flat_positions(self.ctx.info[node.name].shape[1:])] = np.arange(int(np.prod(src_box.shape)))
            local = compact[wanted[which == s] - offset]
            if (local < 0).any():
                raise PartitionError(f"{n.name}: a reshape reads a position its branch does not hold")
            index[which == s] = base + local
            base += int(np.prod(src_box.shape))
            flats.append(self.graph.call_function(torch.flatten, (self.value(node), 1)))
        x = flats[0] if len(flats) == 1 else self.graph.call_function(torch.cat, (flats, 1))
        if len(index) != base or not np.array_equal(index, np.arange(base)):
            x = self.graph.call_method("index_select", (x, 1, self._buffer(f"gather_{n.name}", torch.as_tensor(index))))
        return self.graph.call_method("reshape", (x, -1, *out_box.shape))

    def _ids(self, m: Any, memo: dict, sources: list) -> Any:
        """Position ids of ``m``'s output, replaying reshapes of this level on ids."""
        if not isinstance(m, fx.Node):
            return m
        if m.name in memo:
            return memo[m.name]
        info = self.ctx.info[m.name]
        if info.level is None:
            result = info.value
        elif info.level == self.level and self.ctx.is_reshape(m):
            args = fx.node.map_arg(m.args, lambda a: self._ids(a, memo, sources))
            kwargs = fx.node.map_arg(m.kwargs, lambda a: self._ids(a, memo, sources))
            result = _run(m, args, kwargs, self.ctx.modules)
        else:
            offset = sum(numel for _, _, numel in sources)
            numel = int(np.prod(info.shape))
            sources.append((m, offset, numel))
            result = torch.arange(offset, offset + numel).reshape(info.shape)
        memo[m.name] = result
        return result

    def _param_only(self, m: fx.Node) -> bool:
        if m.op == "get_attr":
            return True
        if not self.ctx.is_reshape(m):
            return False
        inputs = [a for a in m.all_input_nodes if self.ctx.info[a.name].level is not None]
        return bool(inputs) and all(self._param_only(a) for a in inputs)


def _set_arg(args: list, kwargs: dict, index: int, name: str, value: Any) -> None:
    if len(args) > index:
        args[index] = value
    else:
        kwargs[name] = value


def _is_tensor_shape(shape) -> bool:
    return isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)


def _run(m: fx.Node, args, kwargs, modules) -> Any:
    if m.op == "call_function":
        return m.target(*args, **kwargs)
    if m.op == "call_method":
        return getattr(args[0], m.target)(*args[1:], **kwargs)
    return modules[m.target](*args, **kwargs)


def _unique(name: str, taken: dict) -> str:
    if name not in taken:
        return name
    k = 1
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _class_name(name: str) -> str:
    return "Trunk" if name == "trunk" else "Branch_" + name.replace(".", "_")
