"""The user's own op types: ``splitc.register_module`` / ``register_function``.

A custom per-channel norm whose forward uses an op splitc has no rule for is a scope barrier,
and the warning names the call that declares it. Declared ``"channelwise"``, it is traced as a
leaf, the split runs through it, its per-channel parameters and buffers are permuted and sliced
with their channel (each branch holds only its own), counting counts them, and the split equals
the masked model. Registrations are undone by ``registered`` so that none leaks between tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import splitc
from splitc.compile.split import compile_split, subgraph_costs, total_cost
from splitc.core.errors import SplitcError
from splitc.core.numerics import relative_error
from splitc.graph.analysis import Analysis, analyse, analysis_warnings
from splitc.graph.counting import count
from splitc.graph.frontend import trace
from splitc.graph.group_tree import balanced_assignment
from splitc.graph import opkinds
from splitc.graph.opkinds import USER_FUNCTION_KINDS, USER_MODULE_KINDS, Kind, kind_of, registered, unregister
from splitc.graph.scope import make_spec

TOL = 1e-5
SIZE = (3, 8, 8)


class MyNorm(nn.Module):
    """A per-channel affine with a fixed per-channel shift; ``torch.addcmul`` has no channel
    rule, so traced through it is a barrier."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = nn.Parameter(torch.randn(channels))
        self.register_buffer("shift", torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight[None, :, None, None]
        return torch.addcmul(self.bias[None, :, None, None], x - self.shift[None, :, None, None], scale)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), MyNorm(cout)
        self.c2, self.n2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.n1(self.c1(x)))
        return torch.relu(self.n2(self.c2(y)) + self.short(x))


class TinyNet(nn.Module):
    """conv -> block(MyNorm, BN) -> block(MyNorm, BN) -> pool -> linear."""

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1, self.layer2 = Block(8, 8), Block(8, 16)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def soft(x: torch.Tensor) -> torch.Tensor:
    """softplus through ``torch.log1p``, which has no channel rule."""
    return torch.log1p(torch.exp(x))


class SoftNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.c1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(soft(self.c1(torch.relu(self.stem(x))))).mean((2, 3)))


@pytest.fixture(autouse=True)
def no_leaked_registrations():
    yield
    assert not USER_MODULE_KINDS and not USER_FUNCTION_KINDS


def analyse_tiny(seed: int = 0) -> Analysis:
    torch.manual_seed(seed)
    return analyse("tiny", make_spec("2", "layer2"), 6, SIZE, model=TinyNet())


def split_of(analysis: Analysis, seed: int):
    """A scattered balanced assignment (groups contiguous only after the permutation), compiled."""
    assignment = balanced_assignment(analysis.ir, analysis.scope, np.random.default_rng(seed))
    return assignment, compile_split(analysis.gm, analysis.ir, analysis.scope, assignment)


def test_unregistered_norm_is_a_barrier_that_names_register_module() -> None:
    lines = analysis_warnings(analyse_tiny())
    hint = [line for line in lines if 'splitc.register_module(MyNorm, "channelwise")' in line]
    assert hint, lines
    assert "scope barrier" in hint[0] and "inside MyNorm (layer" in hint[0]


def test_unregistered_leaf_module_names_itself() -> None:
    from splitc.graph.analysis import barrier_summary
    from splitc.graph.channel_graph import build_channel_graph

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="no channel rule for module .*MyNorm"):
        ir = build_channel_graph(trace(TinyNet(), leaf_types=(MyNorm,)), SIZE)
    assert any(line.startswith("no channel rule for module") and "MyNorm (2 nodes, first layer1_n1)" in line
               and 'declare it with splitc.register_module(MyNorm, "channelwise")' in line
               for line in barrier_summary(ir)), barrier_summary(ir)


@pytest.mark.parametrize("seed", [0, 1])
def test_registered_norm_splits_through_and_is_sliced(seed: int) -> None:
    barrier = analyse_tiny(seed)
    barrier_params = sum(p.numel() for p in split_of(barrier, seed)[1].model.parameters())
    with registered(MyNorm, "channelwise"):
        analysis = analyse_tiny(seed)
        assert not analysis.ir.barriers and not analysis_warnings(analysis)
        assert any(n.op == "call_module" and n.target == "layer2.n1" for n in analysis.gm.graph.nodes)
        assignment, compiled = split_of(analysis, seed)
        x = torch.randn(5, *SIZE, generator=torch.Generator().manual_seed(seed + 10))
        with torch.no_grad():
            assert relative_error(compiled.model(x), compiled.masked(x)) <= TOL
        predicted = count(analysis.ir, analysis.scope, assignment).split
        assert total_cost(subgraph_costs(compiled.model, SIZE)) == predicted
    actual = sum(p.numel() for p in compiled.model.parameters())
    assert actual == predicted.params < barrier_params
    assert predicted.params < analysis.cost.baseline.params
    assert_norm_sliced(compiled.model, analysis.model.layer2.n1)


def assert_norm_sliced(model, norm: MyNorm) -> None:
    """Each branch holds its own half of layer2.n1's channels, together all of them, once."""
    branches = [s.name for s in model.plan.subgraphs if s.role == "branch"]
    assert len(branches) == 2
    for name in ("weight", "bias", "shift"):
        parts = [model.subgraph(b).state_dict()[f"layer2.n1.{name}"] for b in branches]
        assert [tuple(p.shape) for p in parts] == [(8,), (8,)]
        whole = getattr(norm, name).detach()
        torch.testing.assert_close(torch.cat(parts).sort().values, whole.sort().values, rtol=0, atol=0)
    for spec in model.plan.subgraphs:
        if spec.role != "branch":
            assert not any(k.startswith("layer2.n1.") for k in model.subgraph(spec.name).state_dict())


def test_registered_function_is_kept_as_one_call() -> None:
    analysis = analyse("soft", make_spec("2", "c1"), 4, SIZE, model=SoftNet())
    assert any("log1p" in line and "register_function(log1p" in line for line in analysis_warnings(analysis))
    with registered(soft, "channelwise"):
        analysis = analyse("soft", make_spec("2", "c1"), 4, SIZE, model=SoftNet())
        assert not analysis.ir.barriers
        assert [n.target for n in analysis.gm.graph.nodes if n.op == "call_function"].count(soft) == 1
        _, compiled = split_of(analysis, 0)
        x = torch.randn(3, *SIZE)
        with torch.no_grad():
            assert relative_error(compiled.model(x), compiled.masked(x)) <= TOL
    assert analysis.cost.split.params < analysis.cost.baseline.params


def test_channelwise_tensor_that_cannot_follow_a_channel_declines() -> None:
    class Hidden(MyNorm):
        def __init__(self, channels: int) -> None:
            super().__init__(channels)
            self.register_buffer("shift", torch.randn(channels), persistent=False)

    with registered(MyNorm, "channelwise"):
        model = TinyNet()
        model.layer2.n1 = Hidden(16)
        analysis = analyse("tiny", make_spec("2", "layer2"), 6, SIZE, model=model)
    line = next(line for line in analysis_warnings(analysis) if "Hidden" in line)
    assert "declared channelwise but holds buffer shift" in line and "persistent" in line


def test_duplicate_registration_names_both() -> None:
    with registered(MyNorm, "channelwise"):
        with pytest.raises(SplitcError, match="MyNorm is already registered as 'channelwise'.*again as 'pool'"):
            splitc.register_module(MyNorm, "pool")
        assert USER_MODULE_KINDS[MyNorm] is Kind.CHANNELWISE
    with registered(soft, Kind.ELEMENTWISE):
        with pytest.raises(SplitcError, match="soft is already registered as 'elementwise'"):
            splitc.register_function(soft, "channelwise")
    with pytest.raises(SplitcError, match=r"ReLU is already registered as 'elementwise' \(built in\)"):
        splitc.register_module(nn.ReLU, "channelwise")


def test_unknown_kind_is_one_line_listing_the_kinds() -> None:
    with pytest.raises(SplitcError) as info:
        splitc.register_module(MyNorm, "norm")
    message = str(info.value)
    assert "\n" not in message and "'norm'" in message
    assert all(repr(kind.value) in message for kind in Kind)
    assert MyNorm not in USER_MODULE_KINDS
    with pytest.raises(SplitcError, match="was not registered"):
        unregister(MyNorm)


def test_untraceable_submodule_names_register_module() -> None:
    class ValueBranch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x   # control flow on a tensor value

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.odd = nn.Conv2d(3, 4, 1), ValueBranch()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.odd(self.conv(x))

    with pytest.raises(SplitcError, match=r"register_module\(ValueBranch, KIND\)"):
        trace(Outer())
    with registered(ValueBranch, "elementwise"):
        gm = trace(Outer())
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["conv", "odd"]


def test_torchvision_ops_get_their_kind_without_splitc_importing_torchvision() -> None:
    """Analysing a model costs no torchvision import (about 3 s per command); a model that
    holds torchvision's StochasticDepth has imported it, and the op then has its kind: it is
    elementwise, and registering it again is refused as a built-in."""
    import subprocess
    import sys

    probe = ("import sys, splitc; from splitc.graph.analysis import analyse; from splitc.graph.scope import make_spec; "
             "a = analyse('resnet20', make_spec('2', 'layer3')); "
             "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
    from torchvision.ops import StochasticDepth, stochastic_depth

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.drop = nn.Conv2d(3, 8, 3), StochasticDepth(0.1, "row")

        def forward(self, x):
            return self.drop(self.conv(x))     # its forward calls the function, which fx keeps whole

    gm = trace(Block())
    node = next(n for n in gm.graph.nodes if n.target is stochastic_depth)
    assert kind_of(node, dict(gm.named_modules())) is Kind.ELEMENTWISE
    assert opkinds.MODULE_KINDS[StochasticDepth] is Kind.ELEMENTWISE and not opkinds.DEFERRED_KINDS
    with pytest.raises(SplitcError, match="already registered"):
        splitc.register_module(StochasticDepth, "channelwise")
