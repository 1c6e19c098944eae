"""What ``splitc report`` reads: the folders of a run, followed back as far as they exist.

A learn run (``checkpoint.pt``), a split directory (``split.json``) or an artifact directory
(``manifest.json``); ``locate`` finds which, ``load`` reads what the page needs (the analysis
of the model, the assignments, the class names and superclasses), recording what is missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitc.core.errors import SplitcError
from splitc.core.files import ASSIGNMENT_JSON, LEARN_CHECKPOINT, MANIFEST_JSON
from splitc.graph.group_tree import node_name


HOW = ("pass a learn run (the --out folder of `splitc learn`), a split directory (`splitc split`) "
       "or an artifact directory (`splitc export`)")


@dataclass
class Inputs:
    """Everything the page is made from; any part may be missing (``notes`` says why)."""

    kind: str                                   # run | split | artifacts
    path: Path
    run_dir: Path | None = None
    split_dir: Path | None = None
    manifest: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None          # split.json
    doc: dict[str, Any] = field(default_factory=dict)   # the run's assignment.json
    ckpt: dict[str, Any] | None = None
    analysis: Any = None                        # splitc.graph.analysis.Analysis
    hard: Any = None                            # HardAssignment: the split's, or the run's argmax
    soft: dict[int, np.ndarray] | None = None
    unsplit: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)


def locate(path: str | os.PathLike) -> Inputs:
    """Which kind of folder ``path`` is, and the folders it links back to."""
    from splitc.compile.split_dir import SPLIT_JSON, read_meta

    folder = Path(path)
    if not folder.is_dir():
        raise SplitcError(f"{folder} is not a directory; {HOW}.")
    if (folder / MANIFEST_JSON).is_file():
        src = Inputs("artifacts", folder, manifest=read_json(folder / MANIFEST_JSON, "`splitc export`"))
        if not isinstance(src.manifest, dict) or not isinstance(src.manifest.get("subgraphs"), list):
            raise SplitcError(f"{folder / 'manifest.json'} is not a splitc manifest (it lists no subgraphs); "
                              "run `splitc export` again.")
        linked = (src.manifest.get("source") or {}).get("split_dir") or src.manifest.get("split_dir")
        if linked and (Path(linked) / SPLIT_JSON).is_file():
            try:
                src.meta, src.split_dir = read_meta(linked), Path(linked)
            except SplitcError as exc:
                src.notes.append(f"the split directory it was exported from is unreadable ({exc})")
        else:
            src.notes.append(f"the split directory it was exported from ({linked or 'not recorded'}) is not "
                             "here: only the manifest's classes, costs and placement are shown")
    elif (folder / SPLIT_JSON).is_file():
        src = Inputs("split", folder, split_dir=folder, meta=read_meta(folder))
    elif (folder / LEARN_CHECKPOINT).is_file():
        return Inputs("run", folder, run_dir=folder)
    else:
        raise SplitcError(f"{folder} holds no checkpoint.pt, split.json or manifest.json; {HOW}.")
    linked = (src.meta or {}).get("run_dir")
    if linked and (Path(linked) / LEARN_CHECKPOINT).is_file():
        src.run_dir = Path(linked)
    elif src.meta is not None:
        src.notes.append(f"the learn run ({linked or 'not recorded'}) is not here: the class map is the hard "
                         "one, and the learn curves and the after-learning weights are not shown")
    return src


def load(src: Inputs) -> Inputs:
    """The analysis, the assignments and the weights the figures need."""
    from splitc.graph.analysis import analyse
    from splitc.compile.split_dir import UNSPLIT_WEIGHTS, assignment_from_meta, spec_from_dict
    from splitc.compile.split_run import load_run

    if src.run_dir is not None:
        try:
            src.ckpt, src.analysis, aset = load_run(src.run_dir)
            src.soft, src.hard = aset.soft(), aset.hard()
            src.doc = read_json(src.run_dir / ASSIGNMENT_JSON, None)
        except SplitcError as exc:
            if src.kind == "run":
                raise
            src.notes.append(f"the learn run could not be read ({exc})")
            src.run_dir = None
    if src.meta is not None:
        spec = spec_from_dict(src.meta["scope"])
        if src.analysis is not None and src.analysis.scope.spec.describe() != spec.describe():
            src.notes.append("the learn run's scope differs from the split's, so the run is ignored")
            src.ckpt = src.analysis = src.soft = src.run_dir = None
            src.doc = {}
        if src.analysis is None:
            meta = src.meta
            try:
                src.analysis = analyse(meta["model"], spec, meta["num_classes"], tuple(meta["input_size"]))
            except SplitcError as exc:  # e.g. a model of a script's __main__: the split's own numbers still show
                src.notes.append(f"model {meta['model']} cannot be built here ({str(exc)[:100]}), so the figures "
                                 "that need its channel analysis (layer weights, channels per group) are skipped")
        if src.analysis is not None:
            src.hard = assignment_from_meta(src.analysis, src.meta, src.split_dir)
        if (src.split_dir / UNSPLIT_WEIGHTS).is_file():
            from safetensors.torch import load_file

            src.unsplit = load_file(str(src.split_dir / UNSPLIT_WEIGHTS))
    return src


# --- the numbers behind the figures -------------------------------------------------------------

def class_names(src: Inputs) -> list[str]:
    n = (src.analysis.num_classes if src.analysis is not None
         else (src.meta or {}).get("num_classes") or len((src.manifest or {}).get("class_groups") or []))
    for names in (list(src.doc.get("class_groups") or {}), (src.meta or {}).get("class_names"),
                  (src.manifest or {}).get("class_names")):
        if names and len(names) == n:
            return [str(c) for c in names]
    return [str(i) for i in range(n)]


def superclasses(src: Inputs, names: list[str]) -> tuple[list[int] | None, list[str] | None]:
    """Superclass of each class, from the data the run learned on, where it has them."""
    spec = str(((src.ckpt or {}).get("identity") or {}).get("data") or (src.meta or {}).get("data") or "")
    kind = spec.partition(":")[0]
    if kind == "synthetic":  # constants: no need to generate the data
        from splitc.data import families, synthetic

        data = families if spec.partition(":")[2].startswith("families") else synthetic
        super_names, of = list(data.SUPERCLASS_NAMES), dict(zip(data.CLASS_NAMES, data.SUPERCLASS_OF))
    elif kind in ("cifar100", "imagefolder"):
        from splitc.data.loaders import load_data

        try:
            bundle = load_data(spec)
        except SplitcError as exc:  # a data error (DataError is one): the page is still useful without superclasses
            src.notes.append(f"superclasses: --data {spec} is not readable here ({str(exc)[:100]})")
            return None, None
        if bundle.superclass_of is None:
            return None, None
        super_names, of = list(bundle.superclass_names), dict(zip(bundle.class_names, bundle.superclass_of))
    else:
        return None, None
    if not all(n in of for n in names):
        src.notes.append(f"superclasses: the run's class names are not those of --data {spec} in this splitc "
                         "(the data changed since the run)")
        return None, None
    return [int(of[n]) for n in names], super_names


def class_matrix(src: Inputs):
    """(classes x groups probabilities, each class's group, group labels, what it is), or None."""
    from splitc.learn.groups import class_nodes

    plan = ((src.meta or {}).get("plan") or {}).get("class_groups") or (src.manifest or {}).get("class_groups")
    if src.analysis is not None:
        ir, scope = src.analysis.ir, src.analysis.scope
        if not scope.in_scope(ir.class_space):
            return None
        levels, level, nodes = scope.groups, scope.level_of[ir.class_space], class_nodes(ir)
        hard = np.asarray(src.hard.groups_of_space[ir.class_space])[nodes]
    elif plan:
        levels = tuple(((src.manifest or {}).get("model") or {}).get("groups") or [max(plan) + 1])
        level, hard = len(levels) - 1, np.asarray(plan)
    else:
        return None
    groups = np.asarray(plan) if plan else hard
    labels = [node_name(levels, level, g) for g in range(levels[level])]
    if src.soft is not None:
        what = "the learned soft assignment of the class space (each row sums to 1)"
        return src.soft[ir.class_space][:, nodes].T, groups, labels, what
    return np.eye(levels[level])[groups], groups, labels, "the split's hard class-to-group map"


def read_json(path: Path, how: str | None) -> Any:
    """A JSON file; a bad one is a one-line error naming ``how`` to remake it, or {} without ``how``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        if how is None:
            return {}
        raise SplitcError(f"{path} is unreadable ({str(exc)[:120]}); run {how} again.") from None
