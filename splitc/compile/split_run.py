"""``splitc split``: from a learn run to a checked split directory.

split: load the run's checkpoint, harden its assignments (argmax), compile the split
(mask -> permute -> partition -> assemble), measure it against the masked model on fresh
random inputs, count its real params and FLOPs (:mod:`splitc.compile.build`), and write the
split directory (:mod:`splitc.compile.split_dir`). verify: :mod:`splitc.compile.verify`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitc.core.version import __version__
from splitc.compile.build import build_split
from splitc.compile.split_dir import SPLIT_JSON, save_split, write_json
from splitc.core.checkpoint import load_checkpoint
from splitc.core.errors import SplitcError
from splitc.core.files import ASSIGNMENT_JSON, LEARN_CHECKPOINT, TEACHER
from splitc.core.outputs import atomic_write, claim, replacing
from splitc.core.pipeline import PassRunner
from splitc.graph.analysis import Analysis, analyse, analysis_warnings
from splitc.graph.group_tree import HardAssignment, balanced_assignment
from splitc.graph.scope import ScopeSpec, make_spec
from splitc.learn.assign import AssignmentSet
from splitc.learn.health import LEARNED_FLAG
from splitc.passes.harden import harden


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
              "data": ckpt["identity"]["data"], "trained_start": trained_start(Path(run_dir))}
    summary = write_split(analysis, hard, out, _class_names(Path(run_dir), analysis.num_classes), origin, force)
    copy_teacher(Path(run_dir), Path(out))
    notes = list(analysis_warnings(analysis))
    if overlap is not None and refit_of(Path(run_dir)):
        notes.append("the run was refit to its hard groups (learn --refit), so its inter-group weights are zero and "
                     "--overlap copies fuzzy channels without them; learn with --no-refit for an overlapping split")
    return {**summary, "warnings": notes, "pass_seconds": runner.report()}


def refit_of(run_dir: Path) -> dict | None:
    """The run's refit record (learn.refit), None where it was not refit."""
    try:
        return json.loads((run_dir / ASSIGNMENT_JSON).read_text(encoding="utf-8")).get("refit")
    except (OSError, json.JSONDecodeError):
        return None


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


def trained_start(run_dir: Path) -> bool:
    """Whether the run started from trained weights (its finetune is then shorter by default)."""
    try:
        return bool(json.loads((run_dir / ASSIGNMENT_JSON).read_text(encoding="utf-8")).get("trained_start"))
    except (OSError, json.JSONDecodeError):
        return False


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
    """Compile, check and count ``hard`` on the analysed model (:func:`build_split`) and write
    the split dir (refusing an ``out`` that holds anything, unless ``force``)."""
    claim(out, force)
    split = build_split(analysis, hard, class_names, origin)
    with replacing(out, force), analysis.runner.step("save"):
        save_split(out, split)
    return {"split_dir": str(out), **split.meta["report"]}


def random_split(model: str, spec: ScopeSpec, out: str | os.PathLike, num_classes: int | None = None,
                 input_size: tuple[int, int, int] | None = None, seed: int = 0,
                 force: bool = False) -> dict[str, Any]:
    """A split directory from a random balanced assignment on freshly initialised weights: no
    training, for tests, coverage and export benchmarks."""
    torch.manual_seed(seed)
    analysis = analyse(model, spec, num_classes, input_size)
    hard = balanced_assignment(analysis.ir, analysis.scope, np.random.default_rng(seed))
    return write_split(analysis, hard, out, origin={"assign": "random", "data": None}, force=force)


def _class_names(run_dir: Path, num_classes: int) -> list[str]:
    path = run_dir / ASSIGNMENT_JSON
    try:
        mapping = json.loads(path.read_text(encoding="utf-8")).get("class_groups") or {}
    except (OSError, json.JSONDecodeError):
        mapping = {}
    names = list(mapping)
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]
