"""Built-in models: the SplitNet backbones (WRN, CIFAR ResNets) and tiny test nets.

``BUILTINS`` is the single registry the CLI and tests look names up in, so that a model's
default input size and its known split presets travel with its factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from .resnet_cifar import resnet20, resnet32, resnet56
from .testnets import TESTNETS
from .wrn import WideResNet, wrn16_8

__all__ = ["BuiltinModel", "BUILTINS", "build_builtin", "WideResNet", "wrn16_8",
           "resnet20", "resnet32", "resnet56"]


@dataclass(frozen=True)
class BuiltinModel:
    """A registered factory with its default (C, H, W) input and named split presets."""

    factory: Callable[..., nn.Module]
    default_input_size: tuple[int, int, int]
    description: str
    presets: tuple[str, ...] = ()


_CIFAR = (3, 32, 32)
_TINY = (3, 16, 16)


def _registry() -> dict[str, BuiltinModel]:
    reg: dict[str, BuiltinModel] = {
        "wrn16_8": BuiltinModel(wrn16_8, _CIFAR, "WRN-16-8 pre-activation wide ResNet "
                                "(SplitNet CIFAR-100 model, 11.0M params)",
                                ("fc", "shallow", "deep", "hier")),
        "resnet20": BuiltinModel(resnet20, _CIFAR, "CIFAR ResNet-20, option-B shortcuts"),
        "resnet32": BuiltinModel(resnet32, _CIFAR, "CIFAR ResNet-32, option-B shortcuts"),
        "resnet56": BuiltinModel(resnet56, _CIFAR, "CIFAR ResNet-56, option-B shortcuts"),
    }
    for name, factory in TESTNETS.items():
        doc = (factory.__doc__ or name).strip().splitlines()[0]
        reg[name] = BuiltinModel(factory, _TINY, f"test net: {doc}")
    return reg


BUILTINS: dict[str, BuiltinModel] = _registry()


def build_builtin(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Instantiate a built-in by name; unknown names list the valid ones."""
    try:
        entry = BUILTINS[name]
    except KeyError:
        raise KeyError(f"unknown built-in model {name!r}; "
                       f"choose from {', '.join(sorted(BUILTINS))}") from None
    return entry.factory(num_classes=num_classes, **kwargs)
