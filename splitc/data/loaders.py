"""Datasets for ``splitc learn --data SPEC``: parse the spec, load both splits, augment.

Every form yields ``(float tensor C,H,W, int label)`` pairs at exactly ``input_size``,
normalised per channel.  The training split gets the SplitNet paper's CIFAR augmentation
(random crop with zero padding of about size/8, random horizontal flip); validation is not
augmented.  See :func:`describe_specs` for the accepted forms.  Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T

from splitc.data import families, synthetic
from splitc.core.errors import SplitcError
from splitc.data.sizes import Size

Stats = tuple[tuple[float, ...], tuple[float, ...]]

_NATURAL_SIZE: dict[str, Size] = {
    "synthetic": (3, 32, 32), "digits": (3, 32, 32), "cifar100": (3, 32, 32),
    "imagefolder": (3, 224, 224),
}
_CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_LUMA = (0.299, 0.587, 0.114)
_CIFAR_FILES = ("train", "test", "meta")
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError,
                  TypeError, AttributeError, ImportError, OverflowError, UnicodeDecodeError)


class DataError(SplitcError):
    """A user-facing data problem; the message names the problem and the fix."""


@dataclass(frozen=True)
class DataBundle:
    """Train/val datasets plus the class hierarchy they came with."""

    train: Dataset
    val: Dataset
    class_names: tuple[str, ...]
    superclass_of: tuple[int, ...] | None
    superclass_names: tuple[str, ...] | None
    input_size: Size
    spec: str
    # The training images with the validation transform (no augmentation): what class-mean
    # features are measured on (splitc.learn.groups); None where a loader cannot offer it.
    train_probe: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def describe_specs() -> str:
    """Short help text for ``--data`` (shown by the CLI)."""
    tr, va = synthetic.SIZES["default"]
    ftr, fva = synthetic.SIZES["fast"]
    return "\n".join([
        f"synthetic          built-in {synthetic.NUM_CLASSES}-class images "
        f"({synthetic.NUM_SUPERCLASSES} superclasses x {synthetic.CLASSES_PER_SUPERCLASS}), "
        f"{tr}+{va} per class, 3x32x32",
        f"synthetic:fast     same, {ftr}+{fva} per class (quick runs/tests)",
        "synthetic:tiny     same, {}+{} per class (smoke runs of the examples)".format(*synthetic.SIZES["tiny"]),
        f"synthetic:families built-in {families.NUM_CLASSES}-class images, one feature family per "
        f"superclass ({families.NUM_SUPERCLASSES} x {families.CLASSES_PER_SUPERCLASS}), "
        "{}+{} per class, 3x32x32".format(*families.SIZES["default"]),
        "synthetic:families-fast, synthetic:families-tiny  same, {}+{} and {}+{} per class".format(
            *families.SIZES["fast"], *families.SIZES["tiny"]),
        "digits             sklearn 8x8 digits (offline), 10 classes, 80/20 stratified split",
        "cifar100:PATH      official cifar-100-python pickles (train, test, meta) in PATH or "
        "PATH/cifar-100-python; val = test set; superclasses = coarse labels",
        "imagefolder:PATH   PATH/train/<class>/*, PATH/val/<class>/*, optional "
        'PATH/hierarchy.json {"class": "superclass"}; natural size 3x224x224',
    ])


def load_data(spec: str, input_size: Size | None = None, *, seed: int = 0,
              flip: bool = True, synthetic_size: str = "default") -> DataBundle:
    """Load the train and validation splits named by ``spec`` (see :func:`describe_specs`)."""
    kind, _, arg = spec.strip().partition(":")
    if kind not in _NATURAL_SIZE:
        raise DataError(f"unknown --data {spec!r}; accepted forms: synthetic, synthetic:fast, "
                        "synthetic:families, digits, cifar100:PATH, imagefolder:PATH")
    size = _check_size(input_size if input_size is not None else _NATURAL_SIZE[kind])
    if kind == "synthetic" and arg.startswith("families"):
        return _load_families(spec, arg, size, seed, flip)
    if kind == "synthetic":
        return _load_synthetic(spec, arg or synthetic_size, size, seed, flip)
    if kind == "digits":
        if arg:
            raise DataError(f"--data {spec!r}: 'digits' takes no argument; use --data digits")
        return _load_digits(spec, size, seed, flip)
    if not arg:
        raise DataError(f"--data {spec!r} needs a folder: use --data {kind}:PATH")
    path = Path(arg).expanduser()
    if kind == "cifar100":
        return _load_cifar100(spec, path, size, flip)
    return _load_imagefolder(spec, path, size, flip)


def _check_size(size: Sequence[int]) -> Size:
    """Validate ``input_size`` as (C, H, W) with C in {1, 3} and positive H, W."""
    if len(size) != 3 or any(not isinstance(s, int) or s <= 0 for s in size) or size[0] not in (1, 3):
        raise DataError(f"input size {tuple(size)!r} is invalid; give C,H,W with C 1 or 3, "
                        "e.g. 3,32,32")
    return (size[0], size[1], size[2])


# --- transforms ----------------------------------------------------------------------------

def _padding(size: Size) -> int:
    """Crop padding of the paper (4 px at 32x32), scaled with the image size."""
    return max(1, round(min(size[1], size[2]) / 8))


def _augment(size: Size, flip: bool) -> list[torch.nn.Module]:
    """Train-only augmentation on tensors: zero-padded random crop, optional h-flip."""
    steps: list[torch.nn.Module] = [T.RandomCrop((size[1], size[2]), padding=_padding(size))]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return steps


def _stats_for(stats: Stats, channels: int) -> Stats:
    """Adapt per-channel mean/std to the output channel count (grey <-> RGB)."""
    mean, std = stats
    if len(mean) == channels:
        return stats
    if channels == 3:
        return (mean * 3, std * 3)
    return ((float(np.dot(mean, _LUMA)),), (float(np.dot(std, _LUMA)),))


def _tensor_transform(native_hw: tuple[int, int], size: Size, stats: Stats,
                      train: bool, flip: bool) -> T.Compose:
    """Resize (bilinear, only if needed), augment (train only), normalise."""
    steps: list[torch.nn.Module] = []
    if native_hw != (size[1], size[2]):
        steps.append(T.Resize((size[1], size[2]), antialias=True))
    if train:
        steps += _augment(size, flip)
    mean, std = _stats_for(stats, size[0])
    steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by replication, RGB -> grey by luminance."""
    if x.shape[0] == channels:
        return x
    if channels == 3:
        return x.expand(3, -1, -1)
    return (x * torch.tensor(_LUMA).view(3, 1, 1)).sum(0, keepdim=True)


class ImageTensorDataset(Dataset):
    """In-memory uint8 images ``(N, C, h, w)``; converted, resized and augmented per item.

    Kept as uint8 at native size so even 224x224 outputs cost little memory.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: Size,
                 transform: T.Compose) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 (N, C, h, w) with one label each")
        self.images, self.labels = images, labels.long()
        self.channels, self.transform = size[0], transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = _match_channels(self.images[index].float() / 255.0, self.channels)
        return self.transform(x), int(self.labels[index])


def _channel_stats(images: torch.Tensor) -> Stats:
    """Per-channel mean/std of uint8 images in [0, 1] units (std floored to avoid /0)."""
    x = images.float().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(max(s, 1e-3) for s in x.std(1).tolist())


def _tensor_splits(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   size: Size, stats: Stats, flip: bool) -> tuple[Dataset, Dataset, Dataset]:
    """Wrap in-memory train/val tensors with their transforms; the third dataset is the
    training images without augmentation (``DataBundle.train_probe``)."""
    hw = (train[0].shape[2], train[0].shape[3])
    plain = _tensor_transform(hw, size, stats, False, flip)
    return (ImageTensorDataset(*train, size, _tensor_transform(hw, size, stats, True, flip)),
            ImageTensorDataset(*val, size, plain), ImageTensorDataset(*train, size, plain))


# --- synthetic and digits ------------------------------------------------------------------

def _load_synthetic(spec: str, variant: str, size: Size, seed: int, flip: bool) -> DataBundle:
    """The embedded hierarchical dataset of :mod:`splitc.data.synthetic`."""
    if variant not in synthetic.SIZES:
        raise DataError(f"unknown synthetic size {variant!r}; use one of "
                        + ", ".join(f"synthetic:{k}" for k in synthetic.SIZES))
    n_train, n_val = synthetic.SIZES[variant]
    train = synthetic.generate(n_train, seed, 0)
    val = synthetic.generate(n_val, seed, 1)
    tr, va, probe = _tensor_splits(train, val, size, _channel_stats(train[0]), flip)
    return DataBundle(tr, va, synthetic.CLASS_NAMES, synthetic.SUPERCLASS_OF,
                      synthetic.SUPERCLASS_NAMES, size, spec, probe)


def _load_families(spec: str, arg: str, size: Size, seed: int, flip: bool) -> DataBundle:
    """The capacity-bound embedded dataset of :mod:`splitc.data.families`
    (``synthetic:families``, ``synthetic:families-fast``, ``synthetic:families-tiny``)."""
    head, _, variant = arg.partition("-")
    variant = variant or "default"
    if head != "families" or variant not in families.SIZES:
        raise DataError(f"unknown families size {arg!r}; use one of synthetic:families, "
                        + ", ".join(f"synthetic:families-{k}" for k in families.SIZES if k != "default"))
    n_train, n_val = families.SIZES[variant]
    train = families.generate(n_train, seed, 0)
    val = families.generate(n_val, seed, 1)
    tr, va, probe = _tensor_splits(train, val, size, _channel_stats(train[0]), flip)
    return DataBundle(tr, va, families.CLASS_NAMES, families.SUPERCLASS_OF,
                      families.SUPERCLASS_NAMES, size, spec, probe)


def _load_digits(spec: str, size: Size, seed: int, flip: bool) -> DataBundle:
    """sklearn's bundled 8x8 digits with a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=0.2,
                                          stratify=digits.target, random_state=seed)
    x, y = torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64))
    train, val = (x[idx_train], y[idx_train]), (x[idx_val], y[idx_val])
    tr, va, probe = _tensor_splits(train, val, size, _channel_stats(train[0]), flip)
    names = tuple(str(n) for n in digits.target_names)
    return DataBundle(tr, va, names, None, None, size, spec, probe)


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


def _load_cifar100(spec: str, path: Path, size: Size, flip: bool) -> DataBundle:
    """Official CIFAR-100 pickles; superclasses from the coarse labels; val = test set."""
    folder = _cifar_dir(path)
    fine_names, coarse_names, superclass_of = _read_cifar(folder)
    try:
        splits = [_FolderCIFAR100(str(folder), train=t, download=False) for t in (True, False)]
    except (RuntimeError, ValueError) as err:
        raise DataError(f"cifar100 folder {folder} could not be read: {err}") from err
    tensors = [(torch.from_numpy(np.ascontiguousarray(s.data.transpose(0, 3, 1, 2))),
                torch.tensor(s.targets, dtype=torch.int64)) for s in splits]
    tr, va, probe = _tensor_splits(tensors[0], tensors[1], size, _CIFAR100_STATS, flip)
    return DataBundle(tr, va, fine_names, superclass_of, coarse_names, size, spec, probe)


# --- imagefolder ---------------------------------------------------------------------------

def _pil_transform(size: Size, train: bool, flip: bool) -> T.Compose:
    """Resize the short side, centre-crop to size, augment (train only), normalise."""
    steps: list[Any] = [T.Grayscale(1)] if size[0] == 1 else []
    steps += [T.Resize(max(size[1], size[2]), antialias=True), T.CenterCrop((size[1], size[2])),
              T.PILToTensor(), T.ConvertImageDtype(torch.float32)]
    if train:
        steps += _augment(size, flip)
    steps.append(T.Normalize(*_stats_for(_IMAGENET_STATS, size[0])))
    return T.Compose(steps)


def _image_folder(root: Path, size: Size, train: bool, flip: bool) -> tvd.ImageFolder:
    """One split as a torchvision ImageFolder, with errors turned into DataError."""
    if not root.is_dir():
        raise DataError(f"imagefolder split {root} does not exist; expected "
                        "PATH/train/<class>/* and PATH/val/<class>/*")
    try:
        return tvd.ImageFolder(str(root), transform=_pil_transform(size, train, flip))
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


def _load_imagefolder(spec: str, path: Path, size: Size, flip: bool) -> DataBundle:
    """``PATH/{train,val}/<class>/*`` with optional ``PATH/hierarchy.json``."""
    if not path.is_dir():
        raise DataError(f"imagefolder folder {path} does not exist; expected "
                        "PATH/train/<class>/* and PATH/val/<class>/*")
    train = _image_folder(path / "train", size, True, flip)
    val = _image_folder(path / "val", size, False, flip)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"imagefolder {path}: train and val class folders differ (only in "
                        f"train: {only_train[:5]}, only in val: {only_val[:5]}); use the same names")
    superclass_of, superclass_names = None, None
    if (path / "hierarchy.json").is_file():
        superclass_of, superclass_names = _read_hierarchy(path / "hierarchy.json", train.classes)
    probe = _image_folder(path / "train", size, False, flip)
    return DataBundle(train, val, tuple(train.classes), superclass_of, superclass_names, size, spec, probe)
