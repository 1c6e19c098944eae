"""``splitc split`` and ``splitc verify``: from a learn run to a checked split directory.

split: load the run's checkpoint, harden its assignments (argmax), compile the split
(mask -> permute -> partition -> assemble), measure it against the masked model on fresh
random inputs, count its real params and FLOPs, and write the split directory.
verify: rebuild the split from the directory and compare it with the masked model again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitc import __version__
from splitc.graph.analysis import Analysis, analyse, analysis_warnings
from splitc.learn.assign import AssignmentSet
from splitc.core.checkpoint import load_checkpoint
from splitc.graph.group_tree import HardAssignment, balanced_assignment
from splitc.graph.counting import Cost, count
from splitc.core.errors import SplitcError
from splitc.learn.health import LEARNED_FLAG
from splitc.core.numerics import relative_error
from splitc.core.outputs import atomic_write, claim, replacing
from splitc.core.files import TEACHER
from splitc.passes.harden import harden
from splitc.graph.scope import ScopeSpec, make_spec
from splitc.core.pipeline import PassRunner
from splitc.compile.split import compile_split, subgraph_costs, total_cost
from splitc.compile.split_dir import SPLIT_JSON, SPLIT_WEIGHTS, load_split, save_split, spec_to_dict, write_json
from splitc.graph.split_model import SplitModel
from splitc.core.files import ASSIGNMENT_JSON, LEARN_CHECKPOINT

VERIFY_TOLERANCE = 1e-5
VERIFY_BATCHES = 3


def load_run(run_dir: str | os.PathLike, runner: PassRunner | None = None
             ) -> tuple[dict[str, Any], Analysis, AssignmentSet]:
    """The learn run's checkpoint, its analysis (with the learned weights) and assignments."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise SplitcError(f"run directory {folder} does not exist; pass the --out folder of "
                          "`splitc learn`.")
    if not (folder / LEARN_CHECKPOINT).is_file():
        raise SplitcError(f"{folder} holds no checkpoint.pt, so it is not a learn run (or learn was "
                          "killed before its first checkpoint); pass the --out folder of `splitc learn`.")
    ckpt = load_checkpoint(folder / LEARN_CHECKPOINT, kind="learn")
    if ckpt["splitc_version"] != __version__:
        raise SplitcError(f"{folder} was learned with splitc {ckpt['splitc_version']}, this is splitc "
                          f"{__version__}; learn again with this version.")
    identity, config = ckpt["identity"], ckpt["config"]
    spec = make_spec(config["groups"], config.get("split_from"), config.get("split_depth"),
                     config.get("preset"), identity["model"])
    analysis = analyse(identity["model"], spec, identity["num_classes"], tuple(identity["input_size"]),
                       runner=runner)
    if spec.describe() != identity["scope"]:
        raise SplitcError(f"{folder}: its scope {identity['scope']!r} does not match its options "
                          f"({spec.describe()}); the run directory was edited, learn again.")
    try:
        analysis.gm.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise SplitcError(f"{folder}: the checkpoint's weights do not fit model {identity['model']} "
                          "as this splitc builds it; learn again with this version.") from None
    aset = AssignmentSet.create(analysis.ir, analysis.scope, identity["assign"])
    try:
        aset.load_state_dict(ckpt["assignments"])
    except RuntimeError:
        raise SplitcError(f"{folder}: the checkpoint's assignments do not fit the scope "
                          f"{identity['scope']}; learn again with this version.") from None
    return ckpt, analysis, aset


def max_rel_err(model: SplitModel, reference: torch.nn.Module, input_size, batches: int = VERIFY_BATCHES,
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


def run_split(run_dir: str | os.PathLike, out: str | os.PathLike, overlap: float | None = None,
              force: bool = False, accept_unlearned: bool = False) -> dict[str, Any]:
    """Split a learn run into ``out``; returns the summary (also stored in split.json).
    An ``out`` that holds anything is refused unless ``force`` (then replaced as a whole), and
    a run that stayed near chance unless ``accept_unlearned``."""
    claim(out, force)  # before minutes of loading
    runner = PassRunner()
    ckpt, analysis, aset = load_run(run_dir, runner)
    check_learned(Path(run_dir), accept_unlearned)
    hardened = runner.run("harden", harden, analysis.ir, analysis.scope, aset.soft(), overlap)
    hard = hardened.assignment
    if overlap is not None:  # fuzzy nodes are duplicated into each of their groups
        hard = HardAssignment(hard.groups_of_space, {s: dict(nodes) for s, nodes in hardened.fuzzy.items() if nodes})
    origin = {"run_dir": str(Path(run_dir).resolve()), "assign": ckpt["identity"]["assign"],
              "normalize": ckpt["config"].get("normalize"),
              "data": ckpt["identity"]["data"]}
    summary = write_split(analysis, hard, out, _class_names(Path(run_dir), analysis.num_classes), origin, force)
    copy_teacher(Path(run_dir), Path(out))
    return {**summary, "warnings": analysis_warnings(analysis), "pass_seconds": runner.report()}


def copy_teacher(run_dir: Path, out: Path) -> None:
    """The dense weights the run's regularizers started from (``finetune --distill``'s teacher),
    copied beside the split with their SHA-256 in split.json; a run without them is left as is."""
    try:
        record = json.loads((run_dir / ASSIGNMENT_JSON).read_text(encoding="utf-8")).get("teacher")
    except (OSError, json.JSONDecodeError):
        return
    if not record or not (run_dir / record["file"]).is_file():
        return
    data = (run_dir / record["file"]).read_bytes()
    atomic_write(out / TEACHER, lambda tmp: Path(tmp).write_bytes(data))
    meta = json.loads((out / SPLIT_JSON).read_text(encoding="utf-8"))
    write_json(out / SPLIT_JSON, {**meta, "teacher": {"file": TEACHER, "sha256": record["sha256"],
                                                      "run_dir": str(run_dir.resolve())}})


def check_learned(run_dir: Path, accept_unlearned: bool) -> None:
    """Refuse a run whose assignment.json says it did not learn (learn_health's rule)."""
    try:
        doc = json.loads((run_dir / ASSIGNMENT_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return  # killed before its end: load_run says what is missing, or the checkpoint is used as is
    if doc.get(LEARNED_FLAG, True) or accept_unlearned:
        return
    raise SplitcError(f"{run_dir} did not learn (validation accuracy {doc.get('val_acc', 0):.3f}, near chance "
                      f"for {doc.get('num_classes')} classes), so its groups are noise; learn longer, or pass "
                      "--accept-unlearned to split it anyway.")


def write_split(analysis: Analysis, hard: HardAssignment, out: str | os.PathLike,
                class_names: list[str] | None = None, origin: dict[str, Any] | None = None,
                force: bool = False) -> dict[str, Any]:
    """Compile ``hard`` on the analysed model, check it, count it and write the split dir
    (refusing an ``out`` that holds anything, unless ``force``)."""
    claim(out, force)
    runner = analysis.runner
    compiled = compile_split(analysis.gm, analysis.ir, analysis.scope, hard, runner=runner)
    err = runner.run("check", max_rel_err, compiled.model, compiled.masked, analysis.input_size)
    summary = structural_report(analysis, hard, compiled.model, err)
    meta = split_meta(analysis, hard, compiled.model, summary, class_names, origin)
    with replacing(out, force), runner.step("save"):
        save_split(out, meta, compiled.model, analysis.gm if hard.overlap else compiled.masked, compiled.masked)
    return {"split_dir": str(out), **summary}


def split_meta(analysis: Analysis, hard: HardAssignment, model: SplitModel, summary: dict[str, Any],
               class_names: list[str] | None = None, origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """split.json's fields for a compiled split (also what ``splitc.SplitNet.compile`` attaches)."""
    return {"model": analysis.model_name, "num_classes": analysis.num_classes,
            "input_size": list(analysis.input_size), "scope": spec_to_dict(analysis.scope.spec),
            "groups_of_space": {str(s): g.tolist() for s, g in hard.groups_of_space.items()},
            "overlap": {str(s): [[n, list(gs)] for n, gs in nodes.items()] for s, nodes in hard.overlap.items()},
            "class_names": class_names or [str(i) for i in range(analysis.num_classes)],
            "plan": model.plan.to_dict(), **(origin or {}), "report": summary}


def random_split(model: str, spec: ScopeSpec, out: str | os.PathLike, num_classes: int | None = None,
                 input_size: tuple[int, int, int] | None = None, seed: int = 0,
                 force: bool = False) -> dict[str, Any]:
    """A split directory from a random balanced assignment on freshly initialised weights: no
    training, for tests, coverage and export benchmarks."""
    torch.manual_seed(seed)
    analysis = analyse(model, spec, num_classes, input_size)
    hard = balanced_assignment(analysis.ir, analysis.scope, np.random.default_rng(seed))
    return write_split(analysis, hard, out, origin={"assign": "random", "data": None}, force=force)


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


def verify_split(split_dir: str | os.PathLike) -> dict[str, Any]:
    """Re-check the split as compiled (``split.safetensors``) against the masked model."""
    loaded = load_split(split_dir, weights=SPLIT_WEIGHTS)
    reference, source = loaded.masked_reference()   # rebuilt where the model can be built
    err = max_rel_err(loaded.model, reference, loaded.input_size)
    return {"split_dir": str(split_dir), "max_rel_err": err, "tolerance": VERIFY_TOLERANCE,
            "ok": err <= VERIFY_TOLERANCE, "checked": f"split model vs masked model (PyTorch; {source})"}


def _class_names(run_dir: Path, num_classes: int) -> list[str]:
    path = run_dir / ASSIGNMENT_JSON
    try:
        mapping = json.loads(path.read_text(encoding="utf-8")).get("class_groups") or {}
    except (OSError, json.JSONDecodeError):
        mapping = {}
    names = list(mapping)
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def _cost(c: Cost) -> dict[str, int]:
    return {"params": c.params, "flops": c.flops}


def _pct(value: int, base: int) -> float:
    return round(100.0 * (1 - value / base), 4) if base else 0.0


