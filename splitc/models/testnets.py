"""Tiny CNNs for tests: each one isolates one channel-coupling construct of docs/METHOD.md §1.

They run in milliseconds on CPU at 3x16x16 (and also at 3x32x32: heads use adaptive pooling),
and all pass ``torch.fx.symbolic_trace``. ``tiny_mixed`` puts every construct in one graph so
the splitter's space analysis is exercised on their interactions, not only one at a time.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .wrn import init_weights

__all__ = [
    "channel_shuffle", "tiny_seq", "tiny_residual", "tiny_concat", "tiny_depthwise",
    "tiny_grouped", "tiny_se", "tiny_shuffle", "tiny_mixed", "TESTNETS",
]


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
        act: bool = True) -> nn.Sequential:
    """conv-bn[-relu]: the unit every tiny net is built from."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet shuffle via view/transpose/view (a fixed channel permutation)."""
    n, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3)
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class GapHead(nn.Module):
    """Global average pool → flatten → linear."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class TinySeq(nn.Module):
    """conv-bn-relu-conv-pool-flatten(C×4×4)-linear: flatten couples c to its 16 features."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(12 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResBlock(nn.Module):
    """Basic residual block; 1x1 conv+BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(cin, cout, 3, stride), cbr(cout, cout, 3, act=False))
        self.proj = cbr(cin, cout, 1, stride, act=False) if (cin != cout or stride != 1) else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.proj is None else self.proj(x)
        return self.relu(self.body(x) + skip)


class TinyResidual(nn.Module):
    """Identity add (ties x to the block's output) then a projected add."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.res1 = ResBlock(8, 8)
        self.res2 = ResBlock(8, 16, stride=2)
        self.head = GapHead(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.res2(self.res1(self.stem(x))))


class InceptionCat(nn.Module):
    """Three parallel branches concatenated on channels (a composite space)."""

    def __init__(self, cin: int, c1: int, c3: int, cp: int) -> None:
        super().__init__()
        self.b1 = cbr(cin, c1, 1)
        self.b3 = cbr(cin, c3, 3)
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), cbr(cin, cp, 1))
        self.out_channels = c1 + c3 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.bp(x)], dim=1)


class DenseCat(nn.Module):
    """DenseNet layer: cat([x, f(x)]) — the input space reappears inside the output."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.f = cbr(cin, growth, 3)
        self.out_channels = cin + growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.f(x)], 1)


class TinyConcat(nn.Module):
    """Inception-like cat, DenseNet-like cat, then a conv reading the concatenation."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.incept = InceptionCat(8, 4, 6, 2)
        self.dense = DenseCat(self.incept.out_channels, 4)
        self.conv = cbr(self.dense.out_channels, 16, 1)
        self.head = GapHead(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.dense(self.incept(self.stem(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand → depthwise 3x3 → 1x1 project (+ x when shapes match)."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1) -> None:
        super().__init__()
        hid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid),
                                    nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
                                nn.BatchNorm2d(hid), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_res else y


class TinyDepthwise(nn.Module):
    """Inverted residual (depthwise, multiplier 1), then a depthwise conv with multiplier 2."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.ir = InvertedResidual(8, 8, expand=2)
        self.dw2 = cbr(8, 16, 3, stride=2, groups=8)  # groups=C_in, out=2*C_in
        self.pw = cbr(16, 16, 1)
        self.head = GapHead(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw2(self.ir(self.stem(x)))))


class ResNeXtBlock(nn.Module):
    """1x1 → grouped 3x3 (groups=g) → 1x1, added to the input: grouped conv inside a tie."""

    def __init__(self, c: int, mid: int, groups: int) -> None:
        super().__init__()
        self.reduce = cbr(c, mid, 1)
        self.grouped = cbr(mid, mid, 3, groups=groups)
        self.expand = cbr(mid, c, 1, act=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.expand(self.grouped(self.reduce(x))))


class TinyGrouped(nn.Module):
    """ResNeXt-like residual block with a groups=4 conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.block = ResNeXtBlock(16, 16, groups=4)
        self.head = GapHead(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class SqueezeExcite(nn.Module):
    """pool → 1x1 conv → relu → 1x1 conv → sigmoid → x * gate (gate space tied to x)."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class TinySE(nn.Module):
    """conv → squeeze-excite gate → head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.conv = cbr(16, 16)
        self.se = SqueezeExcite(16, 4)
        self.head = GapHead(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.conv(self.stem(x))))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: chunk(2) → branch on one half → cat → channel_shuffle(2)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(cbr(half, half, 1), cbr(half, half, 3, groups=half, act=False),
                                    cbr(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], dim=1), 2)


class TinyShuffle(nn.Module):
    """stem → two shuffle units → head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.unit1 = ShuffleUnit(16)
        self.unit2 = ShuffleUnit(16)
        self.head = GapHead(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unit2(self.unit1(self.stem(x))))


class TinyMixed(nn.Module):
    """Every construct in one graph, ending in a flatten(C×2×2) → fc → relu → fc head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.res = ResBlock(8, 16, stride=2)               # projected residual add
        self.incept = InceptionCat(16, 4, 8, 4)            # concat: 16 channels
        self.ir = InvertedResidual(16, 16, expand=2)       # depthwise, multiplier 1
        self.dw2 = cbr(16, 32, 3, groups=16)               # depthwise, multiplier 2
        self.rx = ResNeXtBlock(32, 16, groups=4)           # grouped conv in a residual
        self.se = SqueezeExcite(32, 8)                     # gate
        self.shuffle = ShuffleUnit(32)                     # chunk / cat / shuffle
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(32 * 2 * 2, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ir(self.incept(self.res(self.stem(x))))
        x = self.shuffle(self.se(self.rx(self.dw2(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(self.relu(self.fc1(x)))


def _make(cls: type[nn.Module], num_classes: int) -> nn.Module:
    model = cls(num_classes)
    init_weights(model)
    return model


def tiny_seq(num_classes: int = 10) -> nn.Module:
    """Sequential net whose linear reads a flattened C×4×4 map (no global pooling)."""
    return _make(TinySeq, num_classes)


def tiny_residual(num_classes: int = 10) -> nn.Module:
    """Residual adds, identity and 1x1-projected."""
    return _make(TinyResidual, num_classes)


def tiny_concat(num_classes: int = 10) -> nn.Module:
    """Channel concatenation (Inception- and DenseNet-style), then a conv."""
    return _make(TinyConcat, num_classes)


def tiny_depthwise(num_classes: int = 10) -> nn.Module:
    """Depthwise convs with channel multiplier 1 (inverted residual) and 2."""
    return _make(TinyDepthwise, num_classes)


def tiny_grouped(num_classes: int = 10) -> nn.Module:
    """Grouped conv (groups=4) inside a residual block."""
    return _make(TinyGrouped, num_classes)


def tiny_se(num_classes: int = 10) -> nn.Module:
    """Squeeze-excite gate multiplied back into its input."""
    return _make(TinySE, num_classes)


def tiny_shuffle(num_classes: int = 10) -> nn.Module:
    """Channel shuffle (view/transpose/view) with chunk and cat."""
    return _make(TinyShuffle, num_classes)


def tiny_mixed(num_classes: int = 10) -> nn.Module:
    """All of the constructs above in one net."""
    return _make(TinyMixed, num_classes)


TESTNETS = {f.__name__: f for f in (tiny_seq, tiny_residual, tiny_concat, tiny_depthwise,
                                    tiny_grouped, tiny_se, tiny_shuffle, tiny_mixed)}
