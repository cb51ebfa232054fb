"""Photos as the whole-image network sees them: one square canvas per scale, so that every
photo of a scale has one shape (one compile), with the grid of map positions that see the
photo rather than padding.

- ``longer``: the photo resized so its longer side fills the canvas (aspect kept), placed at
  the top left; the rest is the weights' mean pixel (zero after normalisation), and the map
  positions over it are masked out of the pooling.
- ``square``: the photo squashed to the canvas (aspect not kept), every position valid.

Resizing is PIL's bilinear filter (antialiased when shrinking). Fine-tuning draws a random
resized crop (torchvision's RandomResizedCrop: area fraction and aspect ratio, uniformly in
log ratio) and a horizontal flip per photo, from a generator seeded by (seed, epoch, photo).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from voc_jax.preprocessing import Preprocessing

RESIZES = ("longer", "square")


@dataclasses.dataclass(frozen=True)
class InputSettings:
    size: int = 448  # the canvas side at scale 1
    resize: str = "longer"  # longer | square
    scales: tuple[float, ...] = (1.0,)  # canvas sides size * s, pooled together
    round_to: int = 32  # canvas sides are multiples of this (the map's stride)
    flip: bool = True  # training: random horizontal flips
    crop_area: tuple[float, float] = (1.0, 1.0)  # training: random resized crop's area range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # ... and its aspect ratio range
    test_flip: bool = False  # evaluation: the mirrored photo's positions pooled in too

    @property
    def sides(self) -> tuple[int, ...]:
        r = self.round_to
        return tuple(max(r, round(self.size * s / r) * r) for s in self.scales)

    @property
    def augments(self) -> bool:
        return self.flip or self.crop_area != (1.0, 1.0)


def pad_value(prep: Preprocessing) -> np.ndarray:
    """The uint8 RGB pixel that normalises to (nearly) zero: the weights' mean."""
    mean = np.asarray(prep.mean, np.float64) / prep.scale
    if prep.channel_order == "BGR":
        mean = mean[::-1]
    return np.clip(np.round(mean), 0, 255).astype(np.uint8)


def fit(rgb: np.ndarray, side: int, resize: str, pad: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(canvas [side, side, 3] uint8, (height, width) of the photo on it)."""
    h, w = rgb.shape[:2]
    if resize == "square":
        size = (side, side)
    elif resize == "longer":
        f = side / max(h, w)
        size = (max(1, min(side, round(w * f))), max(1, min(side, round(h * f))))
    else:
        raise ValueError(f"image.resize {resize!r}: expected one of {', '.join(RESIZES)}")
    resized = rgb if (size[0], size[1]) == (w, h) else _resize(rgb, size)
    if size == (side, side):
        return np.ascontiguousarray(resized), (side, side)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[...] = pad
    canvas[: size[1], : size[0]] = resized
    return canvas, (size[1], size[0])


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def valid_grid(extent: tuple[int, int], side: int, grid: tuple[int, int]) -> np.ndarray:
    """bool [gh, gw]: the map positions over the photo (the top-left ``extent`` of the
    canvas): each axis's first ceil(positions * extent / side), at least one."""
    rows = max(1, math.ceil(grid[0] * extent[0] / side - 1e-9))
    cols = max(1, math.ceil(grid[1] * extent[1] / side - 1e-9))
    out = np.zeros(grid, bool)
    out[:rows, :cols] = True
    return out


def random_crop(rgb: np.ndarray, rng: np.random.Generator, settings: InputSettings) -> np.ndarray:
    """torchvision's RandomResizedCrop box (10 tries, then the whole photo) and a flip."""
    h, w = rgb.shape[:2]
    lo, hi = settings.crop_area
    if (lo, hi) != (1.0, 1.0):
        log_ratio = np.log(settings.crop_ratio)
        for _ in range(10):
            area = h * w * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(*log_ratio))
            cw = round(math.sqrt(area * ratio))
            ch = round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                rgb = rgb[top : top + ch, left : left + cw]
                break
    if settings.flip and rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)
