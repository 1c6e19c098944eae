"""CIFAR ResNets of He et al. 2016 (ResNet-20/32/56), torchvision-style names.

Shortcut choice: option B (1x1 conv + BN projection) wherever the shape changes. The paper's
CIFAR nets use option A (stride-2 subsample + zero-padded channels), but that shortcut ties
only half of the output channels to the input and leaves the rest as constant zeros, which
has no clean per-channel group assignment for a channel split. Option B costs ~2.8K extra
params on ResNet-20 (272,474 vs 269,722) and is an ordinary weight layer the splitter handles.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .wrn import init_weights

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56"]


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-bn-relu-conv-bn, + shortcut, relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """conv1-bn1-relu → layer1/2/3 (16/32/64 ch., n blocks each) → GAP → fc."""

    def __init__(self, depth: int, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        w1, w2, w3 = widths   # narrower widths: the equal-params anchor of benchmarks/anchors.py
        self.depth = depth
        self.conv1 = nn.Conv2d(3, w1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._layer(w1, w1, n, 1)
        self.layer2 = self._layer(w1, w2, n, 2)
        self.layer3 = self._layer(w2, w3, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        init_weights(self)

    @staticmethod
    def _layer(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        """n blocks; the first strides and projects when the shape changes."""
        return nn.Sequential(*[BasicBlock(in_planes if i == 0 else planes, planes,
                                          stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (3 blocks per stage), ~0.27M params."""
    return CifarResNet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (5 blocks per stage), ~0.46M params."""
    return CifarResNet(32, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (9 blocks per stage), ~0.85M params."""
    return CifarResNet(56, num_classes)
