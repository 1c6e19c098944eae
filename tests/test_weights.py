"""``--weights``: every format, every key problem as one line (exit 2), a changed classifier, the
local caches of torchvision and timm (nothing downloaded), and ``--normalize``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from splitc.cli.main import main
from splitc.core.errors import SplitcError
from splitc.data.bundle import CIFAR100_STATS, IMAGENET_STATS, DataError, pick_stats
from splitc.graph import zoo
from splitc.graph.weights import classifier_keys, load_weights


def trained_like(num_classes: int = 10, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return zoo.build("resnet20", num_classes)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: set[str] = frozenset()) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k not in skip)


@pytest.mark.parametrize("form", ["pt", "pth-state_dict", "pth-model", "safetensors", "ddp-prefix"])
def test_every_format_loads(tmp_path: Path, form: str) -> None:
    source = trained_like()
    state = source.state_dict()
    if form == "pt":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    elif form.startswith("pth"):
        path = tmp_path / "w.pth"
        torch.save({"epoch": 3, form.split("-")[1]: state, "optimizer": {"lr": 0.1}}, path)
    elif form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    target = trained_like(seed=2)
    assert not same_weights(source, target)
    loaded = load_weights(target, str(path), "resnet20")
    assert same_weights(source, target) and loaded.notes == ()
    assert len(loaded.sha256) == 64


def cli_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_key_problems_are_one_line_each(tmp_path: Path) -> None:
    state = trained_like().state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("layer3.2.")}
    torch.save(missing, tmp_path / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    torch.save(zoo.build("resnet32", 10).state_dict(), tmp_path / "deeper.pt")
    torch.save({**state, "conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "shape.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "w.onnx").write_bytes(b"x")
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    base = ["inspect", "resnet20", "--num-classes", "10", "--input-size", "3,32,32", "--weights"]
    assert "lacks 10 of the model's tensors (layer3.2.conv1.weight" in cli_error(base + [str(tmp_path / "missing.pt")])
    assert "has 1 tensors the model does not (extra.weight)" in cli_error(base + [str(tmp_path / "extra.pt")])
    assert "tensors the model does not (layer1.3." in cli_error(base + [str(tmp_path / "deeper.pt")])
    assert "conv1.weight: file [8, 3, 3, 3], model [16, 3, 3, 3]" in cli_error(base + [str(tmp_path / "shape.pt")])
    assert "holds no state_dict" in cli_error(base + [str(tmp_path / "list.pt")])
    assert "unknown file type .onnx" in cli_error(base + [str(tmp_path / "w.onnx")])
    assert "cannot read it as a state_dict" in cli_error(base + [str(tmp_path / "garbage.pt")])
    assert "no such file" in cli_error(base + [str(tmp_path / "absent.pt")])


def test_a_changed_classifier_is_reinitialised_and_said(tmp_path: Path) -> None:
    source = trained_like(num_classes=100)
    torch.save(source.state_dict(), tmp_path / "c100.pt")
    target = trained_like(num_classes=10, seed=3)
    fresh_fc = target.fc.weight.detach().clone()
    loaded = load_weights(target, str(tmp_path / "c100.pt"), "resnet20")
    assert classifier_keys(target) == {"fc.weight", "fc.bias"}
    assert same_weights(source, target, skip={"fc.weight", "fc.bias"})
    assert torch.equal(target.fc.weight, fresh_fc)
    assert len(loaded.notes) == 1 and "100 classes in --weights and 10 here" in loaded.notes[0]
    result = CliRunner().invoke(main, ["inspect", "resnet20", "--num-classes", "10", "--input-size", "3,32,32",
                                       "--weights", str(tmp_path / "c100.pt"), "--json"])
    assert result.exit_code == 0 and "re-initialised" in result.output


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (the cache folders are read from the environment at import),
    with sockets refused so that a download attempt would fail loudly."""
    code = ("import socket, sys\n"
            "def refuse(*a, **k): raise OSError('network access in a test')\n"
            "socket.socket.connect = refuse\n"
            "from splitc.cli.main import main\n"
            "sys.argv = ['splitc'] + sys.argv[1:]\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_torchvision_weights_come_only_from_the_cache(tmp_path: Path) -> None:
    import torchvision.models as tvm

    env = {"TORCH_HOME": str(tmp_path / "torch")}
    args = ["inspect", "resnet18", "--split-from", "layer4", "--groups", "2", "--json", "--weights"]
    absent = run_cli(args + ["torchvision:DEFAULT"], env)
    lines = absent.stderr.strip().splitlines()
    assert absent.returncode == 2 and len(lines) == 1, absent.stderr
    file = os.path.basename(tvm.ResNet18_Weights.DEFAULT.url)
    assert file in lines[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in lines[0]
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / file).exists()   # nothing downloaded
    assert "no torchvision weights 'NOPE'" in run_cli(args + ["torchvision:NOPE"], env).stderr
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(tvm.resnet18(weights=None).state_dict(), folder / file)   # a cached file, as torchvision keeps it
    cached = run_cli(args + ["torchvision:DEFAULT"], env)
    assert cached.returncode == 0, cached.stderr


def test_timm_weights_come_only_from_the_hf_cache(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ["inspect", "timm:resnet10t", "--split-from", "layer4", "--groups", "2", "--input-size", "3,64,64",
            "--json", "--weights", "timm"]
    absent = run_cli(args, env)
    assert absent.returncode == 2 and len(absent.stderr.strip().splitlines()) == 1, absent.stderr
    assert "model.safetensors" in absent.stderr and str(tmp_path / "hf") in absent.stderr
    repo = timm.get_pretrained_cfg("resnet10t").hf_hub_id.split("@")[0]
    root = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    model = timm.create_model("resnet10t", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    cached = run_cli(args, env)
    assert cached.returncode == 0, cached.stderr


def test_weights_need_the_matching_model_source() -> None:
    with pytest.raises(SplitcError, match="needs a torchvision model name"):
        load_weights(trained_like(), "torchvision:DEFAULT", "resnet20")
    with pytest.raises(SplitcError, match="needs a timm:NAME model"):
        load_weights(trained_like(), "timm", "resnet20")


def test_normalize_forms() -> None:
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    assert pick_stats(None, CIFAR100_STATS, images) == CIFAR100_STATS
    assert pick_stats("imagenet", None, images) == IMAGENET_STATS
    mean, std = pick_stats("data", CIFAR100_STATS, images)
    assert len(mean) == 3 and abs(mean[0] - images[:, 0].float().mean().item() / 255) < 1e-4
    assert pick_stats("0.5,0.5,0.5/0.25,0.25,0.25", None, images) == ((0.5,) * 3, (0.25,) * 3)
    for bad in ("0.5/0", "x/y", "0.5,0.5/0.2"):
        with pytest.raises(DataError, match="--normalize"):
            pick_stats(bad, None, images)
    with pytest.raises(DataError, match="lazily"):
        pick_stats("data", IMAGENET_STATS, None)
