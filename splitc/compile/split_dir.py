"""Saving and loading a split: one file format, one writer, and the split directory around it.

A split value (:class:`~splitc.graph.split_model.SplitModel` with its ``meta``, ``input_size``
and ``references``; ``SplitNet.compile`` and ``splitc split`` make it with
:func:`splitc.compile.build.build_split`) is written as one ``.splitc`` file by :func:`save`
(``splitc.save``): every subgraph and reference as an exported program, with the meta
(``compile/artifact.py``'s format). It loads without the model's class. A split directory
(``splitc split``, and ``splitc.export`` of a value) holds that same file beside what the later
stages read:

    split.json            schema, splitc version, and the value's meta: model identity, scope,
                          hard assignment, plan (wiring), class names, the structural report
    split.splitc          the split as :func:`save` writes it
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
recompiled, checked against its plan, and the file is written into it. Files are written
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from splitc.core.version import __version__
from splitc.compile.artifact import read_artifact, read_reference, write_artifact
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
SUFFIX = ".splitc"   # the one file suffix of a saved split (a split directory's split.splitc too)
SPLIT_META = ("model", "num_classes", "input_size", "scope", "groups_of_space", "class_names", "report")
DIR_KEYS = ("schema", "splitc_version", "weights", "teacher")   # split.json's keys about the directory itself


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


def save(split: SplitModel, path: str | os.PathLike) -> Path:
    """``splitc.save``: write ``split`` (from ``SplitNet.compile`` or ``splitc.load``) to one
    ``.splitc`` file that loads without the model's class, with its current weights."""
    if not isinstance(split, SplitModel):
        raise SplitcError(f"splitc.save takes a split (SplitNet.compile's or splitc.load's result), not "
                          f"{type(split).__name__}.")
    if not isinstance(path, (str, os.PathLike)) or Path(path).suffix != SUFFIX:
        raise SplitcError(f"splitc.save writes a {SUFFIX} file: give a path ending in {SUFFIX}, got {path!r}.")
    missing = [k for k in SPLIT_META if k not in split.meta] + [k for k, v in (
        ("input_size", split.input_size), ("its unsplit reference", split.references.get("unsplit"))) if v is None]
    if missing:
        raise SplitcError(f"this split does not carry what a saved split needs ({', '.join(missing)}); save a "
                          "split from SplitNet.compile or splitc.load.")
    if Path(path).is_dir():
        raise SplitcError(f"{path} is a directory; splitc.save writes one {SUFFIX} file.")
    meta = {**split.meta, "input_size": list(split.input_size), "plan": split.plan.to_dict()}
    return write_artifact(path, split, meta, split.references)


def save_split(out: str | os.PathLike, split: SplitModel) -> Path:
    """Write the split directory of the value ``split`` (:func:`save`'s file, the weights and
    split.json); split.json goes last, so a half-written folder never loads."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in split.meta.items() if k not in DIR_KEYS}
    write_tensors(folder / UNSPLIT_WEIGHTS, split.references["unsplit"].state_dict())
    write_tensors(folder / SPLIT_WEIGHTS, split.state_dict())
    (folder / FINETUNED_WEIGHTS).unlink(missing_ok=True)
    save(split, folder / SPLIT_ARTIFACT)
    write_json(folder / SPLIT_JSON, {"schema": SCHEMA_VERSION, "splitc_version": __version__, **meta,
                                     "plan": split.plan.to_dict(), "weights": SPLIT_WEIGHTS})
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


def load(path: str | os.PathLike) -> SplitModel:
    """``splitc.load``: the split value of a ``.splitc`` file (``splitc.save``) or of a split
    directory (with its current weights), in eval mode; the model's class is not needed."""
    if not isinstance(path, (str, os.PathLike)):
        raise SplitcError(f"splitc.load takes the path of a {SUFFIX} file or a split directory, not "
                          f"{type(path).__name__}.")
    path = Path(path)
    if not path.is_dir():
        return read_artifact(path).model
    loaded = load_split(path)
    split = loaded.model
    split.meta = {k: v for k, v in loaded.meta.items() if k not in DIR_KEYS}
    split.input_size = loaded.input_size
    split.references = {"unsplit": loaded.unsplit, **({"masked": loaded.masked} if loaded.masked is not loaded.unsplit else {})}
    return split


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
    split = compiled.model
    _load_into(split, folder / SPLIT_WEIGHTS, "the split model")
    split.meta = {k: v for k, v in meta.items() if k not in DIR_KEYS}
    split.input_size = tuple(meta["input_size"])
    split.references = {"unsplit": analysis.gm, **({"masked": compiled.masked} if hard.overlap else {})}
    try:
        save(split, folder / SPLIT_ARTIFACT)
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


def assignment_from_meta(analysis: Analysis, meta: dict[str, Any], folder: object) -> HardAssignment:
    """The split's hard assignment from its meta (``folder`` names it in the error)."""
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
