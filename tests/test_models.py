"""Built-in models: sizes match the papers, names are stable, and fx sees the whole graph."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.fx as fx
from hypothesis import HealthCheck, given, settings

from splitc.models import BUILTINS, BuiltinModel, build_builtin
from splitc.models.resnet_cifar import resnet20
from splitc.models.wrn import WideResNet, wrn16_8

try:  # tests/ is on sys.path under pytest's default (rootdir-less) import mode
    from archgen import Arch, architectures
except ImportError:  # pragma: no cover - when tests/ is imported as a package
    from tests.archgen import Arch, architectures


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These nets are tiny: one intra-op thread is faster and immune to a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_wrn16_8_params_and_shape() -> None:
    """docs/METHOD.md §4 baseline: 11.0M params with 100 classes."""
    model = wrn16_8(num_classes=100)
    assert n_params(model) == pytest.approx(11.0e6, rel=0.01)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_wrn16_8_layout() -> None:
    """Widths 128/256/512 at 32/16/8 px, 2 blocks per stage, 1x1 shortcut on first blocks."""
    model = wrn16_8()
    names = dict(model.named_modules())
    for name in ("conv1", "block1", "block2", "block3", "block3.0.conv1", "block3.1.conv2",
                 "block1.0.bn1", "block1.0.bn2", "block1.0.shortcut", "bn", "fc"):
        assert name in names, name
    for stage, width in (("block1", 128), ("block2", 256), ("block3", 512)):
        assert len(names[stage]) == 2
        assert names[f"{stage}.0.conv2"].out_channels == width
        assert names[f"{stage}.0.shortcut"].kernel_size == (1, 1)
        assert names[f"{stage}.1"].shortcut is None
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [names[s].register_forward_hook(
        lambda m, i, o, s=s: sizes.__setitem__(s, tuple(o.shape[1:])))
        for s in ("block1", "block2", "block3")]
    model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == {"block1": (128, 32, 32), "block2": (256, 16, 16), "block3": (512, 8, 8)}


def test_wideresnet_general_and_dropout() -> None:
    """The general builder: WRN-10-2 has one block per stage; dropout is a real module."""
    model = WideResNet(depth=10, width=2, num_classes=7, dropout=0.3)
    assert len(model.block2) == 1
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError):
        WideResNet(depth=15)


def test_resnet20_params_and_names() -> None:
    model = resnet20(num_classes=10)
    assert n_params(model) == pytest.approx(0.27e6, rel=0.02)
    names = dict(model.named_modules())
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "fc", "layer2.0.downsample",
                 "layer3.2.conv2", "layer3.2.bn2"):
        assert name in names, name
    assert names["layer1.0"].downsample is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_registry_entries() -> None:
    expected = {"wrn16_8", "resnet20", "resnet32", "resnet56", "tiny_seq", "tiny_residual",
                "tiny_concat", "tiny_depthwise", "tiny_grouped", "tiny_se", "tiny_shuffle",
                "tiny_mixed"}
    assert expected <= set(BUILTINS)
    assert BUILTINS["wrn16_8"].presets == ("fc", "shallow", "deep", "hier")
    assert BUILTINS["resnet20"].presets == ()
    assert BUILTINS["tiny_mixed"].default_input_size == (3, 16, 16)
    assert all(isinstance(b, BuiltinModel) for b in BUILTINS.values())
    with pytest.raises(KeyError, match="resnet20"):
        build_builtin("no_such_net", 10)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_traces_and_matches_eager(name: str) -> None:
    """fx.symbolic_trace must capture the full graph: traced == eager on random input."""
    torch.manual_seed(0)
    entry = BUILTINS[name]
    model = build_builtin(name, num_classes=5).eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(2, *entry.default_input_size)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(traced(x), expected)
    assert expected.shape == (2, 5)


@pytest.mark.parametrize("name", [n for n in sorted(BUILTINS) if n.startswith("tiny_")])
def test_tiny_nets_also_run_at_32px(name: str) -> None:
    model = build_builtin(name, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def _targets(gm: fx.GraphModule) -> set[str]:
    return {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes}


def test_tiny_nets_contain_their_construct() -> None:
    """Each tiny net's traced graph really has the op it exists to exercise."""
    wants = {"tiny_residual": "add", "tiny_concat": "cat", "tiny_se": "mul",
             "tiny_shuffle": "transpose", "tiny_seq": "flatten"}
    for name, op in wants.items():
        assert op in _targets(fx.symbolic_trace(build_builtin(name, 10))), name
    groups = {m.groups for m in build_builtin("tiny_grouped", 10).modules()
              if isinstance(m, torch.nn.Conv2d)}
    assert 4 in groups
    dw = [m for m in build_builtin("tiny_depthwise", 10).modules()
          if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert {m.out_channels // m.in_channels for m in dw} == {1, 2}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                        HealthCheck.function_scoped_fixture])
@given(arch=architectures())
def test_generated_architectures_trace_and_run(arch: Arch) -> None:
    """Every drawn architecture is fx-traceable and runs forward on a batch of 2."""
    model = arch.build(arch.num_classes).eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(2, *arch.input_size)
    with torch.no_grad():
        out = traced(x)
        torch.testing.assert_close(out, model(x))
    assert out.shape == (2, arch.num_classes)
    assert 3 <= arch.input_size[0] and 8 <= min(arch.input_size[1:]) <= 16
    assert repr(arch).startswith("Arch(")
