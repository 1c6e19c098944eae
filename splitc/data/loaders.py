"""Datasets for ``splitc learn --data SPEC``: parse the spec, load both splits, augment.

Every form yields ``(float tensor C,H,W, int label)`` pairs at exactly ``input_size``,
normalised per channel.  The training split gets the SplitNet paper's CIFAR augmentation
(random crop with zero padding of about size/8, random horizontal flip); validation is not
augmented.  See :func:`describe_specs` for the accepted forms.  Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from splitc.data import families, synthetic
from splitc.data.bundle import DataBundle, DataError, check_size, pick_stats, tensor_splits
from splitc.data.mnist import FORMATS as MNIST_FORMATS
from splitc.data.mnist import NATURAL_SIZE as MNIST_SIZE
from splitc.data.mnist import load_mnist_format
from splitc.data.sizes import Size

__all__ = ["DataBundle", "DataError", "describe_specs", "load_data"]

_NATURAL_SIZE: dict[str, Size] = {
    "synthetic": (3, 32, 32), "digits": (3, 32, 32), "cifar100": (3, 32, 32),
    "imagefolder": (3, 224, 224), **{kind: MNIST_SIZE for kind in MNIST_FORMATS},
}
FORMS = ("synthetic, synthetic:fast, synthetic:families, digits, fashion-mnist[:DIR][@N], mnist:DIR[@N], "
         "cifar100:PATH, imagefolder:PATH")


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
        "fashion-mnist[:DIR][@N]  Fashion-MNIST's idx files (.gz or not) in DIR, DIR/FashionMNIST/raw, or "
        "Debian's /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist); 60,000+10,000 "
        "28x28 grey images, 10 garments in 4 superclasses; val = test set; @N: the first N training images "
        "per class; natural size 3x28x28 (grey replicated; --input-size 1,28,28 for a 1-channel model)",
        "mnist:DIR[@N]      MNIST's idx files, the same layout (torchvision: DIR/MNIST/raw); no flips",
        "cifar100:PATH      official cifar-100-python pickles (train, test, meta) in PATH or "
        "PATH/cifar-100-python; val = test set; superclasses = coarse labels",
        "imagefolder:PATH   PATH/train/<class>/*, PATH/val/<class>/*, optional "
        'PATH/hierarchy.json {"class": "superclass"}; natural size 3x224x224',
    ])


def load_data(spec: str, input_size: Size | None = None, *, seed: int = 0,
              flip: bool = True, synthetic_size: str = "default", normalize: str | None = None) -> DataBundle:
    """Load the train and validation splits named by ``spec`` (see :func:`describe_specs`),
    normalised by the form's default statistics or ``normalize`` (``bundle.pick_stats``)."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.partition("@")[0]     # fashion-mnist@N: the subset suffix without a folder
    if kind not in _NATURAL_SIZE:
        raise DataError(f"unknown --data {spec!r}; accepted forms: {FORMS}")
    size = check_size(input_size if input_size is not None else _NATURAL_SIZE[kind])
    if kind in MNIST_FORMATS:
        return load_mnist_format(spec, size, flip, normalize)
    if kind == "synthetic" and arg.startswith("families"):
        return _load_families(spec, arg, size, seed, flip, normalize)
    if kind == "synthetic":
        return _load_synthetic(spec, arg or synthetic_size, size, seed, flip, normalize)
    if kind == "digits":
        if arg:
            raise DataError(f"--data {spec!r}: 'digits' takes no argument; use --data digits")
        return _load_digits(spec, size, seed, flip, normalize)
    if not arg:
        raise DataError(f"--data {spec!r} needs a folder: use --data {kind}:PATH")
    path = Path(arg).expanduser()
    from splitc.data.folders import load_cifar100, load_imagefolder   # torchvision's readers: loaded when used

    if kind == "cifar100":
        return load_cifar100(spec, path, size, flip, normalize)
    return load_imagefolder(spec, path, size, flip, normalize)


# --- synthetic and digits ------------------------------------------------------------------

def _load_synthetic(spec: str, variant: str, size: Size, seed: int, flip: bool,
                    normalize: str | None) -> DataBundle:
    """The embedded hierarchical dataset of :mod:`splitc.data.synthetic`."""
    if variant not in synthetic.SIZES:
        raise DataError(f"unknown synthetic size {variant!r}; use one of "
                        + ", ".join(f"synthetic:{k}" for k in synthetic.SIZES))
    return _embedded(synthetic, variant, spec, size, seed, flip, normalize)


def _load_families(spec: str, arg: str, size: Size, seed: int, flip: bool, normalize: str | None) -> DataBundle:
    """The capacity-bound embedded dataset of :mod:`splitc.data.families`
    (``synthetic:families``, ``synthetic:families-fast``, ``synthetic:families-tiny``)."""
    head, _, variant = arg.partition("-")
    variant = variant or "default"
    if head != "families" or variant not in families.SIZES:
        raise DataError(f"unknown families size {arg!r}; use one of synthetic:families, "
                        + ", ".join(f"synthetic:families-{k}" for k in families.SIZES if k != "default"))
    return _embedded(families, variant, spec, size, seed, flip, normalize)


def _embedded(data, variant: str, spec: str, size: Size, seed: int, flip: bool,
              normalize: str | None) -> DataBundle:
    """A bundle of an embedded generator module (``synthetic`` or ``families``): train is
    stream 0, validation stream 1, so they never share images."""
    n_train, n_val = data.SIZES[variant]
    train = data.generate(n_train, seed, 0)
    val = data.generate(n_val, seed, 1)
    tr, va, probe = tensor_splits(train, val, size, pick_stats(normalize, None, train[0]), flip)
    return DataBundle(tr, va, data.CLASS_NAMES, data.SUPERCLASS_OF, data.SUPERCLASS_NAMES, size, spec, probe)


def _load_digits(spec: str, size: Size, seed: int, flip: bool, normalize: str | None) -> DataBundle:
    """sklearn's bundled 8x8 digits with a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=0.2,
                                          stratify=digits.target, random_state=seed)
    x, y = torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64))
    train, val = (x[idx_train], y[idx_train]), (x[idx_val], y[idx_val])
    tr, va, probe = tensor_splits(train, val, size, pick_stats(normalize, None, train[0]), flip)
    names = tuple(str(n) for n in digits.target_names)
    return DataBundle(tr, va, names, None, None, size, spec, probe)
