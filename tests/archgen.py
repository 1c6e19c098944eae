"""Hypothesis strategy for random small CNNs built from SplitNet's channel-coupling constructs.

``architectures()`` draws an :class:`Arch`: a stem conv, 1..5 blocks and a head. Each block is
a frozen dataclass holding only plain numbers, so hypothesis shrinks towards short, narrow nets
and reports a readable one-line description such as
``Arch(in=3x12x9, stem=8, blocks=[Conv(8->5,k3,s2), SE(5,h=2)], head=Gap, classes=4)``.
Every generated model is fx-traceable and runs on a batch of 2 (checked in test_models.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn as nn
from hypothesis import strategies as st

from splitc.models.testnets import cbr, channel_shuffle

__all__ = ["Arch", "architectures", "BLOCK_KINDS"]

CH = st.integers(4, 16)


# --------------------------------------------------------------------------- modules


class Residual(nn.Module):
    """body(x) + (x or proj(x)), relu."""

    def __init__(self, body: nn.Module, proj: nn.Module | None) -> None:
        super().__init__()
        self.body, self.proj, self.relu = body, proj, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.proj is None else self.proj(x)
        return self.relu(self.body(x) + skip)


class Concat(nn.Module):
    """Parallel branches concatenated along channels."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class Gate(nn.Module):
    """Squeeze-excite: x * sigmoid(conv(relu(conv(pool(x)))))."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.relu = nn.Conv2d(c, hidden, 1), nn.ReLU()
        self.fc2, self.sig = nn.Conv2d(hidden, c, 1), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sig(self.fc2(self.relu(self.fc1(self.pool(x)))))


class Shuffle(nn.Module):
    """chunk(2) → branch on second half → cat → channel_shuffle(2)."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], dim=1), 2)


# --------------------------------------------------------------------------- block specs


@dataclass(frozen=True)
class ConvSpec:
    cin: int
    cout: int
    k: int
    stride: int

    def build(self) -> nn.Module:
        return cbr(self.cin, self.cout, self.k, self.stride)

    def __repr__(self) -> str:
        return f"Conv({self.cin}->{self.cout},k{self.k},s{self.stride})"


@dataclass(frozen=True)
class ResidualSpec:
    cin: int
    cout: int
    stride: int

    @property
    def projected(self) -> bool:
        return self.cin != self.cout or self.stride != 1

    def build(self) -> nn.Module:
        body = nn.Sequential(cbr(self.cin, self.cout, 3, self.stride),
                             cbr(self.cout, self.cout, 3, act=False))
        proj = cbr(self.cin, self.cout, 1, self.stride, act=False) if self.projected else None
        return Residual(body, proj)

    def __repr__(self) -> str:
        kind = "proj" if self.projected else "id"
        return f"Res({self.cin}->{self.cout},s{self.stride},{kind})"


@dataclass(frozen=True)
class ConcatSpec:
    cin: int
    outs: tuple[int, ...]
    kernels: tuple[int, ...]

    @property
    def cout(self) -> int:
        return sum(self.outs)

    def build(self) -> nn.Module:
        return Concat([cbr(self.cin, o, k) for o, k in zip(self.outs, self.kernels)])

    def __repr__(self) -> str:
        parts = "+".join(f"{o}k{k}" for o, k in zip(self.outs, self.kernels))
        return f"Cat({self.cin}->[{parts}])"


@dataclass(frozen=True)
class DepthwiseSpec:
    cin: int
    multiplier: int
    residual: bool  # only with multiplier 1: depthwise inside a residual tie

    @property
    def cout(self) -> int:
        return self.cin * self.multiplier

    def build(self) -> nn.Module:
        dw = cbr(self.cin, self.cout, 3, groups=self.cin, act=not self.residual)
        return Residual(dw, None) if self.residual else dw

    def __repr__(self) -> str:
        res = ",res" if self.residual else ""
        return f"DW({self.cin}->{self.cout},x{self.multiplier}{res})"


@dataclass(frozen=True)
class GroupedSpec:
    cin: int
    mid: int  # input of the grouped conv; == cin when there is no 1x1 reduce
    cout: int
    groups: int

    def build(self) -> nn.Module:
        layers: list[nn.Module] = []
        if self.mid != self.cin:
            layers.append(cbr(self.cin, self.mid, 1))
        layers.append(cbr(self.mid, self.cout, 3, groups=self.groups))
        return nn.Sequential(*layers)

    def __repr__(self) -> str:
        pre = f"{self.cin}->1x1->" if self.mid != self.cin else ""
        return f"Grouped({pre}{self.mid}->{self.cout},g{self.groups})"


@dataclass(frozen=True)
class SESpec:
    cin: int
    hidden: int

    @property
    def cout(self) -> int:
        return self.cin

    def build(self) -> nn.Module:
        return Gate(self.cin, self.hidden)

    def __repr__(self) -> str:
        return f"SE({self.cin},h={self.hidden})"


@dataclass(frozen=True)
class ShuffleSpec:
    cin: int
    even: int  # channels entering the chunk; a 1x1 conv adapts cin when they differ
    branch_out: int

    @property
    def cout(self) -> int:
        return self.even // 2 + self.branch_out

    def build(self) -> nn.Module:
        half = self.even // 2
        branch = nn.Sequential(cbr(half, half, 3, groups=half, act=False),
                               cbr(half, self.branch_out, 1))
        unit = Shuffle(branch)
        return unit if self.even == self.cin else nn.Sequential(cbr(self.cin, self.even, 1), unit)

    def __repr__(self) -> str:
        pre = f"{self.cin}->1x1->" if self.even != self.cin else ""
        return f"Shuffle({pre}{self.even}->{self.cout})"


BlockSpec = Union[ConvSpec, ResidualSpec, ConcatSpec, DepthwiseSpec, GroupedSpec, SESpec,
                  ShuffleSpec]


# --------------------------------------------------------------------------- heads / arch


@dataclass(frozen=True)
class HeadSpec:
    """pool=None: global-avg-pool → flatten → linear; else adaptive pool (h,w) → MLP."""

    pool: tuple[int, int] | None
    hidden: int

    def build(self, cin: int, num_classes: int) -> nn.Module:
        if self.pool is None:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                 nn.Linear(cin, num_classes))
        h, w = self.pool
        return nn.Sequential(nn.AdaptiveAvgPool2d((h, w)), nn.Flatten(1),
                             nn.Linear(cin * h * w, self.hidden), nn.ReLU(),
                             nn.Linear(self.hidden, num_classes))

    def __repr__(self) -> str:
        if self.pool is None:
            return "Gap"
        return f"Flat({self.pool[0]}x{self.pool[1]},h={self.hidden})"


class GeneratedNet(nn.Module):
    """stem → blocks → head, with stable names for the splitter's reports."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@dataclass(frozen=True)
class Arch:
    input_size: tuple[int, int, int]
    stem: int
    blocks: tuple[BlockSpec, ...]
    head: HeadSpec
    num_classes: int

    def build(self, num_classes: int | None = None) -> nn.Module:
        """Fresh model; num_classes defaults to the drawn one."""
        n = self.num_classes if num_classes is None else num_classes
        last = self.blocks[-1].cout if self.blocks else self.stem
        return GeneratedNet(cbr(3, self.stem, 3), [b.build() for b in self.blocks],
                            self.head.build(last, n))

    def __repr__(self) -> str:
        c, h, w = self.input_size
        blocks = ", ".join(map(repr, self.blocks))
        return (f"Arch(in={c}x{h}x{w}, stem={self.stem}, blocks=[{blocks}], "
                f"head={self.head!r}, classes={self.num_classes})")


# --------------------------------------------------------------------------- strategies


@st.composite
def conv_block(draw: st.DrawFn, cin: int) -> ConvSpec:
    return ConvSpec(cin, draw(CH), draw(st.sampled_from((1, 3))), draw(st.sampled_from((1, 2))))


@st.composite
def residual_block(draw: st.DrawFn, cin: int) -> ResidualSpec:
    if draw(st.booleans()):
        return ResidualSpec(cin, cin, 1)
    return ResidualSpec(cin, draw(CH), draw(st.sampled_from((1, 2))))


@st.composite
def concat_block(draw: st.DrawFn, cin: int) -> ConcatSpec:
    n = draw(st.integers(2, 3))
    outs = tuple(draw(st.lists(st.integers(2, 8), min_size=n, max_size=n)))
    kernels = tuple(draw(st.lists(st.sampled_from((1, 3)), min_size=n, max_size=n)))
    return ConcatSpec(cin, outs, kernels)


@st.composite
def depthwise_block(draw: st.DrawFn, cin: int) -> DepthwiseSpec:
    mult = draw(st.sampled_from((1, 2)))
    return DepthwiseSpec(cin, mult, residual=mult == 1 and draw(st.booleans()))


@st.composite
def grouped_block(draw: st.DrawFn, cin: int) -> GroupedSpec:
    """groups ∈ {2, 4}; a 1x1 reduce makes the input divisible when cin is not."""
    g = draw(st.sampled_from((2, 4)))
    direct = cin % g == 0 and draw(st.booleans())
    mid = cin if direct else g * draw(st.integers(1, 16 // g))
    return GroupedSpec(cin, mid, g * draw(st.integers(1, 16 // g)), g)


@st.composite
def se_block(draw: st.DrawFn, cin: int) -> SESpec:
    return SESpec(cin, draw(st.integers(1, max(1, cin // 2))))


@st.composite
def shuffle_block(draw: st.DrawFn, cin: int) -> ShuffleSpec:
    """Even input for chunk(2); branch width keeps the cat even for the 2-group shuffle."""
    even = cin if cin % 2 == 0 else cin + 1
    half = even // 2
    branch_out = draw(st.integers(1, 8).map(lambda b: 2 * b - half % 2))
    return ShuffleSpec(cin, even, branch_out)


BLOCK_KINDS: dict[str, Callable[[int], st.SearchStrategy]] = {
    "conv": conv_block, "residual": residual_block, "concat": concat_block,
    "depthwise": depthwise_block, "grouped": grouped_block, "se": se_block,
    "shuffle": shuffle_block,
}


@st.composite
def head_spec(draw: st.DrawFn) -> HeadSpec:
    if draw(st.booleans()):
        return HeadSpec(None, 0)
    pool = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return HeadSpec(pool, draw(st.integers(4, 16)))


@st.composite
def architectures(draw: st.DrawFn, max_blocks: int = 5) -> Arch:
    """A random small CNN: stem conv, 1..max_blocks blocks, a pooled or flattened head."""
    h, w = draw(st.integers(8, 16)), draw(st.integers(8, 16))
    stem = draw(CH)
    kinds = draw(st.lists(st.sampled_from(list(BLOCK_KINDS)), min_size=1, max_size=max_blocks))
    blocks: list[BlockSpec] = []
    cin = stem
    for kind in kinds:
        spec = draw(BLOCK_KINDS[kind](cin))
        blocks.append(spec)
        cin = spec.cout
    return Arch((3, h, w), stem, tuple(blocks), draw(head_spec()), draw(st.integers(2, 10)))
