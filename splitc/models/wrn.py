"""Pre-activation Wide ResNet (Zagoruyko & Komodakis 2016), the SplitNet CIFAR backbone.

Module names are part of the contract: split presets and reports refer to them
(``block3.0.conv1``, ``bn``, ``fc`` ...), so they are kept stable and readable.
The model is free of tensor-dependent Python control flow so that
``torch.fx.symbolic_trace`` sees the whole graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["WideBlock", "WideResNet", "wrn16_8", "init_weights"]


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, zero biases: the reference WRN initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU → conv3x3(s) → BN-ReLU → [dropout] → conv3x3.

    When the shape changes, the 1x1 ``shortcut`` conv reads the BN-ReLU'd input, as in
    the reference implementation; otherwise ``shortcut`` is None and the raw input is added.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        needs_proj = in_planes != out_planes or stride != 1
        self.shortcut: nn.Module | None = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if needs_proj else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.drop(self.relu2(self.bn2(y))))
        # `self.shortcut is None` is a structural (not tensor) branch: fx-safe.
        residual = x if self.shortcut is None else self.shortcut(o)
        return y + residual


class WideResNet(nn.Module):
    """WRN-depth-width: conv1 → block1/2/3 (16k, 32k, 64k ch.) → BN-ReLU → GAP → fc."""

    def __init__(self, depth: int = 16, width: int = 8, num_classes: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._stage(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._stage(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._stage(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_planes: int, out_planes: int, n: int, stride: int,
               dropout: float) -> nn.Sequential:
        """n blocks; only the first one strides and (maybe) projects."""
        blocks = [WideBlock(in_planes if i == 0 else out_planes, out_planes,
                            stride if i == 0 else 1, dropout) for i in range(n)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = self.pool(self.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


def wrn16_8(num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    """WRN-16-8, the SplitNet CIFAR-100 model (11.0M params, docs/METHOD.md §4)."""
    return WideResNet(depth=16, width=8, num_classes=num_classes, dropout=dropout)
