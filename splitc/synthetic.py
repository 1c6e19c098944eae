"""Embedded synthetic image dataset with a known two-level class hierarchy.

Used by ``splitc learn --data synthetic`` to show that SplitNet's learned branches follow
semantic groups, so it is built to be *not* trivially separable:

* 4 superclasses x 5 classes = 20 classes of 32x32 RGB images, generated from a seed.
* A **superclass** is a kind of shape/texture primitive (all in :data:`CLASS_NAMES`):

  - ``stripes`` -- a 1-D square-wave grating in a soft disk window.  Classes:
    horizontal wide (period 7-9 px), horizontal narrow (3.5-4.5 px), vertical wide,
    vertical narrow, diagonal (medium period, +45 or -45 degrees at random).
  - ``rings`` -- round shapes around a random centre.  Classes: one thin ring, one thick
    ring (annulus), filled disk, two concentric thin rings, bullseye (3-4 rings + centre dot).
  - ``checks`` -- 2-D periodic / blob textures in a soft disk window.  Classes: coarse
    checkerboard (cell 4.5-6 px), fine checkerboard (cell 2.4-3 px), diamond checkerboard
    (rotated 45 degrees), polka dots on a lattice, random smooth blobs.
  - ``lines`` -- thin-stroke glyphs made of line segments.  Classes: plus ``+``, cross ``x``,
    ``T``, six-armed asterisk, ``H``.

* Nuisances shared by every class, so that only shape/texture is informative: random
  position (centre within +-5 px), scale (radius / arm length / window size), small rotation
  jitter (+-8..10 degrees), phase, foreground and background colours drawn independently
  and uniformly in RGB (resampled until their luminance differs by >= 0.3 so the pattern
  survives greyscale conversion), a random per-channel illumination gradient and Gaussian
  pixel noise.  Colour therefore carries (almost) no information about the class.
* Mirroring: every class is invariant under horizontal flip (the diagonal-stripe class
  contains both diagonals), so flip augmentation never turns one class into another.

Generation is vectorised numpy (one array op per class over all its samples); 20 x 600
images take 1-2 s on 2 cores (20 x 300: ~0.7 s).  Results are cached in memory per
``(n_per_class, seed, stream)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

NUM_SUPERCLASSES = 4
CLASSES_PER_SUPERCLASS = 5
NUM_CLASSES = NUM_SUPERCLASSES * CLASSES_PER_SUPERCLASS
IMAGE_SIZE = 32
SUPERCLASS_NAMES: tuple[str, ...] = ("stripes", "rings", "checks", "lines")
CLASS_NAMES: tuple[str, ...] = (
    "stripes_horizontal_wide", "stripes_horizontal_narrow", "stripes_vertical_wide",
    "stripes_vertical_narrow", "stripes_diagonal",
    "ring_thin", "ring_thick", "disk", "rings_double", "bullseye",
    "checker_coarse", "checker_fine", "checker_diamond", "dots", "blobs",
    "glyph_plus", "glyph_cross", "glyph_t", "glyph_asterisk", "glyph_h",
)
SUPERCLASS_OF: tuple[int, ...] = tuple(c // CLASSES_PER_SUPERCLASS for c in range(NUM_CLASSES))
# (train, val) images per class for each ``synthetic:<size>`` variant.
SIZES: dict[str, tuple[int, int]] = {"default": (500, 100), "fast": (60, 20)}

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


def _local(rng: np.random.Generator, n: int, angle_deg: Array) -> tuple[Array, Array, Array]:
    """Pixel coordinates rotated by ``angle_deg`` about a random centre; returns (u, v, r)."""
    cx = IMAGE_SIZE / 2 + _u(rng, n, -5, 5)
    cy = IMAGE_SIZE / 2 + _u(rng, n, -5, 5)
    x, y = _XX - cx, _YY - cy
    th = np.deg2rad(angle_deg)
    u = x * np.cos(th) + y * np.sin(th)
    v = -x * np.sin(th) + y * np.cos(th)
    return u, v, np.hypot(x, y)


def _window(rng: np.random.Generator, n: int, r: Array) -> Array:
    """Soft disk window of random radius: textures are patches, not full-frame fills."""
    return _soft(r - _u(rng, n, 10, 16))


def _stripes(angles: tuple[float, ...], period: tuple[float, float]) -> Renderer:
    """Square-wave grating varying along one of ``angles`` (0 = vertical stripes)."""
    def render(rng: np.random.Generator, n: int) -> Array:
        base = rng.choice(np.asarray(angles, np.float32), size=(n, 1, 1))
        u, _, r = _local(rng, n, base + _u(rng, n, -8, 8))
        phase = _u(rng, n, 0, 2 * np.pi)
        return _square(np.sin(2 * np.pi * u / _u(rng, n, *period) + phase)) * _window(rng, n, r)
    return render


def _rings(kind: str) -> Renderer:
    """Round shapes: ring count and thickness decide the class."""
    def render(rng: np.random.Generator, n: int) -> Array:
        _, _, r = _local(rng, n, np.zeros((n, 1, 1), np.float32))
        if kind == "thin":
            return _soft(np.abs(r - _u(rng, n, 6, 12)) - 0.8)
        if kind == "thick":
            return _soft(np.abs(r - _u(rng, n, 8, 12)) - 2.5)
        if kind == "disk":
            return _soft(r - _u(rng, n, 6, 11))
        big = _u(rng, n, 9, 13)
        if kind == "double":
            return np.maximum(_soft(np.abs(r - big) - 0.8), _soft(np.abs(r - 0.5 * big) - 0.8))
        return _square(np.cos(2 * np.pi * r / _u(rng, n, 3.2, 4.0))) * _soft(r - big)
    return render


def _checker(angle: float, cell: tuple[float, float]) -> Renderer:
    """Checkerboard with cell size ``cell`` px, rotated by ``angle`` (+-8 degrees jitter)."""
    def render(rng: np.random.Generator, n: int) -> Array:
        u, v, r = _local(rng, n, angle + _u(rng, n, -8, 8))
        c = _u(rng, n, *cell)
        wave = np.sin(np.pi * u / c + _u(rng, n, 0, 6.3)) * np.sin(np.pi * v / c + _u(rng, n, 0, 6.3))
        return _square(wave) * _window(rng, n, r)
    return render


def _dots(rng: np.random.Generator, n: int) -> Array:
    """Polka dots: disks of radius 0.28 * lattice period on a square lattice."""
    u, v, r = _local(rng, n, _u(rng, n, -8, 8))
    p = _u(rng, n, 5, 7)
    du = ((u / p + _u(rng, n, 0, 1)) % 1.0 - 0.5) * p
    dv = ((v / p + _u(rng, n, 0, 1)) % 1.0 - 0.5) * p
    return _soft(np.hypot(du, dv) - 0.28 * p) * _window(rng, n, r)


def _blobs(rng: np.random.Generator, n: int) -> Array:
    """Irregular blobs: thresholded 5x5 Gaussian noise upsampled bilinearly."""
    coarse = torch.from_numpy(rng.standard_normal((n, 1, 5, 5)).astype(np.float32))
    fine = F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                         align_corners=False)[:, 0].numpy()
    _, _, r = _local(rng, n, np.zeros((n, 1, 1), np.float32))
    return _square(fine) * _window(rng, n, r)


_S = 0.7071
_GLYPHS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    # Segments (x0, y0, x1, y1) in arm-length units, y pointing down.
    "plus": ((-1, 0, 1, 0), (0, -1, 0, 1)),
    "cross": ((-_S, -_S, _S, _S), (-_S, _S, _S, -_S)),
    "t": ((-1, -1, 1, -1), (0, -1, 0, 1)),
    "asterisk": ((0, -1, 0, 1), (-0.866, -0.5, 0.866, 0.5), (-0.866, 0.5, 0.866, -0.5)),
    "h": ((-1, -1, -1, 1), (1, -1, 1, 1), (-1, 0, 1, 0)),
}


def _glyph(name: str) -> Renderer:
    """Thin-stroke glyph: union of segments, random arm length, stroke and rotation."""
    def render(rng: np.random.Generator, n: int) -> Array:
        u, v, _ = _local(rng, n, _u(rng, n, -10, 10))
        arm = _u(rng, n, 6, 11)
        u, v = u / arm, v / arm
        dist = np.full(u.shape, np.inf, np.float32)
        for x0, y0, x1, y1 in _GLYPHS[name]:
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
            dist = np.minimum(dist, np.hypot(u - x0 - t * dx, v - y0 - t * dy))
        return _soft(dist * arm - _u(rng, n, 0.8, 1.3))
    return render


_RENDERERS: tuple[Renderer, ...] = (
    _stripes((90.0,), (7.0, 9.0)), _stripes((90.0,), (3.5, 4.5)),
    _stripes((0.0,), (7.0, 9.0)), _stripes((0.0,), (3.5, 4.5)),
    _stripes((45.0, -45.0), (5.0, 6.5)),
    _rings("thin"), _rings("thick"), _rings("disk"), _rings("double"), _rings("bullseye"),
    _checker(0.0, (4.5, 6.0)), _checker(0.0, (2.4, 3.0)), _checker(45.0, (3.5, 4.5)),
    _dots, _blobs,
    _glyph("plus"), _glyph("cross"), _glyph("t"), _glyph("asterisk"), _glyph("h"),
)
assert len(_RENDERERS) == len(CLASS_NAMES) == NUM_CLASSES


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


def _paint(rng: np.random.Generator, mask: Array) -> Array:
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
    rng = np.random.default_rng([seed, stream])
    images = [_paint(rng, render(rng, n_per_class).astype(np.float32)) for render in _RENDERERS]
    labels = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(labels)
