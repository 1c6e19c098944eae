"""Data written the way a user brings it: PNG ImageFolders and CIFAR-format folders of shapes.

The shapes are drawn with PIL, not taken from ``splitc.data.synthetic`` (whose classes are textured
silhouettes), so that ``learn``'s recipe is checked on data it was not tuned on. Each class is a
shape kind; position, size, rotation, colours and noise are random. Also used by
``benchmarks/learn_unseen.py``.
"""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "hbar", "vbar", "ell",
          "tee", "ex", "pentagon", "arc", "dots", "hexagon")


def _polygon(cx: float, cy: float, r: float, n: int, turn: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(turn + 2 * math.pi * k / n), cy + r * math.sin(turn + 2 * math.pi * k / n))
            for k in range(n)]


def draw_shape(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One RGB image of ``kind`` at a random place, scale, rotation and colour, with noise."""
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int((b + rng.integers(90, 166)) % 256) for b in bg)
    image = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(image)
    r = size * rng.uniform(0.22, 0.36)
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12, 2) * size).tolist()
    turn = rng.uniform(0, 2 * math.pi)
    w = max(2, int(r / 3))
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        d.ellipse(box, fill=fg)
    elif kind == "ring":
        d.ellipse(box, outline=fg, width=w)
    elif kind in ("square", "triangle", "diamond", "pentagon", "hexagon"):
        n = {"square": 4, "triangle": 3, "diamond": 4, "pentagon": 5, "hexagon": 6}[kind]
        stretch = 0.6 if kind == "diamond" else 1.0
        pts = [(cx + (x - cx) * stretch, y) for x, y in _polygon(cx, cy, r, n, turn)]
        d.polygon(pts, fill=fg)
    elif kind == "star":
        pts = [p for k in range(5) for p in (_polygon(cx, cy, r, 5, turn)[k], _polygon(cx, cy, r / 2.5, 5, turn + math.pi / 5)[k])]
        d.polygon(pts, fill=fg)
    elif kind in ("hbar", "vbar"):
        horizontal = (kind == "hbar") ^ (rng.random() < 0.0)
        d.rectangle([cx - r, cy - w, cx + r, cy + w] if horizontal else [cx - w, cy - r, cx + w, cy + r], fill=fg)
    elif kind in ("cross", "ex"):
        a = turn % (math.pi / 8) + (0 if kind == "cross" else math.pi / 4)
        for t in (a, a + math.pi / 2):
            d.line([cx - r * math.cos(t), cy - r * math.sin(t), cx + r * math.cos(t), cy + r * math.sin(t)], fill=fg, width=w)
    elif kind == "ell":
        d.line([cx - r, cy - r, cx - r, cy + r, cx + r, cy + r], fill=fg, width=w)
    elif kind == "tee":
        d.line([cx - r, cy - r, cx + r, cy - r], fill=fg, width=w)
        d.line([cx, cy - r, cx, cy + r], fill=fg, width=w)
    elif kind == "arc":
        start = math.degrees(turn)
        d.arc(box, start, start + 180, fill=fg, width=w)
    elif kind == "dots":
        for x, y in _polygon(cx, cy, r * 0.7, 3, turn):
            d.ellipse([x - w, y - w, x + w, y + w], fill=fg)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def shapes_arrays(classes: int, per_class: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images and (N,) labels, classes interleaved."""
    if classes > len(SHAPES):
        raise ValueError(f"at most {len(SHAPES)} shape classes")
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(classes), per_class)
    images = np.stack([np.asarray(draw_shape(SHAPES[c], rng, size)) for c in labels])
    return images, labels


def write_shapes_imagefolder(root: Path, classes: int = 12, per_class: tuple[int, int] = (300, 50),
                             seed: int = 0, size: int = 32) -> Path:
    """``root/{train,val}/<shape>/NNNNN.png``."""
    for split, n, stream in (("train", per_class[0], 0), ("val", per_class[1], 1)):
        images, labels = shapes_arrays(classes, n, seed * 2 + stream, size)
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            folder = root / split / SHAPES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as in the official CIFAR pickles.

    Those load as ``str`` with ``encoding='latin1'`` (torchvision) and as ``bytes`` with
    ``encoding='bytes'`` (the CIFAR website's recipe), like the real files.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def write_shapes_cifar(root: Path, classes: int = 12, per_class: tuple[int, int] = (300, 50), seed: int = 0) -> Path:
    """The same shapes in the official cifar-100-python pickle layout (train, test, meta), with
    the shapes as fine labels and a 2-way coarse label (filled vs outlined/stroked)."""
    root.mkdir(parents=True, exist_ok=True)
    filled = {"circle", "square", "triangle", "diamond", "star", "pentagon", "hexagon", "hbar", "vbar", "dots"}
    coarse_of = [0 if SHAPES[c] in filled else 1 for c in range(classes)]
    for name, n, stream in (("train", per_class[0], 0), ("test", per_class[1], 1)):
        images, labels = shapes_arrays(classes, n, seed * 2 + stream)
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        payload = {b"data": data, b"fine_labels": labels.tolist(), b"coarse_labels": [coarse_of[c] for c in labels]}
        dump_py2(root / name, payload)
    dump_py2(root / "meta", {b"fine_label_names": [s.encode() for s in SHAPES[:classes]],
                             b"coarse_label_names": [b"filled", b"outlined"]})
    return root
