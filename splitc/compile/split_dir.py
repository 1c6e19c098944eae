"""The split directory: what ``splitc split`` writes and every later stage reads.

    split.json            schema, splitc version, model identity, scope, hard assignment,
                          the plan (wiring), class names, the structural report
    split.splitc          the compiled split as exported programs (``compile/artifact.py``):
                          every subgraph, the unsplit model and, with overlap, the masked reference
    unsplit.safetensors   the unsplit model the split was compiled from (inter-group weights
                          zeroed for a plain split: then it is also the masked reference)
    split.safetensors     the split model's weights as split (exactly the masked model's)
    finetuned.safetensors written by ``splitc finetune``; the current weights when present

Only tensors, JSON and exported programs are stored, never pickled code. Loading takes the
split model from ``split.splitc``: no model class and no re-trace, so a model defined in a
user's ``__main__`` reloads. The weights files are loaded over it (checked by name and shape);
they stay the one place finetune writes. The analysis (the model rebuilt by name and traced)
is made only when a stage asks for it (``LoadedSplit.analysis``: the one-device lowering,
verify's fresh masked reference) and raises :class:`ModelUnavailable` where the model cannot
be built. A directory of the earlier format (no ``split.splitc``) is rebuilt once by name,
recompiled, checked against its plan, and the artifact is written into it. Files are written
atomically; split.json goes last.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from splitc import __version__
from splitc.compile.artifact import load_artifact, read_artifact, read_reference, save_artifact
from splitc.compile.split import compile_split, overlap_reference
from splitc.core.documents import read_document
from splitc.core.errors import SplitcError
from splitc.core.files import FINETUNED_WEIGHTS, SPLIT_ARTIFACT, SPLIT_JSON, SPLIT_WEIGHTS, UNSPLIT_WEIGHTS
from splitc.core.outputs import atomic_write
from splitc.graph.analysis import Analysis, analyse
from splitc.graph.group_tree import HardAssignment
from splitc.graph.scope import ScopeSpec
from splitc.graph.split_model import SplitModel
from splitc.passes.mask import mask_inter_group

SCHEMA_VERSION = 1
ARTIFACT_META = ("model", "num_classes", "input_size", "scope", "class_names")  # split.json keys it carries


class ModelUnavailable(SplitcError):
    """The model a split was made from cannot be built in this process (its class is gone)."""


@dataclass
class LoadedSplit:
    meta: dict[str, Any]
    model: SplitModel            # with the current weights (finetuned when present)
    masked: nn.Module            # the stored reference: the masked model (extended, with overlap)
    unsplit: nn.Module           # the model in unsplit.safetensors
    weights_file: str
    folder: Path
    rebuilt: Analysis | None = field(default=None, repr=False)   # the analysis, once made

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def analysis(self) -> Analysis:
        """The original model rebuilt by name and traced, with the unsplit weights (made on
        first use; :class:`ModelUnavailable` where it cannot be built)."""
        if self.rebuilt is None:
            self.rebuilt = rebuild_analysis(self.meta, self.folder)
        return self.rebuilt

    @property
    def assignment(self) -> HardAssignment:
        return assignment_from_meta(self.analysis, self.meta, self.folder)

    def masked_reference(self) -> tuple[nn.Module, str]:
        """The masked model rebuilt from the original one where it can be built (a check that
        does not trust the artifact), else the stored one; and which of the two it is."""
        try:
            a = self.analysis
        except ModelUnavailable:
            return self.masked, f"the stored masked reference: model {self.meta['model']} cannot be built here"
        hard = self.assignment
        reference = (overlap_reference(a.gm, a.ir, a.scope, hard) if hard.overlap
                     else mask_inter_group(a.gm, a.ir, a.scope, hard))
        return reference.eval(), f"masked model rebuilt from {self.meta['model']}"


def spec_to_dict(spec: ScopeSpec) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def spec_from_dict(data: dict[str, Any]) -> ScopeSpec:
    return ScopeSpec(tuple(data["groups"]), tuple(data.get("split_from", ())),
                     tuple(data.get("split_depth", ())), data.get("preset"))


def save_split(out: str | os.PathLike, meta: dict[str, Any], model: SplitModel, unsplit: fx.GraphModule,
               masked: nn.Module | None = None) -> Path:
    """Write a split directory; split.json goes last, so a half-written folder never loads.
    ``masked`` is the reference when it is not ``unsplit`` itself (an overlap split)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / UNSPLIT_WEIGHTS, unsplit.state_dict())
    write_tensors(folder / SPLIT_WEIGHTS, model.state_dict())
    (folder / FINETUNED_WEIGHTS).unlink(missing_ok=True)
    document = {"schema": SCHEMA_VERSION, "splitc_version": __version__, "weights": SPLIT_WEIGHTS, **meta}
    write_artifact(folder, document, model, unsplit, masked)
    write_json(folder / SPLIT_JSON, document)
    return folder


def write_artifact(folder: Path, meta: dict[str, Any], model: SplitModel, unsplit: nn.Module,
                   masked: nn.Module | None) -> None:
    """``split.splitc``: the split as exported programs, with its unsplit model and references."""
    references = {"unsplit": unsplit}
    if masked is not None and masked is not unsplit:
        references["masked"] = masked
    save_artifact(model, folder / SPLIT_ARTIFACT, {k: meta[k] for k in ARTIFACT_META if k in meta}, references)


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


def load(path: str | os.PathLike) -> SplitModel:
    """``splitc.load``: the split model of an artifact file (``splitc.save``) or of a split
    directory (with its current weights), in eval mode; the model's class is not needed."""
    path = Path(path)
    return load_split(path).model if path.is_dir() else load_artifact(path)


def load_split(split_dir: str | os.PathLike, weights: str | None = None) -> LoadedSplit:
    """The split of ``split_dir`` from its artifact, with its current weights (or ``weights``);
    a directory of the earlier format is upgraded first (:func:`upgrade`)."""
    folder = Path(split_dir)
    meta = read_meta(folder)
    rebuilt = None if (folder / SPLIT_ARTIFACT).is_file() else upgrade(folder, meta)
    artifact = read_artifact(folder / SPLIT_ARTIFACT)
    if artifact.model.plan.to_dict() != meta["plan"] or "unsplit" not in artifact.references:
        raise SplitcError(f"{folder / SPLIT_ARTIFACT} holds another split than {SPLIT_JSON} describes; "
                          "run `splitc split` again.")
    unsplit = artifact.references["unsplit"]
    _load_into(unsplit, folder / UNSPLIT_WEIGHTS, "the unsplit model")
    name = weights or meta["weights"]
    _load_into(artifact.model, folder / name, "the split model")
    masked = artifact.references.get("masked", unsplit)
    return LoadedSplit(meta, artifact.model, masked, unsplit, name, folder, rebuilt)


def load_unsplit(split_dir: str | os.PathLike) -> nn.Module:
    """The model in ``unsplit.safetensors`` from the artifact alone, in eval mode (export's
    baseline), without the split model's programs."""
    folder = Path(split_dir)
    if not (folder / SPLIT_ARTIFACT).is_file():
        return load_split(folder).unsplit
    module = read_reference(folder / SPLIT_ARTIFACT, "unsplit")
    _load_into(module, folder / UNSPLIT_WEIGHTS, "the unsplit model")
    return module


def upgrade(folder: Path, meta: dict[str, Any]) -> Analysis:
    """A directory without ``split.splitc`` (the earlier format): rebuild the model by name,
    recompile, check the plan, and write the artifact into it; refused in one line where the
    model cannot be built. Returns the analysis, so this process need not trace again."""
    try:
        analysis = rebuild_analysis(meta, folder)
    except ModelUnavailable as exc:
        raise SplitcError(f"{folder} has no {SPLIT_ARTIFACT} (an earlier splitc wrote it) and {exc}; run "
                          "`splitc split` again where the model can be built.") from None
    hard = assignment_from_meta(analysis, meta, folder)
    compiled = compile_split(analysis.gm, analysis.ir, analysis.scope, hard)
    if compiled.model.plan.to_dict() != meta["plan"]:
        raise SplitcError(f"{folder}: the split this splitc compiles from {SPLIT_JSON} differs from "
                          "the stored one; run `splitc split` again.")
    _load_into(compiled.model, folder / SPLIT_WEIGHTS, "the split model")
    try:
        write_artifact(folder, meta, compiled.model, analysis.gm, compiled.masked if hard.overlap else None)
    except OSError as exc:
        raise SplitcError(f"{folder} has no {SPLIT_ARTIFACT} (an earlier splitc wrote it) and it cannot be "
                          f"written there ({exc.strerror or exc}); copy the folder somewhere writable.") from None
    return analysis


def rebuild_analysis(meta: dict[str, Any], folder: Path) -> Analysis:
    """The original model built by name and traced, with the unsplit weights, in eval mode.
    A model of a script's ``__main__`` belonged to that process and is never rebuilt."""
    name = meta["model"]
    if name.partition(":")[0] == "__main__":
        raise ModelUnavailable(f"model {name} was defined in the script that split it")
    try:
        analysis = analyse(name, spec_from_dict(meta["scope"]), meta["num_classes"], tuple(meta["input_size"]))
    except SplitcError as exc:
        raise ModelUnavailable(f"model {name} cannot be built here ({str(exc)[:160]})") from exc
    _load_into(analysis.gm, folder / UNSPLIT_WEIGHTS, "the unsplit model")
    analysis.gm.eval()  # inference everywhere after a load; finetune switches to train itself
    return analysis


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
