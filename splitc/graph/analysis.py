"""Front half of the pipeline as one call: build -> trace -> channel graph -> scope -> costs.

This is what ``splitc inspect`` runs and what ``learn`` and ``split`` start from.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx
import torch.nn as nn

from splitc.graph import zoo
from splitc.graph.channel_graph import build_channel_graph
from splitc.graph.channel_ir import ChannelIR
from splitc.graph.group_tree import HardAssignment
from splitc.graph.counting import CostReport, count
from splitc.core.errors import SplitcError, UserCodeError
from splitc.core.naming import FLAG, Naming
from splitc.core.pipeline import PassRunner
from splitc.graph.frontend import trace
from splitc.graph.opkinds import registration_hint
from splitc.graph.scope import Scope, ScopeSpec, layer_kind, resolve_scope

BUILTIN_NUM_CLASSES = {"wrn16_8": 100}


@dataclass(frozen=True)
class Analysis:
    model_name: str
    num_classes: int
    input_size: tuple[int, int, int]
    model: nn.Module
    gm: fx.GraphModule
    ir: ChannelIR
    scope: Scope
    cost: CostReport
    runner: PassRunner = field(default_factory=PassRunner, compare=False)  # seconds of its passes


def default_num_classes(model_name: str) -> int:
    spec = zoo.resolve(model_name)
    return BUILTIN_NUM_CLASSES.get(model_name, spec.default_num_classes)


def analyse(model_name: str, spec: ScopeSpec, num_classes: int | None = None,
            input_size: tuple[int, int, int] | None = None, model: nn.Module | None = None,
            assignment: HardAssignment | None = None, runner: PassRunner | None = None,
            names: Naming = FLAG) -> Analysis:
    """Build (unless ``model`` is given), trace and analyse; warnings are kept on the IR.
    The passes run through ``runner`` (a new one when None), kept on the result; ``names``
    spells the scope options in errors."""
    runner = runner or PassRunner()
    classes = num_classes or default_num_classes(model_name)
    size = tuple(input_size or zoo.resolve(model_name).default_input_size)
    model = model if model is not None else zoo.build(model_name, classes)
    check_forward(model, model_name, size)
    gm = runner.run("trace", trace, model, input_size=size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = runner.run("channel graph", build_channel_graph, gm, size)
    scope = runner.run("scope", resolve_scope, ir, spec, names)
    return Analysis(model_name, classes, size, model, gm, ir, scope, count(ir, scope, assignment), runner)


def check_forward(model: nn.Module, name: str, size: tuple[int, ...]) -> None:
    """Run the model once on a sample input, so that a forward that fails in the user's code is
    reported as theirs (with the input size, the usual culprit) and not as a tracing failure."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.randn(1, *size))
    except Exception as exc:  # noqa: BLE001 - the model's own code: report it, --debug shows it
        raise UserCodeError(f"the forward of model {name} on a sample input of shape "
                            f"{(1, *size)} (set --input-size if that is wrong)", exc) from exc
    finally:
        model.train(was_training)


def barrier_summary(ir: ChannelIR) -> list[str]:
    """One line per op target that became a barrier: how many nodes, and what to do. An op
    without a rule names the registration that declares it; one whose rule declined says why
    (as its node's warning, recorded when the graph was built, gives it)."""
    nodes_by_name = {n.name: n for n in ir.gm.graph.nodes}
    lines = []
    for what, nodes in ir.barriers.items():
        where = f"({len(nodes)} node{'s' if len(nodes) > 1 else ''}, first {nodes[0]})"
        said = next((w for w in ir.warnings if f"(node {nodes[0]}): treated as" in w), "no channel rule")
        if said.startswith("no channel rule"):
            lines.append(f"no channel rule for {what} {where}: treated as a scope barrier; "
                         f"{registration_hint(nodes_by_name[nodes[0]])}")
        else:
            lines.append(f"{said.split(' (node ')[0]} {where}: treated as a scope barrier; choose --split-from below it")
    return lines


def analysis_warnings(analysis: Analysis) -> list[str]:
    """What inspect, learn and split all say: ops that became barriers, and a scope that makes no
    layer block-diagonal (the split would save nothing and must not pass for a success)."""
    lines = barrier_summary(analysis.ir)
    if analysis.gm.meta.get("specialised"):
        size = "x".join(map(str, analysis.gm.meta["specialised"]))
        lines.append(f"the forward of {analysis.model_name} branches on tensor shapes, so it was traced with the "
                     f"shapes of a {size} input: the split holds for that input size (set --input-size to change it)")
    cost = analysis.cost
    if cost.split.params >= cost.baseline.params and analysis.scope.level_of:
        stop = f"; the channel analysis stopped at {', '.join(analysis.ir.barriers)}" if analysis.ir.barriers else ""
        nearest = nearest_split(analysis)
        fix = (f"the nearest choice that splits is split-from {nearest[0]} ({nearest[1]:.1f}% of params saved)"
               if nearest and analysis.scope.spec.split_from else
               f"the nearest choice that splits is split-depth {nearest[0]} ({nearest[1]:.1f}% of params saved)"
               if nearest else "choose a split-from / split-depth that covers a weight layer's input and output")
        lines.append(f"the scope {analysis.scope.spec.describe()} makes no layer block-diagonal (0.0% of params "
                     f"saved){stop}: {fix}, or declare a barrier op with splitc.register_module / register_function")
    return lines


NEAREST_TRIES = 40   # scopes tried for the hint of a scope that splits nothing (each resolves the scope)


def nearest_split(analysis: Analysis) -> tuple[str, float] | None:
    """For a one-level scope that splits nothing: the module nearest (in graph order) to its
    ``split_from``, or the next deeper ``split_depth``, whose scope does split; with the share of
    params it saves."""
    spec, ir = analysis.scope.spec, analysis.ir
    if len(spec.groups) != 1:
        return None
    if spec.split_from:
        start = _module_starts(ir).get(spec.split_from[0])
        if start is None:
            return None
        names = sorted(_module_starts(ir).items(), key=lambda item: (abs(item[1] - start), item[1], item[0]))
        candidates = [(name, replace(spec, split_from=(name,))) for name, _ in names if name != spec.split_from[0]]
    else:
        depth = spec.split_depth[0]
        candidates = [(str(d), replace(spec, split_depth=(d,))) for d in range(depth + 1, len(ir.layers) + 1)]
    for label, candidate in candidates[:NEAREST_TRIES]:
        try:
            saved = count(ir, resolve_scope(ir, candidate)).params_reduced_pct
        except SplitcError:
            continue
        if saved > 0:
            return label, saved
    return None


def _module_starts(ir: ChannelIR) -> dict[str, int]:
    """Every module path of the traced graph (and each of its parents) -> the topo index of its first node."""
    starts: dict[str, int] = {}
    for node in ir.gm.graph.nodes:
        if node.op != "call_module" or node.name not in ir.topo_of:
            continue
        parts = str(node.target).split(".")
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            starts[name] = min(starts.get(name, ir.topo_of[node.name]), ir.topo_of[node.name])
    return starts


def space_status(analysis: Analysis, space_id: int) -> str:
    scope, space = analysis.scope, analysis.ir.spaces[space_id]
    if scope.in_branches(space_id):
        return "split"
    if scope.in_scope(space_id):
        return "sliced"
    if "opaque" in space.flags:
        return "barrier"
    return "trunk"


def report_dict(analysis: Analysis) -> dict:
    """The JSON document of ``splitc inspect --json``."""
    ir, scope, cost = analysis.ir, analysis.scope, analysis.cost
    weight_costs = {c.name: c for c in cost.layers}
    layers = []
    for layer in ir.layers:
        c = weight_costs[layer.name]
        layers.append({
            "name": layer.name, "op": layer.op, "kind": layer_kind(ir, scope, layer),
            "in_channels": int(len(layer.in_elems)), "out_channels": int(len(layer.out_elems)),
            "conv_groups": layer.conv_groups,
            "in_spaces": [int(s) for s in ir.spaces_of(layer.in_elems)],
            "out_space": int(ir.space_of[layer.out_elems[0]]),
            "params": c.baseline.params, "split_params": c.split.params,
        })
    spaces = [{
        "id": s.id, "name": s.name, "channels": s.size, "nodes": s.num_nodes,
        "sources": len(s.sources), "status": space_status(analysis, s.id),
        "level": scope.level_of.get(s.id), "groups": scope.groups_of(s.id) if scope.in_scope(s.id) else None,
        "reason": next(iter(s.flags.values()), None),
    } for s in ir.spaces if s.role != "param"]
    return {
        "model": analysis.model_name, "input_size": list(analysis.input_size),
        "num_classes": analysis.num_classes, "groups": list(scope.groups),
        "scope": scope.spec.describe(),
        "baseline": {"params": cost.baseline.params, "flops": cost.baseline.flops},
        "split": {"params": cost.split.params, "flops": cost.split.flops,
                  "params_reduced_pct": round(cost.params_reduced_pct, 4),
                  "flops_reduced_pct": round(cost.flops_reduced_pct, 4)},
        "layers": layers, "spaces": spaces, "class_space": ir.class_space,
        "notes": list(scope.notes), "warnings": analysis_warnings(analysis),
    }
