"""What every loader returns and shares: the bundle, the data error, the tensor transforms.

Every form yields ``(float tensor C,H,W, int label)`` pairs at exactly ``input_size``,
normalised per channel. The training split gets the SplitNet paper's CIFAR augmentation
(random crop with zero padding of about size/8, random horizontal flip); validation is not
augmented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:   # torchvision costs 3 s of import (its ops load torch._dynamo): only where data is built
    from torchvision import transforms as T

from splitc.core.errors import SplitcError
from splitc.data.sizes import Size

Stats = tuple[tuple[float, ...], tuple[float, ...]]
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LUMA = (0.299, 0.587, 0.114)


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


def check_size(size: Sequence[int]) -> Size:
    """Validate ``input_size`` as (C, H, W) with C in {1, 3} and positive H, W."""
    if len(size) != 3 or any(not isinstance(s, int) or s <= 0 for s in size) or size[0] not in (1, 3):
        raise DataError(f"input size {tuple(size)!r} is invalid; give C,H,W with C 1 or 3, "
                        "e.g. 3,32,32")
    return (size[0], size[1], size[2])


# --- transforms ----------------------------------------------------------------------------

def padding(size: Size) -> int:
    """Crop padding of the paper (4 px at 32x32), scaled with the image size."""
    return max(1, round(min(size[1], size[2]) / 8))


def augment(size: Size, flip: bool) -> list[torch.nn.Module]:
    """Train-only augmentation on tensors: zero-padded random crop, optional h-flip."""
    from torchvision import transforms as T

    steps: list[torch.nn.Module] = [T.RandomCrop((size[1], size[2]), padding=padding(size))]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return steps


def stats_for(stats: Stats, channels: int) -> Stats:
    """Adapt per-channel mean/std to the output channel count (grey <-> RGB)."""
    mean, std = stats
    if len(mean) == channels:
        return stats
    if channels == 3:
        return (mean * 3, std * 3)
    return ((float(np.dot(mean, LUMA)),), (float(np.dot(std, LUMA)),))


def tensor_transform(native_hw: tuple[int, int], size: Size, stats: Stats,
                      train: bool, flip: bool) -> T.Compose:
    """Resize (bilinear, only if needed), augment (train only), normalise."""
    from torchvision import transforms as T

    steps: list[torch.nn.Module] = []
    if native_hw != (size[1], size[2]):
        steps.append(T.Resize((size[1], size[2]), antialias=True))
    if train:
        steps += augment(size, flip)
    mean, std = stats_for(stats, size[0])
    steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by replication, RGB -> grey by luminance."""
    if x.shape[0] == channels:
        return x
    if channels == 3:
        return x.expand(3, -1, -1)
    return (x * torch.tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True)


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
        x = match_channels(self.images[index].float() / 255.0, self.channels)
        return self.transform(x), int(self.labels[index])


NORMALIZE_FORMS = ("imagenet", "cifar100", "data")
NORMALIZE_HELP = ("Input normalisation: imagenet (torchvision/timm weights), cifar100, data (this data's "
                  "own per-channel mean/std), or MEAN/STD as comma lists, e.g. 0.5,0.5,0.5/0.25,0.25,0.25. "
                  "Default: data for synthetic, digits and a cifar100 folder uses cifar100's; imagefolder "
                  "uses imagenet's. A model trained elsewhere needs the statistics it was trained with.")


def pick_stats(normalize: str | None, default: Stats | None, images: torch.Tensor | None) -> Stats:
    """The mean/std a data form normalises with: its own default, or ``--normalize``'s
    (``data`` measures ``images``; a form that reads files lazily passes None and refuses it)."""
    if normalize is None and default is not None:
        return default
    if normalize in (None, "data"):
        if images is None:
            raise DataError("--normalize data needs the images in memory; this data form reads them lazily: "
                            "give --normalize imagenet or MEAN/STD.")
        return channel_stats(images)
    if normalize == "imagenet":
        return IMAGENET_STATS
    if normalize == "cifar100":
        return CIFAR100_STATS
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in normalize.split("/"))
    except ValueError:
        raise DataError(f"--normalize {normalize!r}: give {', '.join(NORMALIZE_FORMS)} or MEAN/STD as comma "
                        "lists, e.g. 0.485,0.456,0.406/0.229,0.224,0.225.") from None
    if len(mean) != len(std) or min(std) <= 0:
        raise DataError(f"--normalize {normalize!r}: MEAN and STD need as many values, and STD > 0.")
    return mean, std


def channel_stats(images: torch.Tensor) -> Stats:
    """Per-channel mean/std of uint8 images in [0, 1] units (std floored to avoid /0)."""
    x = images.float().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(max(s, 1e-3) for s in x.std(1).tolist())


def tensor_splits(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   size: Size, stats: Stats, flip: bool) -> tuple[Dataset, Dataset, Dataset]:
    """Wrap in-memory train/val tensors with their transforms; the third dataset is the
    training images without augmentation (``DataBundle.train_probe``)."""
    hw = (train[0].shape[2], train[0].shape[3])
    plain = tensor_transform(hw, size, stats, False, flip)
    return (ImageTensorDataset(*train, size, tensor_transform(hw, size, stats, True, flip)),
            ImageTensorDataset(*val, size, plain), ImageTensorDataset(*train, size, plain))
