"""The split directory: what ``splitc split`` writes and every later stage reads.

    split.json            schema, splitc version, model identity, scope, hard assignment,
                          the plan (wiring), class names, the structural report
    unsplit.safetensors   the unsplit model the split was compiled from (inter-group weights
                          zeroed for a plain split); the masked reference is rebuilt from it
    split.safetensors     the split model's weights as split (exactly the masked model's)
    finetuned.safetensors written by ``splitc finetune``; the current weights when present

Only tensors and JSON are stored, never pickled code. Loading rebuilds the model from its
identity, re-runs the analysis and the compiler passes, checks that the plan comes out the same
and then loads the weights, so a directory from another model, scope or version is refused
with one line instead of producing a wrong model. Files are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from splitc import __version__
from splitc.graph.analysis import Analysis, analyse
from splitc.graph.group_tree import HardAssignment
from splitc.core.documents import read_document
from splitc.core.errors import SplitcError
from splitc.graph.scope import ScopeSpec
from splitc.compile.split import compile_split
from splitc.graph.split_model import SplitModel
from splitc.core.outputs import atomic_write
from splitc.core.files import FINETUNED_WEIGHTS, SPLIT_JSON, SPLIT_WEIGHTS, UNSPLIT_WEIGHTS

SCHEMA_VERSION = 1


@dataclass
class LoadedSplit:
    meta: dict[str, Any]
    analysis: Analysis
    assignment: HardAssignment
    model: SplitModel            # with the current weights (finetuned when present)
    masked: torch.nn.Module      # the reference: the masked model (extended, with overlap)
    weights_file: str

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])


def spec_to_dict(spec: ScopeSpec) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def spec_from_dict(data: dict[str, Any]) -> ScopeSpec:
    return ScopeSpec(tuple(data["groups"]), tuple(data.get("split_from", ())),
                     tuple(data.get("split_depth", ())), data.get("preset"))


def save_split(out: str | os.PathLike, meta: dict[str, Any], model: SplitModel, unsplit: fx.GraphModule) -> Path:
    """Write a split directory; split.json goes last, so a half-written folder never loads."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / UNSPLIT_WEIGHTS, unsplit.state_dict())
    write_tensors(folder / SPLIT_WEIGHTS, model.state_dict())
    (folder / FINETUNED_WEIGHTS).unlink(missing_ok=True)
    document = {"schema": SCHEMA_VERSION, "splitc_version": __version__, "weights": SPLIT_WEIGHTS, **meta}
    write_json(folder / SPLIT_JSON, document)
    return folder


def write_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def write_json(path: Path, document: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1), encoding="utf-8"))




def read_meta(split_dir: str | os.PathLike) -> dict[str, Any]:
    meta = read_document(split_dir, SPLIT_JSON, "split directory", "split RUN_DIR --out DIR", SCHEMA_VERSION)
    if meta.get("splitc_version") != __version__:
        raise SplitcError(f"{Path(split_dir) / SPLIT_JSON} was written by splitc {meta.get('splitc_version')}, "
                          f"this is splitc {__version__}; run `splitc split` again with this version.")
    return meta


def load_split(split_dir: str | os.PathLike, weights: str | None = None) -> LoadedSplit:
    """Rebuild the split model of ``split_dir`` with its current weights (or ``weights``)."""
    folder = Path(split_dir)
    meta = read_meta(folder)
    spec = spec_from_dict(meta["scope"])
    analysis = analyse(meta["model"], spec, meta["num_classes"], tuple(meta["input_size"]))
    assignment = assignment_from_meta(analysis, meta, folder)
    _load_into(analysis.gm, folder / UNSPLIT_WEIGHTS, "the unsplit model")
    analysis.gm.eval()  # inference everywhere after a load; finetune switches to train itself
    compiled = compile_split(analysis.gm, analysis.ir, analysis.scope, assignment)
    if compiled.model.plan.to_dict() != meta["plan"]:
        raise SplitcError(f"{folder}: the split this splitc compiles from {SPLIT_JSON} differs from "
                          "the stored one; run `splitc split` again.")
    name = weights or meta["weights"]
    _load_into(compiled.model, folder / name, "the split model")
    return LoadedSplit(meta, analysis, assignment, compiled.model.eval(), compiled.masked, name)


def assignment_from_meta(analysis: Analysis, meta: dict[str, Any], folder: Path) -> HardAssignment:
    stored = {int(k): np.asarray(v, dtype=np.int64) for k, v in meta["groups_of_space"].items()}
    scope, ir = analysis.scope, analysis.ir
    if set(stored) != set(scope.level_of) or any(
            len(stored[s]) != ir.spaces[s].num_nodes for s in stored):
        raise SplitcError(f"{folder}: its assignment does not fit model {meta['model']} with scope "
                          f"{spec_from_dict(meta['scope']).describe()}; run `splitc split` again.")
    overlap = {int(s): {int(n): tuple(gs) for n, gs in nodes} for s, nodes in meta.get("overlap", {}).items()}
    return HardAssignment(stored, overlap)


def _load_into(module: torch.nn.Module, path: Path, what: str) -> None:
    if not path.is_file():
        raise SplitcError(f"{path} is missing ({what}'s weights); run `splitc split` again.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SplitcError(f"{path} is corrupt ({str(exc)[:100]}); run `splitc split` again.") from None
    own = module.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise SplitcError(f"{path} does not match {what} (different tensors or shapes); it belongs "
                          "to another split: run `splitc split` again.")
    module.load_state_dict(state)
