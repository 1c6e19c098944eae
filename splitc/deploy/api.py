"""``splitc.export``: a split as a value (``SplitNet.compile``, ``splitc.load``) or a split
directory -> ONNX per subgraph + manifest, the same export as ``splitc export``.

A split value is first written as a split directory beside the output (``OUT.split``: its
artifact, weights and split.json, from the fields the value carries), because the manifest
names the split it came from and ``splitc verify OUT`` reloads it from there.
"""

from __future__ import annotations

import os
from pathlib import Path

from splitc.compile.artifact import read_artifact
from splitc.compile.split_dir import save_split
from splitc.core.errors import SplitcError
from splitc.core.outputs import claim, replacing
from splitc.deploy.export import export_split
from splitc.deploy.manifest import Manifest
from splitc.graph.split_model import SplitModel

NEEDED = ("model", "num_classes", "input_size", "scope", "groups_of_space", "class_names", "report")


def export(split: SplitModel | str | os.PathLike, out: str | os.PathLike, devices: str = "auto",
           force: bool = False, lower: bool | str = True) -> Manifest:
    """Export ``split`` (a split model, an artifact file from ``splitc.save`` or a split
    directory) into ``out``; ``devices`` as ``splitc export --devices`` (``cuda:0,cuda:1``)."""
    if not isinstance(split, SplitModel):
        path = Path(split)
        if path.is_dir():
            return export_split(path, out, devices, force=force, lower=lower)[0]
        split = read_artifact(path).model
    folder = Path(f"{Path(out).resolve()}.split")
    write_split_value(split, folder, force)
    return export_split(folder, out, devices, force=force, lower=lower)[0]


def write_split_value(split: SplitModel, folder: Path, force: bool = False) -> Path:
    """A split directory from a split value and the fields it carries; its current weights are
    the directory's split weights (``splitc verify`` of the directory compares them with the
    masked reference, so a split finetuned since ``compile`` reads as changed there)."""
    missing = [k for k in NEEDED if k not in split.meta]
    unsplit = split.references.get("unsplit")
    if missing or unsplit is None:
        raise SplitcError(f"this split model does not carry what a split directory needs ({', '.join(missing) or 'its unsplit reference'}): "
                          "export a split from SplitNet.compile or splitc.load, or a split directory.")
    claim(folder, force)
    meta = {**split.meta, "plan": split.plan.to_dict()}
    with replacing(folder, force):
        save_split(folder, meta, split, unsplit, split.references.get("masked"))
    return folder
