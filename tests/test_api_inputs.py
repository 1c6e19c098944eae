"""Every public name of ``splitc`` checks what a careless caller passes before any work starts,
and refuses it in one line (a SplitcError naming the argument), never a traceback from deep
inside; and what it should take (a list of batches as ``probe=``) it takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import splitc
from splitc.compile.split_run import random_split
from splitc.core.errors import SplitcError
from splitc.graph.scope import ScopeSpec

SIZE = (3, 16, 16)
CLASSES = 4


class Tiny(nn.Module):
    """A small CNN with a ``layer3`` to split from (tests/test_api.py uses it too)."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.layer3(self.stem(x)), 1).flatten(1))


class MyNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def batches(n: int = 4, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, *SIZE, generator=g), torch.randint(0, CLASSES, (batch,), generator=g)) for _ in range(n)]


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inputs") / "split"
    random_split("tiny_residual", ScopeSpec((2,), split_from=("res2",)), out, num_classes=4)
    return out


def splitnet(**kw):
    args = {"model": Tiny(), "example_inputs": torch.randn(1, *SIZE), "steps": 4, "groups": 2,
            "split_from": "layer3", "probe": batches()}
    return splitc.SplitNet(**{**args, **kw})


SPLITNET_CASES = {
    "model": {"model": nn.Identity()},
    "model=": {"model": "resnet20"},
    "example_inputs=": {"example_inputs": None},
    "example_inputs= ": {"example_inputs": torch.zeros(1, *SIZE, dtype=torch.long)},
    "steps=": {"steps": 0},
    "steps=  ": {"steps": "10"},
    "groups=": {"groups": "2"},
    "groups= ": {"groups": 1},
    "split_from=": {"split_from": 3},
    "split_depth=": {"split_depth": 0, "split_from": None},
    "preset=": {"preset": 3, "split_from": None},
    "probe=": {"probe": torch.randn(8, *SIZE)},
    "probe= ": {"probe": 5},
    "probe=  ": {"probe": [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))]},
    "val=": {"val": "data/val"},
    "steps_per_epoch=": {"steps_per_epoch": 0},
    "trained=": {"trained": "yes"},
    "class_names=": {"class_names": "abcd"},
    "class_names= ": {"class_names": ["a", "b"]},
    "seed=": {"seed": -1},
    "out=": {"out": "runs/x"},
    "gamma_w": {"gamma_w": "big"},
    "assign": {"assign": "soft"},
    "init_groups": {"init_groups": "kmeans"},
    "commit": {"commit": "no"},
    "init_groups ": {"groups": (2, 4), "split_from": ("stem", "layer3"), "init_groups": "cluster-cut"},
}


@pytest.mark.parametrize("case", list(SPLITNET_CASES))
def test_splitnet_refuses_in_one_line(case: str) -> None:
    with pytest.raises(SplitcError) as info:
        splitnet(**SPLITNET_CASES[case])
    message = str(info.value)
    assert "\n" not in message and case.strip().rstrip("=") in message, message


def test_register_module_and_function_refuse_in_one_line() -> None:
    for call, word in ((lambda: splitc.register_module(MyNorm(), "channelwise"), "nn.Module subclass"),
                       (lambda: splitc.register_module(MyNorm, "norm"), "unknown op kind"),
                       (lambda: splitc.register_module(MyNorm, 3), "unknown op kind"),
                       (lambda: splitc.register_function(3, "channelwise"), "takes a function"),
                       (lambda: splitc.register_function(torch.relu, "nope"), "unknown op kind")):
        with pytest.raises(SplitcError, match=word) as info:
            call()
        assert "\n" not in str(info.value)


def test_save_load_export_refuse_in_one_line(split_dir: Path, tmp_path: Path) -> None:
    split = splitc.load(split_dir)
    cases = [
        (lambda: splitc.save(nn.Linear(2, 2), tmp_path / "a.splitc"), "takes a split"),
        (lambda: splitc.save(split, tmp_path / "a.pt2"), "ending in .splitc"),
        (lambda: splitc.save(split, 3), "ending in .splitc"),
        (lambda: splitc.load(3), "takes the path"),
        (lambda: splitc.load(tmp_path / "missing.splitc"), "does not exist"),
        (lambda: splitc.load(tmp_path), "split.json"),
        (lambda: splitc.export(Tiny(), tmp_path / "onnx"), "not Tiny .*SplitNet"),
        (lambda: splitc.export(tmp_path / "missing", tmp_path / "onnx"), "does not exist"),
        (lambda: splitc.export(split, 3), "out="),
        (lambda: splitc.export(split, split_dir), "pass force=True"),
        (lambda: splitc.export(split, tmp_path / "onnx", devices=3), "devices="),
        (lambda: splitc.export(split, tmp_path / "onnx", force="yes"), "force="),
        (lambda: splitc.export(split, tmp_path / "onnx", lower="no"), "lower="),
    ]
    for call, word in cases:
        with pytest.raises(SplitcError, match=word) as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "onnx").exists()


def test_every_public_name_has_an_input_test() -> None:
    text = Path(__file__).read_text()
    for name in splitc.__all__:
        if name not in ("__version__", "Kind"):   # Kind: an Enum, taken by register_module below
            assert f"splitc.{name}(" in text, name


def test_kind_is_public_for_register_module() -> None:
    from splitc.graph.opkinds import registered

    with registered(MyNorm, splitc.Kind.CHANNELWISE):
        with pytest.raises(SplitcError, match="already registered as 'channelwise'"):
            splitc.register_module(MyNorm, "pool")
    assert {k.value for k in splitc.Kind} >= {"channelwise", "elementwise", "conv"}


def test_probe_and_val_take_datasets_loaders_and_batches() -> None:
    data = batches()
    dataset = TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    for given in (lambda: data, lambda: iter(data), lambda: dataset, lambda: DataLoader(dataset, batch_size=8)):
        sp = splitnet(probe=given(), val=given(), init_groups="cluster-cut")
        assert len(sp.run.data.val) == 32 and len(sp.run.data.probe) == 32


def test_library_warnings_go_through_python_warnings() -> None:
    from splitc.core.errors import SplitcWarning

    sp = splitnet()
    with pytest.warns(SplitcWarning, match="still in the warm-up"):
        sp.compile()
    assert any("still in the warm-up" in w for w in sp.warnings)
