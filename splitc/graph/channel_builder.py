"""The mutable channel-graph builder: the state the op rules write into while the model runs on
label tensors; ``channel_finalize.finish`` freezes it into a :class:`~splitc.graph.channel_ir.ChannelIR`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from splitc.graph.channel_ir import FLAGS, ChannelOp, ParamUse, Source, WeightLayer, as_np, map_tensors
from splitc.graph.opkinds import registration_hint, target_name


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
            self.edges.append((as_np(inputs), src.index))
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
        self.flags[flag].append((np.unique(as_np(elems)), reason))

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
        fix = registration_hint(node) if why is None else "choose --split-from below it"
        self.warnings.append(f"{reason}: treated as a scope barrier; {fix}")
        inputs = torch.cat([t.reshape(-1) for t in label_inputs]) if label_inputs else None
        if inputs is not None:
            self.flag(inputs.unique(), "opaque", reason)
        return map_tensors(out, lambda t: self._opaque_out(t, node, inputs, reason))

    def _opaque_out(self, real: torch.Tensor, node: fx.Node, inputs: Any, reason: str) -> torch.Tensor:
        labels = self.fresh_like(real, node, "opaque", inputs)
        self.flag(labels.unique(), "opaque", reason)
        return labels
