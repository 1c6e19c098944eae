"""``splitc.export``: a split as a value (``SplitNet.compile``, ``splitc.load``), a ``.splitc``
file or a split directory -> ONNX per subgraph + manifest, the same export as ``splitc export``.

A split value is first written as a split directory beside the output (``OUT.split``, by the
one writer of ``compile/split_dir.py``), because the manifest names the split it came from and
``splitc verify OUT`` reloads it from there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from splitc.compile.split_dir import SUFFIX, load, save_split
from splitc.core.errors import SplitcError
from splitc.core.naming import ARG
from splitc.core.outputs import claim, replacing
from splitc.deploy.export import export_split
from splitc.deploy.manifest import Manifest
from splitc.graph.split_model import SplitModel


def export(split: SplitModel | str | os.PathLike, out: str | os.PathLike, devices: str | Sequence[str] = "auto",
           force: bool = False, lower: bool | str = True) -> Manifest:
    """Export ``split`` (a split value, a ``.splitc`` file from ``splitc.save`` or a split
    directory) into ``out``; ``devices`` as ``splitc export --devices`` (``"cuda:0,cuda:1"``)."""
    check_export_args(split, out, devices, force, lower)
    claim(out, force, names=ARG)   # said in the caller's words, before any work
    if not isinstance(split, SplitModel):
        path = Path(split)
        if path.is_dir():
            return export_split(path, out, devices, force=force, lower=lower)[0]
        split = load(path)
    folder = Path(f"{Path(out).resolve()}.split")
    claim(folder, force, names=ARG)
    with replacing(folder, force):
        save_split(folder, split)
    return export_split(folder, out, devices, force=force, lower=lower)[0]


def check_export_args(split: object, out: object, devices: object, force: object, lower: object) -> None:
    """Every argument of :func:`export`, before any work (one line each)."""
    if not isinstance(split, (SplitModel, str, os.PathLike)):
        hint = " (split it first: splitc.SplitNet(model, ...).compile())" if hasattr(split, "parameters") else ""
        raise SplitcError(f"splitc.export takes a split (SplitNet.compile's or splitc.load's result), a {SUFFIX} file "
                          f"or a split directory, not {type(split).__name__}{hint}.")
    if not isinstance(split, SplitModel) and not Path(split).exists():
        raise SplitcError(f"splitc.export: {split} does not exist (give a {SUFFIX} file or a split directory).")
    if not isinstance(out, (str, os.PathLike)):
        raise SplitcError(f"splitc.export: out= is the folder to write, a str or Path, not {type(out).__name__}.")
    if not (isinstance(devices, str) or (isinstance(devices, Sequence) and all(isinstance(d, str) for d in devices))):
        raise SplitcError(f"splitc.export: devices= is 'auto', 'cpu' or a list like 'cuda:0,cuda:1', not {devices!r}.")
    if not isinstance(force, bool):
        raise SplitcError(f"splitc.export: force= is True or False, not {force!r}.")
    if not (isinstance(lower, bool) or lower == "always"):
        raise SplitcError(f"splitc.export: lower= is True, False or 'always', not {lower!r}.")
