"""The one counting function: parameters and FLOPs of a model, unsplit or split.

FLOPs follow the paper: 2 x multiply-accumulates for conv and linear layers, plus one FLOP per
output for a bias and two per element for a normalisation layer's affine (BN, LN). Parameters
are the model's ``nn.Parameter`` entries; a parameter splitc cannot attribute to channels is
counted whole on both sides.

A split is described by a :class:`HardAssignment` (the group of every node of every space in
scope). Every tensor computed inside the branches holds, in branch g, the channels of g (and of
g's ancestors) plus any shared trunk channels it reads; trunk channels read inside branches are
replicated, which is exactly what the partition pass builds. The same function therefore counts
the baseline, the balanced estimate and any learned split, and the tests compare it with the
split model's real tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import warnings

import numpy as np
import torch
import torch.fx as fx

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.group_tree import HardAssignment, Placement, balanced_assignment
from splitc.graph.scope import Scope, layer_kind


@dataclass(frozen=True)
class Cost:
    params: int
    flops: int

    def reduced_pct(self, baseline: "Cost") -> tuple[float, float]:
        return (100.0 * (1 - self.params / baseline.params),
                100.0 * (1 - self.flops / baseline.flops) if baseline.flops else 0.0)


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    baseline: Cost
    split: Cost


@dataclass(frozen=True)
class CostReport:
    baseline: Cost
    split: Cost
    layers: tuple[LayerCost, ...] = field(default=())

    @property
    def params_reduced_pct(self) -> float:
        return self.split.reduced_pct(self.baseline)[0]

    @property
    def flops_reduced_pct(self) -> float:
        return self.split.reduced_pct(self.baseline)[1]


def count(ir: ChannelIR, scope: Scope | None = None, assignment: HardAssignment | None = None) -> CostReport:
    """Params and FLOPs of the unsplit model and of the split given by ``assignment``
    (balanced when None and a scope is given)."""
    if scope is not None and assignment is None:
        assignment = balanced_assignment(ir, scope)
    place = Placement(ir, scope, assignment)
    kind = (lambda layer: layer_kind(ir, scope, layer)) if scope is not None else (lambda layer: "trunk")
    return _count_records(ir.layers, ir.channel_ops, dict(ir.gm.named_parameters()), place, kind)


def count_graph(gm: fx.GraphModule, *example_inputs: torch.Tensor) -> Cost:
    """Params and FLOPs of any GraphModule (one subgraph of a split model), read from its own
    tensors with the same per-layer formulas as :func:`count`, so a split model's real cost
    and the predicted one are the same arithmetic on different records."""
    from splitc.graph.channel_builder import ChannelGraphBuilder
    from splitc.graph.channel_graph import LabelInterpreter

    builder = ChannelGraphBuilder(gm)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LabelInterpreter(gm, builder).run(*example_inputs)
    place = Placement.unsplit(builder.count)
    report = _count_records(builder.layers, builder.channel_ops, dict(gm.named_parameters()), place,
                            lambda layer: "trunk")
    return report.baseline


def _count_records(layers, channel_ops, all_params: dict, place: "Placement", kind) -> CostReport:
    all_params = {name: p.numel() for name, p in all_params.items()}
    layer_costs, seen = [], set()
    for layer in layers:
        layer_costs.append(_layer_cost(kind(layer), place, layer, first_use=layer.name not in seen))
        seen.add(layer.name)
    for op in channel_ops:
        layer_costs.append(_channel_op_cost(place, op, first_use=op.name not in seen, params=all_params))
        seen.add(op.name)
    attributed = {p for lc in layers for p in (f"{lc.name}.weight", f"{lc.name}.bias")}
    attributed |= {p for op in channel_ops for p in op.params}
    rest = sum(n for name, n in all_params.items() if name not in attributed)
    base = Cost(rest + sum(c.baseline.params for c in layer_costs), sum(c.baseline.flops for c in layer_costs))
    split = Cost(rest + sum(c.split.params for c in layer_costs), sum(c.split.flops for c in layer_costs))
    return CostReport(base, split, tuple(layer_costs))


def _layer_cost(kind: str, place: Placement, layer, first_use: bool) -> LayerCost:
    n_in, n_out, k = len(layer.in_elems), len(layer.out_elems), layer.conv_groups
    base_w = n_out * (n_in // k) * layer.taps
    bias = n_out if layer.has_bias else 0
    out_level = place.runs_at(layer.out_elems)
    split_bias = bias
    if out_level < 0:
        split_w = base_w
    else:
        split_w = 0
        for ins, outs in zip(np.split(layer.in_elems, k), np.split(layer.out_elems, k)):
            held = place.held(ins, out_level)
            split_w += int((place.out_counts(outs, out_level) * held).sum()) * layer.taps
        if layer.has_bias:  # a duplicated output channel has a bias in every copy
            split_bias = int(place.out_counts(layer.out_elems, out_level).sum())

    def cost(w: int, b: int) -> Cost:
        return Cost((w + b) if first_use else 0, 2 * w * layer.positions + b * layer.positions)

    return LayerCost(layer.name, kind, cost(base_w, bias), cost(split_w, split_bias))


def _channel_op_cost(place: Placement, op, first_use: bool, params: dict) -> LayerCost:
    learnable = [p for p in op.params if p in params]
    level = place.runs_at(op.elems)
    base_ch = len(op.elems)
    split_ch = int(place.held(op.elems, level).sum()) if level >= 0 else base_ch
    kind = "trunk" if level < 0 else "per-channel"
    per_channel = len(learnable) if first_use else 0
    return LayerCost(op.name, kind, Cost(per_channel * base_ch, 2 * base_ch * op.positions),
                     Cost(per_channel * split_ch, 2 * split_ch * op.positions))
