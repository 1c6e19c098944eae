"""MNIST-format data sets on disk: ``--data fashion-mnist[:DIR][@N]`` and ``mnist[:DIR][@N]``.

Both ship as four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``): 60,000
training and 10,000 test images, 28x28 grayscale, 10 classes. The test images are the
validation set. DIR may hold the files itself or in torchvision's ``DIR/FashionMNIST/raw``
(``DIR/MNIST/raw``) layout; without DIR, Fashion-MNIST is read from Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). ``@N`` keeps the first N
training images of every class (a stated subset for quick tables); validation stays whole.

Grayscale images run on 3-channel models by replication (the natural size is 3x28x28); a
model built for one channel takes ``--input-size 1,28,28``. Nothing is downloaded here.

Fashion-MNIST's superclasses (used for ``superclass_ari``) are the garments' kinds: tops
(T-shirt/top, pullover, coat, shirt), one-piece and lower-body garments (trouser, dress),
footwear (sandal, sneaker, ankle boot), and bags. MNIST has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splitc.data.bundle import DataBundle, DataError, pick_stats, tensor_splits
from splitc.data.idx import read_idx
from splitc.data.sizes import Size

NATURAL_SIZE: Size = (3, 28, 28)
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": ("train-images-idx3-ubyte", 3), "train_labels": ("train-labels-idx1-ubyte", 1),
         "val_images": ("t10k-images-idx3-ubyte", 3), "val_labels": ("t10k-labels-idx1-ubyte", 1)}


@dataclass(frozen=True)
class MnistFormat:
    """One MNIST-format data set: its names, where it usually lives, how to get it."""

    kind: str                              # the --data form
    torchvision_folder: str                # DIR/<this>/raw in torchvision's layout
    class_names: tuple[str, ...]
    superclass_of: tuple[int, ...] | None
    superclass_names: tuple[str, ...] | None
    default_dir: Path | None
    flip: bool                             # a mirrored digit is not the same digit
    how_to_get: str


FASHION = MnistFormat(
    kind="fashion-mnist", torchvision_folder="FashionMNIST",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
    superclass_of=(0, 1, 0, 1, 0, 2, 0, 2, 3, 2),
    superclass_names=("tops", "trousers and dresses", "footwear", "bags"),
    default_dir=DEBIAN_FASHION, flip=True,
    how_to_get="install Debian's package (apt-get install dataset-fashion-mnist) and use --data fashion-mnist, "
               "or fetch it with torchvision.datasets.FashionMNIST(ROOT, download=True) and use "
               "--data fashion-mnist:ROOT")
MNIST = MnistFormat(
    kind="mnist", torchvision_folder="MNIST", class_names=tuple(str(d) for d in range(10)),
    superclass_of=None, superclass_names=None, default_dir=None, flip=False,
    how_to_get="fetch it with torchvision.datasets.MNIST(ROOT, download=True) and use --data mnist:ROOT, "
               "or put the four idx files in a folder DIR and use --data mnist:DIR")
FORMATS = {f.kind: f for f in (FASHION, MNIST)}


def parse(spec: str) -> tuple[MnistFormat, Path | None, int | None]:
    """``KIND[:DIR][@N]`` -> (format, DIR or None, N or None)."""
    head, at, per_class = spec.strip().partition("@")
    kind, _, folder = head.partition(":")
    fmt = FORMATS[kind]
    count = None
    if at:
        if not per_class.isdigit() or int(per_class) < 1:
            raise DataError(f"--data {spec!r}: @N keeps N training images per class; give a whole number "
                            f"at least 1, e.g. {kind}@1000")
        count = int(per_class)
    return fmt, (Path(folder).expanduser() if folder else None), count


def find_files(fmt: MnistFormat, folder: Path | None) -> dict[str, Path]:
    """The four idx files, gzipped or not, in ``folder``, ``folder/<Name>/raw`` or the default place."""
    roots = [folder, folder / fmt.torchvision_folder / "raw"] if folder is not None else [fmt.default_dir]
    for root in (r for r in roots if r is not None and r.is_dir()):
        found = {}
        for key, (stem, _) in FILES.items():
            hits = [root / name for name in (stem, stem + ".gz") if (root / name).is_file()]
            if hits:
                found[key] = hits[0]
        if len(found) == len(FILES):
            return found
        if found:
            missing = ", ".join(FILES[k][0] for k in FILES if k not in found)
            raise DataError(f"{fmt.kind} folder {root} lacks {missing} (.gz or not): {fmt.how_to_get}")
    where = " or ".join(str(r) for r in roots if r is not None) or "no folder given"
    raise DataError(f"{fmt.kind} not found ({where} holds no idx files): {fmt.how_to_get}")


def read_split(files: dict[str, Path], split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (N, 28, 28) and labels (N,), checked against each other."""
    images = read_idx(files[f"{split}_images"], 3)
    labels = read_idx(files[f"{split}_labels"], 1)
    if len(images) != len(labels):
        raise DataError(f"{files[f'{split}_images']} holds {len(images)} images but "
                        f"{files[f'{split}_labels']} {len(labels)} labels; fetch both again")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{files[f'{split}_labels']} has label {int(labels.max())}; this data set has "
                        f"{num_classes} classes: is it the right file?")
    return images, labels


def first_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first ``count`` images of every class, in file order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:count] for c in np.unique(labels)])
    return np.sort(keep)


def load_mnist_format(spec: str, size: Size, flip: bool, normalize: str | None) -> DataBundle:
    """The bundle of ``fashion-mnist[:DIR][@N]`` or ``mnist[:DIR][@N]`` (see the module docstring)."""
    fmt, folder, per_class = parse(spec)
    files = find_files(fmt, folder)
    (x_train, y_train), (x_val, y_val) = (read_split(files, s, len(fmt.class_names)) for s in ("train", "val"))
    if per_class is not None:
        keep = first_per_class(y_train, per_class)
        x_train, y_train = x_train[keep], y_train[keep]
    as_tensors = lambda x, y: (torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)))  # noqa: E731
    train, val = as_tensors(x_train, y_train), as_tensors(x_val, y_val)
    tr, va, probe = tensor_splits(train, val, size, pick_stats(normalize, None, train[0]), flip and fmt.flip)
    return DataBundle(tr, va, fmt.class_names, fmt.superclass_of, fmt.superclass_names, size, spec, probe)
