"""Data a library caller hands over (``splitc.SplitNet``'s ``probe=`` and ``val=``), as the
datasets the recipe reads (class means, evaluation).

Taken: a Dataset of ``(image, label)`` samples, a DataLoader (its dataset; a loader over an
IterableDataset is read once), or any iterable of ``(x, y)`` batches (a list of batches, a
generator: read once and kept as one TensorDataset). Anything else (a tensor, a number, a
string, a mapping, samples of another image shape) is refused here, at construction, in one line
that names the argument, not part-way through the caller's loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Number
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from splitc.core.errors import SplitcError

TAKES = "a Dataset of (image, label) pairs, a DataLoader, or an iterable of (x, y) batches"


def given_dataset(data: Any, name: str, image_shape: tuple[int, ...], num_classes: int) -> Dataset | None:
    """``data`` (see the module docstring) as a Dataset of ``(image, label)`` samples whose images
    have ``image_shape`` (C, H, W) and whose labels are class indices; None stays None."""
    if data is None:
        return None
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            return _from_batches(data, name, image_shape, num_classes)
        data = data.dataset
    sized = hasattr(data, "__getitem__") and hasattr(data, "__len__")
    if isinstance(data, (torch.Tensor, np.ndarray, str, bytes, Number, Mapping)) or not (sized or isinstance(data, Iterable)):
        raise SplitcError(f"{name}= takes {TAKES}, not {_what(data)}.")
    if isinstance(data, IterableDataset) or not sized:
        return _from_batches(data, name, image_shape, num_classes)
    if len(data) == 0:
        raise SplitcError(f"{name}= is empty; give it {TAKES}.")
    x, _ = _pair(data[0], name, "its first item")
    if x.dim() == len(image_shape) + 1 and not isinstance(data, Dataset):   # a list of batches
        return _from_batches(data, name, image_shape, num_classes)
    _check_sample(data[0], name, image_shape, num_classes)
    return data


def _from_batches(batches: Iterable, name: str, image_shape: tuple[int, ...], num_classes: int) -> TensorDataset:
    xs, ys = [], []
    for i, batch in enumerate(batches):
        x, y = _pair(batch, name, f"batch {i}")
        if tuple(x.shape[1:]) != tuple(image_shape) or y.dim() != 1 or len(y) != len(x):
            raise SplitcError(f"{name}= batch {i} holds x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}; "
                              f"each batch must be x (B, {', '.join(map(str, image_shape))}), as example_inputs, "
                              "and y (B,) class indices.")
        _check_labels(y, name, f"batch {i}", num_classes)
        xs.append(x.detach().cpu())
        ys.append(y.detach().cpu().long())
    if not xs:
        raise SplitcError(f"{name}= gave no batches; give it {TAKES}.")
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def _pair(item: Any, name: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], torch.Tensor):
        raise SplitcError(f"{name}= {where} is {_what(item)}; it must be an (image tensor, label) pair or an "
                          f"(x, y) batch of tensors ({name}= takes {TAKES}).")
    label = item[1]
    if isinstance(label, bool) or not isinstance(label, (int, np.integer, torch.Tensor)):
        raise SplitcError(f"{name}= {where} has a label of type {type(label).__name__}; labels are class indices.")
    return item[0], torch.as_tensor(label)


def _check_sample(item: Any, name: str, image_shape: tuple[int, ...], num_classes: int) -> None:
    x, y = _pair(item, name, "its first item")
    if tuple(x.shape) != tuple(image_shape) or y.dim() != 0:
        raise SplitcError(f"{name}= gives images of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)}; "
                          f"the model takes {tuple(image_shape)} (example_inputs without the batch) and one class "
                          "index per image.")
    _check_labels(y, name, "its first item", num_classes)


def _check_labels(y: torch.Tensor, name: str, where: str, num_classes: int) -> None:
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise SplitcError(f"{name}= {where} has {y.dtype} labels; labels are class indices (integers).")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise SplitcError(f"{name}= {where} has a label outside 0..{num_classes - 1} (the model's "
                          f"{num_classes} classes).")


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
