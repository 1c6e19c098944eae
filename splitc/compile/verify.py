"""Verify a split against its masked reference: a split value (``SplitNet.verify``) or a split
directory (``splitc verify``).

A split as compiled is checked against the masked model it was compiled from. A split trained
since (``SplitNet.compile`` then the user's loop, or ``splitc.load`` of a finetuned directory)
is no longer described by that reference: its own reference is the masked model carrying the
finetuned weights, the dense view of :mod:`splitc.compile.dense_view`, which needs the original
model's analysis. Where there is none, verify says the split was finetuned since compile, and
does not report a mismatch.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from splitc.compile.build import COMPILED_SHA256, VERIFY_BATCHES, VERIFY_TOLERANCE, max_rel_err
from splitc.compile.dense_view import dense_split, dense_view
from splitc.compile.split_dir import SPLIT_WEIGHTS, assignment_from_meta, load_split
from splitc.core.errors import SplitcError
from splitc.core.numerics import tensors_sha256
from splitc.graph.analysis import Analysis
from splitc.graph.split_model import SplitModel

FINETUNED = "finetuned since compile (its weights are not the ones compile made)"


def finetuned_since_compile(split: SplitModel, meta: dict[str, Any] | None = None) -> bool:
    """Whether ``split``'s tensors differ from those recorded at compile (a split from an
    earlier splitc, without the record, counts as compiled)."""
    want = (split.meta if meta is None else meta).get(COMPILED_SHA256)
    return want is not None and tensors_sha256(split.state_dict()) != want


def reference_of(split: SplitModel, analysis: Analysis | None = None) -> tuple[nn.Module, str]:
    """The module ``split`` must equal, and what it is. ``analysis``: the original model's
    (``SplitNet`` holds it), for a split finetuned since compile."""
    stored = split.references.get("masked") or split.references.get("unsplit")
    if stored is None or split.input_size is None:
        raise SplitcError("verify takes a split from SplitNet.compile or splitc.load (it carries its masked "
                          f"reference), not a {type(split).__name__} without one.")
    if not finetuned_since_compile(split):
        return stored, "the masked model as compiled"
    if analysis is None or not _made_from(split, analysis):
        raise SplitcError(f"the split was {FINETUNED}, so the masked reference it carries no longer describes "
                          "it, and the model it was split from is not at hand to rebuild one: verify a split "
                          "before finetuning it, or through the SplitNet that compiled it.")
    dense, why = dense_view(analysis, assignment_from_meta(analysis, split.meta, "this split"), split,
                            split.input_size)
    if dense is None:
        raise SplitcError(f"the split was {FINETUNED}, and its finetuned masked reference cannot be rebuilt: {why}.")
    return dense.module(), "the masked model carrying the finetuned weights"


def verify_value(split: SplitModel, analysis: Analysis | None = None, batches: int = VERIFY_BATCHES) -> float:
    """The largest relative error of ``split`` against :func:`reference_of` on fresh inputs."""
    reference, _ = reference_of(split, analysis)
    return max_rel_err(split, reference, split.input_size, batches)


def verify_split(split_dir: str | os.PathLike) -> dict[str, Any]:
    """Re-check the split as compiled (``split.safetensors``) against the masked model; a
    directory whose split weights were finetuned before it was written (``splitc.export`` of a
    finetuned value) is checked against its finetuned masked reference where the model can be
    built, and otherwise reported as not checked."""
    loaded = load_split(split_dir, weights=SPLIT_WEIGHTS)
    result = {"split_dir": str(split_dir), "tolerance": VERIFY_TOLERANCE}
    if finetuned_since_compile(loaded.model, loaded.meta):
        dense, why = dense_split(loaded)
        if dense is None:
            return {**result, "max_rel_err": None, "ok": False, "finetuned": True,
                    "checked": f"not checked: {SPLIT_WEIGHTS} was {FINETUNED} and {why}"}
        reference, source = dense.module(), "the masked model carrying the finetuned weights"
    else:
        reference, source = loaded.masked_reference()   # rebuilt where the model can be built
    err = max_rel_err(loaded.model, reference, loaded.input_size)
    return {**result, "max_rel_err": err, "ok": err <= VERIFY_TOLERANCE,
            "checked": f"split model vs masked model (PyTorch; {source})"}


def _made_from(split: SplitModel, analysis: Analysis) -> bool:
    meta = split.meta
    return (meta.get("model") == analysis.model_name and tuple(meta.get("input_size", ())) == analysis.input_size
            and {str(s) for s in analysis.scope.level_of} == set(meta.get("groups_of_space", {})))
