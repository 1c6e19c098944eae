"""A hard assignment -> a split value: compiled, checked and described, in one helper that
``splitc split`` (which then writes the split directory) and ``splitc.SplitNet.compile`` share.

The value is the :class:`~splitc.graph.split_model.SplitModel` carrying what travels with it:
``meta`` (split.json's fields: model, scope, groups, class names, plan, the structural report
and the fingerprint of its weights as compiled), ``input_size`` and ``references`` (``unsplit``:
the model it was compiled from, inter-group weights zeroed for a plain split; ``masked``: the
reference where that is another module, an overlap split's).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from splitc.compile.split import compile_split, subgraph_costs, total_cost
from splitc.compile.split_dir import spec_to_dict
from splitc.core.numerics import relative_error, tensors_sha256
from splitc.graph.analysis import Analysis
from splitc.graph.counting import Cost, count
from splitc.graph.group_tree import HardAssignment
from splitc.graph.split_model import SplitModel

VERIFY_TOLERANCE = 1e-5
VERIFY_BATCHES = 3
COMPILED_SHA256 = "compiled_sha256"   # meta key: the split's tensors as compile made them


def build_split(analysis: Analysis, hard: HardAssignment, class_names: list[str] | None = None,
                origin: dict[str, Any] | None = None) -> SplitModel:
    """Compile ``hard`` on the analysed model, check the split against its masked reference on
    fresh random inputs, count it, and attach meta, input size and references."""
    runner = analysis.runner
    compiled = compile_split(analysis.gm, analysis.ir, analysis.scope, hard, runner=runner)
    err = runner.run("check", max_rel_err, compiled.model, compiled.masked, analysis.input_size)
    model = compiled.model
    model.meta = split_meta(analysis, hard, model, structural_report(analysis, hard, model, err), class_names, origin)
    model.input_size = tuple(analysis.input_size)
    # an overlap split's unsplit model is the analysed one, which a user's loop may still train: a copy
    unsplit = copy.deepcopy(analysis.gm).eval() if hard.overlap else compiled.masked
    model.references = {"unsplit": unsplit, **({"masked": compiled.masked} if hard.overlap else {})}
    return model


def max_rel_err(model: torch.nn.Module, reference: torch.nn.Module, input_size, batches: int = VERIFY_BATCHES,
                batch_size: int = 4) -> float:
    """Largest relative error of ``model`` against ``reference`` over fresh random batches."""
    worst = 0.0
    model.eval(), reference.eval()
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(batch_size, *input_size)
            want = reference(x)
            worst = max(worst, relative_error(model(x), want))
    return worst


def split_meta(analysis: Analysis, hard: HardAssignment, model: SplitModel, summary: dict[str, Any],
               class_names: list[str] | None = None, origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """split.json's fields for a compiled split."""
    return {"model": analysis.model_name, "num_classes": analysis.num_classes,
            "input_size": list(analysis.input_size), "scope": spec_to_dict(analysis.scope.spec),
            "groups_of_space": {str(s): g.tolist() for s, g in hard.groups_of_space.items()},
            "overlap": {str(s): [[n, list(gs)] for n, gs in nodes.items()] for s, nodes in hard.overlap.items()},
            "class_names": class_names or [str(i) for i in range(analysis.num_classes)],
            "plan": model.plan.to_dict(), **(origin or {}), "report": summary,
            COMPILED_SHA256: tensors_sha256(model.state_dict())}


def structural_report(analysis: Analysis, hard: HardAssignment, model: SplitModel, err: float) -> dict[str, Any]:
    """Actual params/FLOPs (from the split model's tensors) beside the baseline and the
    balanced estimate, with the group sizes of every space."""
    ir, scope = analysis.ir, analysis.scope
    per_subgraph = subgraph_costs(model, analysis.input_size)
    actual = total_cost(per_subgraph)
    baseline = count(ir).baseline
    balanced = count(ir, scope).split
    sizes = hard.group_sizes(ir, scope)
    return {
        "params": actual.params, "flops": actual.flops,
        "params_reduced_pct": _pct(actual.params, baseline.params),
        "flops_reduced_pct": _pct(actual.flops, baseline.flops),
        "baseline": _cost(baseline), "balanced_estimate": {**_cost(balanced),
            "params_reduced_pct": _pct(balanced.params, baseline.params),
            "flops_reduced_pct": _pct(balanced.flops, baseline.flops)},
        "subgraphs": {name: _cost(c) for name, c in per_subgraph.items()},
        "groups": list(scope.groups),
        "group_sizes": {f"{s} {ir.spaces[s].name}": v for s, v in sorted(sizes.items())},
        "class_groups": list(model.plan.class_groups),
        "max_rel_err": err,
    }


def _cost(c: Cost) -> dict[str, int]:
    return {"params": c.params, "flops": c.flops}


def _pct(value: int, base: int) -> float:
    return round(100.0 * (1 - value / base), 4) if base else 0.0
