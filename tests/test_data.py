"""Tests for splitc.data.loaders / splitc.data.synthetic: every --data form, offline, in seconds."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torchvision import transforms as T

from datagen import dump_py2
from splitc.data import families, synthetic
from splitc.data.bundle import ImageTensorDataset
from splitc.data.loaders import DataBundle, DataError, describe_specs, load_data


def _labels(ds: torch.utils.data.Dataset) -> list[int]:
    return [ds[i][1] for i in range(len(ds))]


# --- synthetic -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fast() -> DataBundle:
    return load_data("synthetic:fast")


def test_synthetic_shapes_labels_and_hierarchy(fast) -> None:
    n_train, n_val = synthetic.SIZES["fast"]
    assert (len(fast.train), len(fast.val)) == (20 * n_train, 20 * n_val)
    assert fast.input_size == (3, 32, 32) and fast.spec == "synthetic:fast"
    x, y = fast.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert len(fast.class_names) == synthetic.NUM_CLASSES == 20
    assert len(fast.superclass_names) == synthetic.NUM_SUPERCLASSES == 4
    assert fast.superclass_of == tuple(c // 5 for c in range(20))
    counts = torch.bincount(fast.train.labels, minlength=20)
    assert counts.tolist() == [n_train] * 20
    assert torch.bincount(fast.val.labels, minlength=20).tolist() == [n_val] * 20
    assert len(set(fast.class_names)) == 20 and all(0 <= y < 20 for y in _labels(fast.val))


def test_synthetic_roughly_normalised(fast) -> None:
    x = torch.stack([fast.val[i][0] for i in range(0, len(fast.val), 4)])
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    assert torch.all(mean.abs() < 0.2) and torch.all((std - 1).abs() < 0.2)


@pytest.mark.parametrize("module", [synthetic, families], ids=["synthetic", "families"])
def test_built_in_data_is_deterministic_per_seed_and_stream(module) -> None:
    raw = module.generate.__wrapped__  # bypass the in-memory cache
    a, la = raw(2, 7, 0)
    b, lb = raw(2, 7, 0)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, raw(2, 8, 0)[0])
    assert not torch.equal(a, raw(2, 7, 1)[0])  # train and val streams differ
    assert module.generate(2, 7, 0) is module.generate(2, 7, 0)  # cached


def test_synthetic_train_and_val_do_not_share_images(fast) -> None:
    train = {x.numpy().tobytes() for x in fast.train.images}
    val = {x.numpy().tobytes() for x in fast.val.images}
    assert len(train) == len(fast.train) and len(val) == len(fast.val) and not train & val


def test_synthetic_other_sizes_and_greyscale() -> None:
    b = load_data("synthetic", (1, 24, 40), synthetic_size="fast", seed=3)
    x, _ = b.train[5]
    assert x.shape == (1, 24, 40) and b.val[0][0].shape == (1, 24, 40)
    with pytest.raises(DataError, match="synthetic:fast"):
        load_data("synthetic:huge")


def test_synthetic_default_variant_sizes() -> None:
    b = load_data("synthetic", seed=1)
    assert (len(b.train), len(b.val)) == (20 * 500, 20 * 100)


def _mean_rgb(images: torch.Tensor) -> np.ndarray:
    return images.float().mean((2, 3)).numpy() / 255.0


def _spectrum(images: torch.Tensor) -> np.ndarray:
    """Colour- and translation-invariant texture features: pooled log |FFT| per image."""
    g = images.float()
    g = (g - g.mean((2, 3), keepdim=True)) / (g.std((2, 3), keepdim=True) + 1e-3)
    f = torch.fft.fftshift(torch.fft.fft2(g).abs().mean(1), dim=(-2, -1))
    return torch.log1p(F.avg_pool2d(f[:, None], 4)).flatten(1).numpy()


def _superclass_accuracy(fast, features) -> float:
    sup = np.asarray(fast.superclass_of)
    a, b = features(fast.train.images), features(fast.val.images)
    mu, sd = a.mean(0), a.std(0) + 1e-6
    clf = LogisticRegression(max_iter=500).fit((a - mu) / sd, sup[fast.train.labels.numpy()])
    return clf.score((b - mu) / sd, sup[fast.val.labels.numpy()])


def test_colour_does_not_reveal_superclass(fast) -> None:
    assert _superclass_accuracy(fast, _mean_rgb) < 0.4  # chance = 0.25


def test_texture_features_reveal_superclass(fast) -> None:
    assert _superclass_accuracy(fast, _spectrum) > 0.6


# --- flip / augmentation -----------------------------------------------------------------------

def _crops(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Every crop the zero-padded random crop can produce from ``x``."""
    p = F.pad(x, (pad,) * 4)
    h, w = x.shape[1:]
    return torch.stack([p[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)])


def _mirrored_draws(ds: ImageTensorDataset, index: int, draws: int = 24) -> int:
    """How many augmented draws of ``index`` are mirrored crops (and not plain crops)."""
    normalize = ds.transform.transforms[-1]
    raw = ds.images[index].float() / 255.0
    plain, mirrored = normalize(_crops(raw, 4)), normalize(_crops(raw.flip(-1), 4))
    count = 0
    for _ in range(draws):
        x = ds[index][0]
        in_plain = (plain - x).abs().amax((1, 2, 3)).min() < 1e-5
        in_mirror = (mirrored - x).abs().amax((1, 2, 3)).min() < 1e-5
        assert in_plain or in_mirror
        count += int(in_mirror and not in_plain)
    return count


def test_flip_false_disables_flip(fast) -> None:
    torch.manual_seed(0)
    no_flip = load_data("synthetic:fast", flip=False)
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in no_flip.train.transform.transforms)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in fast.train.transform.transforms)
    assert _mirrored_draws(no_flip.train, 3) == 0
    assert _mirrored_draws(fast.train, 3) > 0


def test_validation_is_not_augmented(fast) -> None:
    assert torch.equal(fast.val[7][0], fast.val[7][0])
    assert not any(isinstance(t, (T.RandomCrop, T.RandomHorizontalFlip))
                   for t in fast.val.transform.transforms)


def test_train_probe_is_the_training_set_without_augmentation(fast) -> None:
    """Class-mean features (feature_ari, --init-groups cluster) are measured on it."""
    probe = fast.train_probe
    assert probe is not None and len(probe) == len(fast.train)
    assert torch.equal(probe.labels, fast.train.labels) and torch.equal(probe.images, fast.train.images)
    assert torch.equal(probe[5][0], probe[5][0])
    assert not any(isinstance(t, (T.RandomCrop, T.RandomHorizontalFlip)) for t in probe.transform.transforms)


@pytest.mark.parametrize("size, pad", [((3, 32, 32), 4), ((1, 16, 16), 2), ((3, 224, 224), 28)])
def test_crop_padding_scales_with_size(size, pad) -> None:
    crop = [t for t in load_data("digits", size).train.transform.transforms
            if isinstance(t, T.RandomCrop)]
    assert len(crop) == 1 and crop[0].padding == pad


# --- digits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(3, 32, 32), (1, 16, 16)])
def test_digits_shapes_and_split(size) -> None:
    b = load_data("digits", size)
    assert (len(b.train), len(b.val)) == (1437, 360)
    assert b.train[0][0].shape == size and b.val[0][0].shape == size
    assert b.class_names == tuple(str(d) for d in range(10)) and b.superclass_of is None
    val_counts = np.bincount(_labels(b.val), minlength=10)
    assert val_counts.min() >= 35 and val_counts.max() <= 37  # stratified 20 %


def test_digits_split_depends_on_seed() -> None:
    a, b, c = (load_data("digits", seed=s).val.labels for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_digits_grey_replicated_to_rgb() -> None:
    x, _ = load_data("digits").val[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


# --- cifar100 --------------------------------------------------------------------------------

FINE = [b"apple", b"bee", b"car", b"dog"]
COARSE = [b"fruit_and_insects", b"other"]


def _dump(path: Path, obj: dict) -> None:
    dump_py2(path, obj)


def _write_cifar(folder: Path, n_train: int = 12, n_test: int = 8,
                 fine_to_coarse: tuple[int, ...] = (0, 0, 1, 1)) -> np.ndarray:
    """Tiny dataset in the official cifar-100-python layout; returns the test pixels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test_data = None
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [i % len(FINE) for i in range(n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _dump(folder / name, {
            b"filenames": [b"img_%d.png" % i for i in range(n)],
            b"batch_label": b"training batch 1 of 1" if name == "train" else b"testing batch 1 of 1",
            b"fine_labels": fine, b"coarse_labels": [fine_to_coarse[f] for f in fine],
            b"data": data})
        test_data = data
    _dump(folder / "meta", {b"fine_label_names": FINE, b"coarse_label_names": COARSE})
    return test_data


def test_fake_cifar_matches_official_pickle_conventions(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c")
    with (tmp_path / "c" / "train").open("rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    assert as_bytes[b"data"].shape == (12, 3072) and as_bytes[b"data"].dtype == np.uint8
    with (tmp_path / "c" / "meta").open("rb") as f:
        assert pickle.load(f, encoding="latin1")["fine_label_names"] == ["apple", "bee", "car", "dog"]


@pytest.mark.parametrize("nested", [False, True])
def test_cifar100_loads_both_layouts(tmp_path: Path, nested: bool) -> None:
    folder = tmp_path / "mycifar" / ("cifar-100-python" if nested else "")
    test_data = _write_cifar(folder)
    b = load_data(f"cifar100:{tmp_path / 'mycifar'}")
    assert b.class_names == ("apple", "bee", "car", "dog")
    assert b.superclass_names == ("fruit_and_insects", "other")
    assert b.superclass_of == (0, 0, 1, 1)
    assert (len(b.train), len(b.val)) == (12, 8)
    assert _labels(b.val) == [i % 4 for i in range(8)]
    x, _ = b.val[3]
    mean, std = torch.tensor([0.5071, 0.4865, 0.4409]), torch.tensor([0.2673, 0.2564, 0.2762])
    pixels = (x * std[:, None, None] + mean[:, None, None]) * 255
    assert torch.allclose(pixels, torch.from_numpy(test_data[3].reshape(3, 32, 32)).float(), atol=1e-3)
    assert load_data(f"cifar100:{tmp_path / 'mycifar'}", (3, 64, 64)).train[0][0].shape == (3, 64, 64)


def test_cifar100_hierarchy_follows_coarse_labels(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c", fine_to_coarse=(1, 0, 0, 1))
    assert load_data(f"cifar100:{tmp_path / 'c'}").superclass_of == (1, 0, 0, 1)


def test_cifar100_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"cifar100:{tmp_path / 'nowhere'}")
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "meta").unlink()
    with pytest.raises(DataError, match="missing meta.*cifar-100-python"):
        load_data(f"cifar100:{tmp_path / 'c'}")
    _write_cifar(tmp_path / "d")
    (tmp_path / "d" / "train").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="corrupt"):
        load_data(f"cifar100:{tmp_path / 'd'}")
    with pytest.raises(DataError, match="needs a folder"):
        load_data("cifar100")


def test_cifar100_rejects_python3_bytes_keys(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c")
    with (tmp_path / "c" / "meta").open("wb") as f:
        pickle.dump({b"fine_label_names": FINE, b"coarse_label_names": COARSE}, f, protocol=2)
    with pytest.raises(DataError, match="bytes keys"):
        load_data(f"cifar100:{tmp_path / 'c'}")


# --- imagefolder -----------------------------------------------------------------------------

def _write_folder(root: Path, classes: dict[str, list[str]], n: int = 2) -> None:
    rng = np.random.default_rng(0)
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_imagefolder_with_hierarchy(tmp_path: Path) -> None:
    classes = ["cat", "dog", "car"]
    _write_folder(tmp_path, {"train": classes, "val": classes})
    (tmp_path / "hierarchy.json").write_text(json.dumps(
        {"cat": "animal", "dog": "animal", "car": "vehicle"}))
    b = load_data(f"imagefolder:{tmp_path}", (3, 16, 16))
    assert b.class_names == ("car", "cat", "dog")
    assert b.superclass_names == ("animal", "vehicle") and b.superclass_of == (1, 0, 0)
    assert b.train[0][0].shape == (3, 16, 16) and b.val[5][0].shape == (3, 16, 16)
    assert _labels(b.val) == [0, 0, 1, 1, 2, 2]
    assert load_data(f"imagefolder:{tmp_path}").val[0][0].shape == (3, 224, 224)
    assert load_data(f"imagefolder:{tmp_path}", (1, 8, 12)).train[0][0].shape == (1, 8, 12)


def test_imagefolder_without_hierarchy(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": ["a", "b"], "val": ["a", "b"]})
    b = load_data(f"imagefolder:{tmp_path}", (3, 16, 16), flip=False)
    assert b.superclass_of is None and b.superclass_names is None
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in b.train.transform.transforms)


def test_imagefolder_class_mismatch(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": ["a", "b"], "val": ["a", "c"]})
    with pytest.raises(DataError, match=r"only in train: \['b'\], only in val: \['c'\]"):
        load_data(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("table, message", [
    ({"a": "x"}, r"missing \['b'\]"),
    ({"a": "x", "b": "y", "zebra": "y"}, r"unknown \['zebra'\]"),
    (["a", "b"], "JSON object"),
    (None, "not readable JSON"),
])
def test_imagefolder_bad_hierarchy(tmp_path: Path, table, message: str) -> None:
    _write_folder(tmp_path, {"train": ["a", "b"], "val": ["a", "b"]})
    text = "{not json" if table is None else json.dumps(table)
    (tmp_path / "hierarchy.json").write_text(text)
    with pytest.raises(DataError, match=message):
        load_data(f"imagefolder:{tmp_path}")


def test_imagefolder_missing_split(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": ["a"]})
    with pytest.raises(DataError, match="val"):
        load_data(f"imagefolder:{tmp_path}")


# --- spec handling ---------------------------------------------------------------------------

def test_unknown_spec_lists_forms() -> None:
    with pytest.raises(DataError) as err:
        load_data("foo")
    for form in ("synthetic", "digits", "cifar100:PATH", "imagefolder:PATH"):
        assert form in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", [(2, 32, 32), (3, 0, 32), (3, 32)])
def test_bad_input_size(size) -> None:
    with pytest.raises(DataError, match="C,H,W"):
        load_data("digits", size)


def test_describe_specs_mentions_every_form() -> None:
    text = describe_specs()
    for form in ("synthetic", "synthetic:fast", "digits", "cifar100:PATH", "imagefolder:PATH"):
        assert form in text
