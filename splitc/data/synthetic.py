"""Embedded synthetic image dataset with a known two-level class hierarchy.

Used by ``splitc learn --data synthetic`` to show that SplitNet's learned branches follow
semantic groups, so it is built to be *not* trivially separable:

* 4 superclasses x 5 classes = 20 classes of 32x32 RGB images, generated from a seed.
* Every image is one large **silhouette** filled with a **texture**; silhouettes are scaled
  towards the area of a disk of radius 8.5-11.5 px (factor clipped to 0.8-1.4), so that the
  amount of texture is hardly a cue.
* The **superclass** is the texture, a trait every class of the superclass shares and that
  covers most of the object, so the network's own features group the classes by it
  (docs/METHOD.md §8: a taxonomy can only be recovered if it matches the network's similarity):
  ``stripes`` (square-wave grating, period 5-6.5 px), ``dots`` (dot lattice, period 5-6.5 px),
  ``speckle`` (random pixels, aperiodic 1 px grain) and ``flat`` (no texture).
  Orientation, period and phase are random per image. The periodic textures are coarse enough
  to survive resnet20's stride-2 stage before the split input of a last-stage split; a
  checkerboard in place of speckle was too close to the dots there.
* The **class** is the silhouette, from a set of five that belongs to that superclass alone
  (:data:`SHAPES`): the finer trait, specific to the superclass, that a plain resnet20 needs
  for class accuracy (the texture alone gives at most 1 in 5).
* Nuisances shared by every class: position (centre within +-5 px), scale, rotation (any
  angle, so no orientation tells a class), texture phase, foreground and background colours
  drawn independently and uniformly in RGB (resampled until their luminance differs by >= 0.3
  so the pattern survives greyscale conversion), a random per-channel illumination gradient
  and Gaussian pixel noise. Colour therefore carries (almost) no information about the class
  or the superclass.
* Mirroring: every silhouette has a mirror axis, so a horizontal flip is one more rotation and
  flip augmentation never turns one class into another.

Generation is vectorised numpy (one array op per class over all its samples); 20 x 600
images take 1-2 s. Results are cached in memory per ``(n_per_class, seed, stream)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

NUM_SUPERCLASSES = 4
CLASSES_PER_SUPERCLASS = 5
NUM_CLASSES = NUM_SUPERCLASSES * CLASSES_PER_SUPERCLASS
IMAGE_SIZE = 32
SUPERCLASS_NAMES: tuple[str, ...] = ("stripes", "dots", "speckle", "flat")
# Five silhouettes per superclass, in superclass order; similar outlines sit in different
# superclasses, so the texture, not the outline, is what the classes of a superclass share.
SHAPES: tuple[str, ...] = (
    "disk", "square", "plus", "crescent", "bowtie",
    "hexagon", "triangle", "ring", "l_shape", "quarter",
    "ellipse", "star", "frame", "t_shape", "pair",
    "half_disk", "diamond", "trefoil", "bar", "semi_ring",
)
CLASS_NAMES: tuple[str, ...] = tuple(f"{SUPERCLASS_NAMES[i // CLASSES_PER_SUPERCLASS]}_{shape}"
                                     for i, shape in enumerate(SHAPES))
SUPERCLASS_OF: tuple[int, ...] = tuple(c // CLASSES_PER_SUPERCLASS for c in range(NUM_CLASSES))
# (train, val) images per class for each ``synthetic:<size>`` variant.
SIZES: dict[str, tuple[int, int]] = {"default": (500, 100), "fast": (60, 20), "tiny": (8, 4)}

Array = np.ndarray
Renderer = Callable[[np.random.Generator, int], Array]  # -> (n, S, S) mask in [0, 1]

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)[:, None] + 0.5


def _u(rng: np.random.Generator, n: int, lo: float, hi: float) -> Array:
    """Per-sample uniform parameter shaped (n, 1, 1) so it broadcasts over pixels."""
    return rng.uniform(lo, hi, size=(n, 1, 1)).astype(np.float32)


def _soft(dist: Array) -> Array:
    """Anti-aliased inside-mask from a signed distance (negative inside), ~1 px edge."""
    return np.clip(0.5 - dist, 0.0, 1.0)


def _square(wave: Array) -> Array:
    """Soft square wave from a sinusoid: crisp edges but still anti-aliased."""
    return np.clip(0.5 + 2.0 * wave, 0.0, 1.0)


def _local(rng: np.random.Generator, n: int, jitter: float = 5.0) -> tuple[Array, Array]:
    """Pixel coordinates about a random centre, rotated by a random angle; returns (u, v)."""
    cx = IMAGE_SIZE / 2 + _u(rng, n, -jitter, jitter)
    cy = IMAGE_SIZE / 2 + _u(rng, n, -jitter, jitter)
    x, y = _XX - cx, _YY - cy
    th = _u(rng, n, 0, 2 * np.pi)
    return x * np.cos(th) + y * np.sin(th), -x * np.sin(th) + y * np.cos(th)


# --- textures (superclass) -----------------------------------------------------------------

def _texture(kind: str, rng: np.random.Generator, n: int) -> Array:
    """A full-frame texture mask in [0, 1] with random orientation, scale and phase."""
    u, v = _local(rng, n, jitter=16.0)
    if kind == "stripes":
        return _square(np.sin(2 * np.pi * u / _u(rng, n, 5.0, 6.5)))
    if kind == "dots":
        p = _u(rng, n, 5.0, 6.5)
        du, dv = (u / p % 1.0 - 0.5) * p, (v / p % 1.0 - 0.5) * p
        return _soft(np.hypot(du, dv) - 0.38 * p)
    if kind == "speckle":  # aperiodic grain at the pixel scale: no period, no orientation
        return (rng.random(u.shape) < 0.5).astype(np.float32)
    return np.ones(u.shape, np.float32)


# --- silhouettes (class) -------------------------------------------------------------------

def _box(u: Array, v: Array, cu: float, cv: float, hu: float, hv: float) -> Array:
    """Signed distance (approximate outside corners) to an axis-aligned box."""
    return np.maximum(np.abs(u - cu) - hu, np.abs(v - cv) - hv)


def _polygon(u: Array, v: Array, k: int, inradius: Array) -> Array:
    sector = (np.arctan2(v, u) % (2 * np.pi / k)) - np.pi / k
    return np.hypot(u, v) * np.cos(sector) - inradius


def _silhouette(shape: str, u: Array, v: Array, R: Array) -> Array:
    """Signed distance to ``shape`` of size ``R`` in local coordinates (negative inside)."""
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    table: dict[str, Callable[[], Array]] = {
        "disk": lambda: r - R,
        "square": lambda: _polygon(u, v, 4, 0.75 * R),
        "hexagon": lambda: _polygon(u, v, 6, 0.85 * R),
        "triangle": lambda: _polygon(u, v, 3, 0.55 * R),
        "ring": lambda: np.abs(r - 0.72 * R) - 0.28 * R,
        "half_disk": lambda: np.maximum(r - 1.1 * R, -u),
        "semi_ring": lambda: np.maximum(np.abs(r - 0.75 * R) - 0.28 * R, -u),
        "quarter": lambda: np.maximum(r - 1.3 * R, np.maximum(-u, -v)),
        "ellipse": lambda: (np.hypot(u / R, v / (0.5 * R)) - 1.0) * 0.5 * R,
        "bar": lambda: _box(u, v, 0, 0, R, 0.35 * R),
        "diamond": lambda: (np.abs(u) / R + np.abs(v) / (0.55 * R) - 1.0) * 0.5 * R,
        "plus": lambda: np.minimum(_box(u, v, 0, 0, R, 0.3 * R), _box(u, v, 0, 0, 0.3 * R, R)),
        "t_shape": lambda: np.minimum(_box(u, v, 0, -0.65 * R, R, 0.35 * R), _box(u, v, 0, 0, 0.35 * R, R)),
        "l_shape": lambda: np.minimum(_box(u, v, -0.65 * R, 0, 0.35 * R, R), _box(u, v, 0, 0.65 * R, R, 0.35 * R)),
        "frame": lambda: np.maximum(np.maximum(np.abs(u), np.abs(v)) - 0.8 * R,
                                    0.42 * R - np.maximum(np.abs(u), np.abs(v))),
        "pair": lambda: np.minimum(np.hypot(u - 0.55 * R, v), np.hypot(u + 0.55 * R, v)) - 0.45 * R,
        "crescent": lambda: np.maximum(r - R, 0.85 * R - np.hypot(u - 0.5 * R, v)),
        "bowtie": lambda: np.maximum(np.abs(v) - 0.8 * np.abs(u), np.abs(u) - R),
        "star": lambda: r - R * (0.62 + 0.38 * np.cos(5 * theta)),
        "trefoil": lambda: r - R * (0.6 + 0.4 * np.cos(3 * theta)),
    }
    return table[shape]()


def _area_scale(shape: str) -> float:
    """Size factor that gives ``shape`` the area of a disk (clipped to 0.8-1.4), so that the
    amount of texture does not tell the class: only the outline does."""
    g = np.linspace(-3, 3, 241, dtype=np.float32)
    u, v = np.meshgrid(g, g)
    area = float((_silhouette(shape, u, v, np.float32(1.0)) < 0).mean()) * 36.0
    return float(np.clip(np.sqrt(np.pi / area), 0.8, 1.4))


def _renderer(texture: str, shape: str) -> Renderer:
    scale = _area_scale(shape)

    def render(rng: np.random.Generator, n: int) -> Array:
        u, v = _local(rng, n)
        R = _u(rng, n, 8.5, 11.5) * scale
        return _soft(_silhouette(shape, u, v, R)) * _texture(texture, rng, n)
    return render


_RENDERERS: tuple[Renderer, ...] = tuple(_renderer(SUPERCLASS_NAMES[SUPERCLASS_OF[c]], SHAPES[c])
                                         for c in range(NUM_CLASSES))


def _colours(rng: np.random.Generator, n: int) -> tuple[Array, Array]:
    """Independent uniform RGB fore/background pairs with luminance contrast >= 0.3."""
    lum = np.array([0.299, 0.587, 0.114], np.float32)
    fg = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    bg = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    bad = np.abs((fg - bg) @ lum) < 0.3
    while bad.any():  # rejection sampling; ~half accepted per round
        fg[bad] = rng.uniform(0, 1, (int(bad.sum()), 3))
        bg[bad] = rng.uniform(0, 1, (int(bad.sum()), 3))
        bad = np.abs((fg - bg) @ lum) < 0.3
    return fg[:, :, None, None], bg[:, :, None, None]


def paint(rng: np.random.Generator, mask: Array) -> Array:
    """Colourise a (n, S, S) mask and add illumination gradient and pixel noise -> uint8."""
    n = mask.shape[0]
    fg, bg = _colours(rng, n)
    img = bg + (fg - bg) * mask[:, None]
    slope = rng.uniform(-0.15, 0.15, (n, 3, 2, 1, 1)).astype(np.float32)
    centred = (np.stack([_XX, _YY]) - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2)  # (2, 1, S, S)
    img += slope[:, :, 0] * centred[0] + slope[:, :, 1] * centred[1]
    img += rng.standard_normal(img.shape).astype(np.float32) * _u(rng, n, 0.02, 0.08)[:, None]
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


@lru_cache(maxsize=4)
def generate(n_per_class: int, seed: int, stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n_per_class`` images of every class; deterministic in ``(seed, stream)``.

    ``stream`` separates splits (0 = train, 1 = val) so they never share images.
    Returns ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)`` with
    ``N = NUM_CLASSES * n_per_class``, grouped by class.  Cached: treat as read-only.
    """
    return render_classes(_RENDERERS, n_per_class, seed, stream)


def render_classes(renderers: Sequence[Renderer], n_per_class: int,
                   seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_per_class`` painted images per renderer (class ``i`` = ``renderers[i]``), one random
    stream for all of them in class order: what every built-in shape data set's ``generate`` is."""
    rng = np.random.default_rng([seed, stream])
    images = [paint(rng, render(rng, n_per_class).astype(np.float32)) for render in renderers]
    labels = np.repeat(np.arange(len(renderers)), n_per_class)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(labels)
