"""``--data fashion-mnist[:DIR][@N]`` and ``mnist:DIR``: the idx reader, the layouts, the
superclasses, grey on 3-channel and 1-channel models, and the one-line errors (exit 2).

Every file here is written by the tests (small idx files), so nothing needs the real data.
"""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from splitc.cli.main import main
from splitc.data import mnist
from splitc.data.bundle import DataError
from splitc.data.idx import read_idx, write_idx
from splitc.data.loaders import load_data
from splitc.learn.groups import superclass_ari

N_TRAIN, N_VAL = 6, 2   # images per class


def write_set(folder: Path, gz: bool = True, seed: int = 0) -> Path:
    """A 10-class MNIST-format set: class c's images are bright in row band c (learnable)."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", N_TRAIN), ("t10k", N_VAL)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 7] = 250
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("fashion"))


# --- the idx reader --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip_gz_and_raw(tmp_path: Path, name: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    assert np.array_equal(read_idx(path, 3), array)


def test_idx_compression_is_read_from_the_content_not_the_name(tmp_path: Path) -> None:
    array = np.arange(5, dtype=np.uint8)
    path = write_idx(tmp_path / "labels-idx1-ubyte", array, compress=True)   # gzip without .gz
    assert np.array_equal(read_idx(path, 1), array)


@pytest.mark.parametrize("damage, says", [
    (lambda b: b[:-5], "truncated"),                                    # values cut short
    (lambda b: b"\x08\x03" + b[2:], "not an idx file"),                 # bad magic
    (lambda b: b[:2] + b"\x0d" + b[3:], "unsigned bytes"),              # float idx, not ubyte
    (lambda b: b[:6], "header is incomplete"),
])
def test_damaged_idx_is_one_clear_error(tmp_path: Path, damage, says: str) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=says) as info:
        read_idx(path, 3)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_broken_gzip_is_one_clear_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="damaged gzip"):
        read_idx(path, 3)


# --- the loader --------------------------------------------------------------------------------

def test_fashion_bundle(fashion_dir: Path) -> None:
    bundle = load_data(f"fashion-mnist:{fashion_dir}")
    assert (len(bundle.train), len(bundle.val)) == (10 * N_TRAIN, 10 * N_VAL)
    assert bundle.input_size == (3, 28, 28) and bundle.num_classes == 10
    assert bundle.class_names[0] == "T-shirt/top" and bundle.class_names[9] == "Ankle boot"
    x, y = bundle.val[0]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])      # grey replicated on 3 channels
    assert sorted(bundle.val[i][1] for i in range(len(bundle.val))) == sorted(list(range(10)) * N_VAL)


def test_superclasses_are_the_garment_kinds() -> None:
    names, of = mnist.FASHION.class_names, mnist.FASHION.superclass_of
    members = {s: {names[c] for c in range(10) if of[c] == s} for s in set(of)}
    kinds = dict(zip(mnist.FASHION.superclass_names, (members[s] for s in range(len(members)))))
    assert kinds["footwear"] == {"Sandal", "Sneaker", "Ankle boot"}
    assert kinds["tops"] == {"T-shirt/top", "Pullover", "Coat", "Shirt"}
    assert kinds["bags"] == {"Bag"} and kinds["trousers and dresses"] == {"Trouser", "Dress"}
    assert superclass_ari(of, of) == pytest.approx(1.0)
    footwear_apart = [0, 1, 0, 1, 0, 2, 0, 3, 3, 2]      # the sneaker sent to the bag's branch
    assert superclass_ari(of, footwear_apart) < 1.0


def test_torchvision_layout_raw_files_and_subset(tmp_path: Path) -> None:
    write_set(tmp_path / "FashionMNIST" / "raw", gz=False)
    bundle = load_data(f"fashion-mnist:{tmp_path}@2")
    assert len(bundle.train) == 10 * 2 and len(bundle.val) == 10 * N_VAL
    counts = torch.bincount(torch.tensor([bundle.train[i][1] for i in range(len(bundle.train))]), minlength=10)
    assert counts.tolist() == [2] * 10


def test_default_folder_is_debians(fashion_dir: Path, monkeypatch) -> None:
    monkeypatch.setitem(mnist.FORMATS, "fashion-mnist", replace(mnist.FASHION, default_dir=fashion_dir))
    assert len(load_data("fashion-mnist").train) == 10 * N_TRAIN
    assert len(load_data("fashion-mnist@3").train) == 10 * 3


def test_mnist_form_has_no_superclasses_and_no_flip(tmp_path: Path) -> None:
    write_set(tmp_path / "MNIST" / "raw")
    bundle = load_data(f"mnist:{tmp_path}")
    assert bundle.superclass_of is None and bundle.class_names == tuple("0123456789")
    flips = [type(t).__name__ for t in bundle.train.transform.transforms]
    assert "RandomHorizontalFlip" not in flips


def test_one_channel_input_size(fashion_dir: Path) -> None:
    bundle = load_data(f"fashion-mnist:{fashion_dir}", (1, 28, 28))
    assert bundle.val[0][0].shape == (1, 28, 28)


@pytest.mark.parametrize("spec, says", [
    ("fashion-mnist:{missing}", "apt-get install dataset-fashion-mnist"),
    ("fashion-mnist:{missing}", "torchvision.datasets.FashionMNIST"),
    ("fashion-mnist:{dir}@0", "at least 1"),
    ("mnist:{missing}", "torchvision.datasets.MNIST"),
])
def test_bad_specs_are_one_line(fashion_dir: Path, tmp_path: Path, spec: str, says: str) -> None:
    with pytest.raises(DataError, match=says.replace(".", r"\.")) as info:
        load_data(spec.format(missing=tmp_path / "nothing", dir=fashion_dir))
    assert "\n" not in str(info.value)


def test_incomplete_folder_names_the_missing_file(tmp_path: Path) -> None:
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_data(f"fashion-mnist:{tmp_path}")


def test_labels_and_images_that_disagree(tmp_path: Path) -> None:
    write_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="holds 20 images but"):
        load_data(f"fashion-mnist:{tmp_path}")


# --- the command line --------------------------------------------------------------------------

def gray_net(num_classes: int = 10) -> nn.Module:
    """A model built for one input channel (the test's factory for --input-size 1,28,28)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def test_learn_on_a_one_channel_model(fashion_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "learn", "test_mnist:gray_net", "--data", f"fashion-mnist:{fashion_dir}", "--input-size", "1,28,28",
        "--split-depth", "1", "--max-steps", "2", "--batch-size", "8", "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "assignment.json").is_file()


def test_three_channel_model_refuses_one_channel_input_in_one_line(fashion_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "learn", "test_mnist:gray_net", "--data", f"fashion-mnist:{fashion_dir}",
        "--split-depth", "1", "--max-steps", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize("command", [["learn", "resnet20", "--max-steps", "1"], ["demo"]])
def test_missing_data_is_one_line_exit_2(tmp_path: Path, command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--data", f"fashion-mnist:{tmp_path / 'none'}",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "apt-get install dataset-fashion-mnist" in error[0]
    assert "FashionMNIST(ROOT, download=True)" in error[0]
    assert not (tmp_path / "out" / "run").exists()        # refused before any work
