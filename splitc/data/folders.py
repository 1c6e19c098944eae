"""Data sets on disk: a CIFAR-100 folder (the official pickles) and an ImageFolder tree."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets as tvd
from torchvision import transforms as T

from splitc.data.bundle import (CIFAR100_STATS, IMAGENET_STATS, DataBundle, DataError, Stats, augment, pick_stats,
                                stats_for, tensor_splits)
from splitc.data.sizes import Size

_CIFAR_FILES = ("train", "test", "meta")
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError,
                  TypeError, AttributeError, ImportError, OverflowError, UnicodeDecodeError)


# --- cifar100 ------------------------------------------------------------------------------

class _FolderCIFAR100(tvd.CIFAR100):
    """torchvision's CIFAR100 reading ``train``/``test``/``meta`` directly from ``root``.

    torchvision checks every file against the md5 of the official archive.  That check is
    for verifying its own downloads; for a user-supplied folder it rejects legitimate
    re-pickled copies (and test fixtures) with a message suggesting ``download=True``, which
    is impossible offline.  We check presence here instead and validate the content
    (keys, shapes, label ranges) in :func:`_read_cifar`, raising a clear DataError.
    """

    base_folder = ""
    meta = {**tvd.CIFAR100.meta, "md5": None}  # check_integrity(path, None) = file exists

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(os.path.join(self.root, name)) for name in _CIFAR_FILES)


def _cifar_dir(path: Path) -> Path:
    """The folder holding the pickles: PATH itself or PATH/cifar-100-python."""
    layout = "expected PATH/{train,test,meta} or PATH/cifar-100-python/{train,test,meta}"
    if not path.is_dir():
        raise DataError(f"cifar100 folder {path} does not exist; {layout} "
                        "(the official 'CIFAR-100 python version' archive, extracted)")
    for folder in (path, path / "cifar-100-python"):
        if all((folder / name).is_file() for name in _CIFAR_FILES):
            return folder
    folder = path / "cifar-100-python" if (path / "cifar-100-python").is_dir() else path
    missing = [name for name in _CIFAR_FILES if not (folder / name).is_file()]
    raise DataError(f"cifar100 folder {folder} is missing {', '.join(missing)}; {layout}")


def _unpickle(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Load one official CIFAR pickle (trusted, user-supplied) and check its keys."""
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except _PICKLE_ERRORS as err:
        raise DataError(f"cifar100 file {path} is corrupt ({type(err).__name__}); "
                        "re-extract cifar-100-python.tar.gz") from err
    if isinstance(entry, dict) and any(isinstance(k, bytes) for k in entry):
        # Official files are Python 2 pickles whose str keys load as str with latin1;
        # bytes keys mean a Python 3 re-pickle, which torchvision's reader cannot index.
        raise DataError(f"cifar100 file {path} has bytes keys (re-pickled by Python 3); "
                        "use the original files from cifar-100-python.tar.gz")
    missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise DataError(f"cifar100 file {path} lacks {', '.join(missing)}; "
                        "it is not in the official cifar-100-python format")
    return entry


def _read_cifar(folder: Path) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """Validate the pickles; return fine names, coarse names and fine -> coarse mapping."""
    meta = _unpickle(folder / "meta", ("fine_label_names", "coarse_label_names"))
    fine_names, coarse_names = tuple(meta["fine_label_names"]), tuple(meta["coarse_label_names"])
    fine: list[int] = []
    coarse: list[int] = []
    for split in ("train", "test"):
        entry = _unpickle(folder / split, ("data", "fine_labels", "coarse_labels"))
        data = np.asarray(entry["data"])
        n = len(entry["fine_labels"])
        if data.ndim != 2 or data.shape != (n, 3072) or len(entry["coarse_labels"]) != n:
            raise DataError(f"cifar100 file {folder / split}: data is {data.shape} for {n} "
                            "labels; expected N x 3072 uint8 with N fine and coarse labels")
        fine += list(entry["fine_labels"])
        coarse += list(entry["coarse_labels"])
    return fine_names, coarse_names, _fine_to_coarse(folder, fine, coarse, fine_names, coarse_names)


def _fine_to_coarse(folder: Path, fine: list[int], coarse: list[int],
                    fine_names: tuple[str, ...], coarse_names: tuple[str, ...]) -> tuple[int, ...]:
    """Each fine class must sit in exactly one coarse class (the superclass)."""
    pairs = set(zip(fine, coarse))
    mapping: dict[int, int] = {}
    for f, c in pairs:
        if not (0 <= f < len(fine_names) and 0 <= c < len(coarse_names)):
            raise DataError(f"cifar100 {folder}: label pair ({f}, {c}) is outside the "
                            f"{len(fine_names)} fine / {len(coarse_names)} coarse names in meta")
        if mapping.setdefault(f, c) != c:
            raise DataError(f"cifar100 {folder}: fine class {fine_names[f]!r} has several "
                            "coarse labels; each fine class needs exactly one superclass")
    absent = [fine_names[f] for f in range(len(fine_names)) if f not in mapping]
    if absent:
        raise DataError(f"cifar100 {folder}: no images for fine classes {absent[:5]}; "
                        "every class in meta needs images to know its superclass")
    return tuple(mapping[f] for f in range(len(fine_names)))


def load_cifar100(spec: str, path: Path, size: Size, flip: bool, normalize: str | None = None) -> DataBundle:
    """Official CIFAR-100 pickles; superclasses from the coarse labels; val = test set."""
    folder = _cifar_dir(path)
    fine_names, coarse_names, superclass_of = _read_cifar(folder)
    try:
        splits = [_FolderCIFAR100(str(folder), train=t, download=False) for t in (True, False)]
    except (RuntimeError, ValueError) as err:
        raise DataError(f"cifar100 folder {folder} could not be read: {err}") from err
    tensors = [(torch.from_numpy(np.ascontiguousarray(s.data.transpose(0, 3, 1, 2))),
                torch.tensor(s.targets, dtype=torch.int64)) for s in splits]
    stats = pick_stats(normalize, CIFAR100_STATS, tensors[0][0])
    tr, va, probe = tensor_splits(tensors[0], tensors[1], size, stats, flip)
    return DataBundle(tr, va, fine_names, superclass_of, coarse_names, size, spec, probe)


# --- imagefolder ---------------------------------------------------------------------------

def _pil_transform(size: Size, train: bool, flip: bool, stats: Stats = IMAGENET_STATS) -> T.Compose:
    """Resize the short side, centre-crop to size, augment (train only), normalise."""
    steps: list[Any] = [T.Grayscale(1)] if size[0] == 1 else []
    steps += [T.Resize(max(size[1], size[2]), antialias=True), T.CenterCrop((size[1], size[2])),
              T.PILToTensor(), T.ConvertImageDtype(torch.float32)]
    if train:
        steps += augment(size, flip)
    steps.append(T.Normalize(*stats_for(stats, size[0])))
    return T.Compose(steps)


def _image_folder(root: Path, size: Size, train: bool, flip: bool, stats: Stats = IMAGENET_STATS) -> tvd.ImageFolder:
    """One split as a torchvision ImageFolder, with errors turned into DataError."""
    if not root.is_dir():
        raise DataError(f"imagefolder split {root} does not exist; expected "
                        "PATH/train/<class>/* and PATH/val/<class>/*")
    try:
        return tvd.ImageFolder(str(root), transform=_pil_transform(size, train, flip, stats))
    except FileNotFoundError as err:
        raise DataError(f"imagefolder split {root}: {err}; put images in <class> subfolders") from err


def _read_hierarchy(path: Path, classes: Sequence[str]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Parse ``hierarchy.json`` ({class: superclass}); it must cover exactly the classes."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not readable JSON ({err}); "
                        'write {"class": "superclass", ...}') from err
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise DataError(f"{path} must be a JSON object mapping class name to superclass name")
    missing = sorted(set(classes) - set(table))
    unknown = sorted(set(table) - set(classes))
    if missing or unknown:
        raise DataError(f"{path} must list every class exactly: missing {missing[:5]}, "
                        f"unknown {unknown[:5]}")
    names = tuple(sorted(set(table.values())))
    return tuple(names.index(table[c]) for c in classes), names


def load_imagefolder(spec: str, path: Path, size: Size, flip: bool, normalize: str | None = None) -> DataBundle:
    """``PATH/{train,val}/<class>/*`` with optional ``PATH/hierarchy.json``."""
    if not path.is_dir():
        raise DataError(f"imagefolder folder {path} does not exist; expected "
                        "PATH/train/<class>/* and PATH/val/<class>/*")
    stats = pick_stats(normalize, IMAGENET_STATS, None)
    train = _image_folder(path / "train", size, True, flip, stats)
    val = _image_folder(path / "val", size, False, flip, stats)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"imagefolder {path}: train and val class folders differ (only in "
                        f"train: {only_train[:5]}, only in val: {only_val[:5]}); use the same names")
    superclass_of, superclass_names = None, None
    if (path / "hierarchy.json").is_file():
        superclass_of, superclass_names = _read_hierarchy(path / "hierarchy.json", train.classes)
    probe = _image_folder(path / "train", size, False, flip, stats)
    return DataBundle(train, val, tuple(train.classes), superclass_of, superclass_names, size, spec, probe)
