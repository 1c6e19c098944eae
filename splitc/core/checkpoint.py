"""Crash-safe training checkpoints that load with ``torch.load(weights_only=True)``.

A learn run can take hours, so the checkpoint is written atomically (temp file in the same
directory, fsync, ``os.replace``): a kill at any moment leaves either the old checkpoint or the
new one, never half a file. Payloads hold only tensors and plain Python values, so loading them
never executes pickled code. Every payload carries ``splitc_version`` and ``kind`` so that a
foreign ``.pt`` file is recognised, and an ``identity`` dict (model, classes, input size, scope)
so that resuming with different options fails loudly instead of training a mismatched model.

The metrics journal (JSON lines) lives beside the checkpoint; on resume it is trimmed back to
the checkpoint's step, so a killed run's extra lines are not logged twice.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from splitc.core.version import __version__
from splitc.core.outputs import atomic_write
from splitc.core.errors import SplitcError

# What torch.load raises on a truncated, corrupt or non-torch file (torch wraps zip and
# unpickling failures in RuntimeError; weights_only rejects odd globals with UnpicklingError).
_LOAD_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
                ValueError, UnicodeDecodeError)

# The CLI option that fixes a mismatch in each identity field.
_FIX_FOR = {
    "model": "pass the same MODEL argument",
    "num_classes": "use the same --data (the class count comes from it)",
    "input_size": "pass the same --input-size",
    "scope": "pass the same --groups/--split-from/--split-depth/--preset",
    "data": "pass the same --data",
    "assign": "pass the same --assign kind",
    "branch_lr_mult": "pass the same --branch-lr-mult",
}
# What a checkpoint written before an identity field existed ran with: a finetune before
# --branch-lr-mult trained every parameter at --lr.
_BEFORE_FIELD = {"branch_lr_mult": 1.0}


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus ``splitc_version``) to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"splitc_version": __version__, **payload}
    atomic_write(path, lambda tmp: torch.save(data, tmp), durable=True)
    return path




def load_checkpoint(path: str | os.PathLike, expect: dict[str, Any] | None = None,
                    kind: str | None = None) -> dict[str, Any]:
    """Load a splitc checkpoint, checking it is one and that its identity matches ``expect``.

    Every failure is a :class:`SplitcError` with one line naming the problem and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitcError(f"checkpoint {path} does not exist; run without --resume to start "
                          "a new run, or point --out at the run folder that holds it.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SplitcError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: "
                          f"{reason[:120]}); delete it and start again without --resume.") from None
    _check_splitc(path, payload, kind)
    _check_identity(path, payload.get("identity", {}), expect or {})
    return payload


def _check_splitc(path: Path, payload: Any, kind: str | None) -> None:
    if not isinstance(payload, dict) or "splitc_version" not in payload or "kind" not in payload:
        raise SplitcError(f"{path} is not a splitc checkpoint (no splitc_version/kind); point "
                          "--out at a folder written by 'splitc learn'.")
    if kind is not None and payload["kind"] != kind:
        raise SplitcError(f"{path} is a {payload['kind']!r} checkpoint, not {kind!r}; point "
                          "--out at a folder written by 'splitc learn'.")


def _check_identity(path: Path, identity: dict[str, Any], expect: dict[str, Any]) -> None:
    """The first field that differs names itself and the option that fixes it."""
    for field, wanted in expect.items():
        found = identity.get(field, _BEFORE_FIELD.get(field))
        if _norm(found) != _norm(wanted):
            fix = _FIX_FOR.get(field, f"use the same {field}")
            raise SplitcError(f"checkpoint {path} was written for {field}={_norm(found)!r}, but "
                              f"this run has {field}={_norm(wanted)!r}; {fix} as the original "
                              "run, or start a new run without --resume.")


def _norm(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint stores lists)."""
    return list(value) if isinstance(value, tuple) else value


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (opened per record, so a kill loses at most the line being written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def trim_metrics(path: Path, step: int) -> None:
    """Drop what a killed run logged after its last checkpoint (and a half-written last line),
    so that the resumed run logs every step exactly once."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line + "\n" for line in lines
            if (record := parse_metrics_line(line)) is not None and record.get("step", 0) <= step]
    path.write_text("".join(kept), encoding="utf-8")


def parse_metrics_line(line: str | bytes) -> dict[str, Any] | None:
    """One metrics record, or None for a torn line (a killed write) or anything not a record."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def read_metrics(path: str | os.PathLike, tail_bytes: int | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics file that carry a step, in order; torn lines are
    skipped, a missing file reads as empty. ``tail_bytes`` reads only the end (a progress poll)."""
    try:
        with open(path, "rb") as fh:
            if tail_bytes is not None:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - tail_bytes))
            lines = fh.read().splitlines()
    except OSError:
        return []
    records = (parse_metrics_line(line) for line in lines)
    return [r for r in records if r is not None and isinstance(r.get("step"), (int, float))]
