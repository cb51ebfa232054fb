"""Photos as the whole-image network sees them: one square canvas per scale, so that every
photo of a scale has one shape (one compile), with the grid of map positions that see the
photo rather than padding.

- ``longer``: the photo resized so its longer side fills the canvas (aspect kept), placed at
  the top left; the rest is the weights' mean pixel (zero after normalisation), and the map
  positions over it are masked out of the pooling.
- ``square``: the photo squashed to the canvas (aspect not kept), every position valid.
- ``own``: the photo at its own size (times the scale; scaled down only where its longer side
  would pass the canvas side), on a canvas whose sides are its own rounded up to a multiple of
  ``bucket``: photos of one bucket share a shape, so compiles stay few (one per bucket), and
  little of each canvas is padding. Batches are drawn within a bucket (``data.Source``).

Resizing is PIL's bilinear filter (antialiased when shrinking). Fine-tuning draws a random
resized crop (torchvision's RandomResizedCrop: area fraction and aspect ratio, uniformly in
log ratio) and a horizontal flip per photo, from a generator seeded by (seed, epoch, photo);
they are applied on the device (``device_crops``: ``image.crops_on``) or here on the host.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from voc_jax.preprocessing import Preprocessing

RESIZES = ("longer", "square", "own")


@dataclasses.dataclass(frozen=True)
class InputSettings:
    size: int = 448  # the canvas side at scale 1
    resize: str = "longer"  # longer | square | own
    scales: tuple[float, ...] = (1.0,)  # canvas sides size * s, pooled together
    round_to: int = 32  # canvas sides are multiples of this (the map's stride)
    flip: bool = True  # training: random horizontal flips
    crop_area: tuple[float, float] = (1.0, 1.0)  # training: random resized crop's area range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # ... and its aspect ratio range
    test_flip: bool = False  # evaluation: the mirrored photo's positions pooled in too
    device_crops: bool = True  # training from photos: crops and flips resampled on the device
    frame: int = 512  # device crops: the photos' frame (larger ones scaled down once)
    bucket: int = 64  # own: canvas sides are the photo's rounded up to a multiple of this

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


def fit_into(height: int, width: int, box: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a photo resized to fit ``box`` with its aspect kept."""
    f = min(box[0] / height, box[1] / width)
    return (max(1, min(box[0], round(height * f))), max(1, min(box[1], round(width * f))))


def placement(
    photo: tuple[int, int], crop: tuple[int, int], side: int, scale: float, settings: InputSettings
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(extent, canvas): where a ``crop`` (height, width) of a ``photo`` lands at one scale
    (canvas side ``side``), and the canvas' (height, width). The whole photo is its own crop."""
    if settings.resize == "square":
        return (side, side), (side, side)
    if settings.resize == "longer":
        return fit_into(*crop, (side, side)), (side, side)
    h, w = photo
    f = min(scale, side / max(h, w))
    box = (max(1, min(side, round(h * f))), max(1, min(side, round(w * f))))
    b = settings.bucket
    canvas = (min(side, -(-box[0] // b) * b), min(side, -(-box[1] // b) * b))
    return fit_into(*crop, box), canvas


def render(
    rgb: np.ndarray, extent: tuple[int, int], canvas: tuple[int, int], pad: np.ndarray
) -> np.ndarray:
    """The photo resized to ``extent`` at the top left of a ``canvas``-shaped uint8 array,
    the rest the padding pixel."""
    size = (extent[1], extent[0])
    h, w = rgb.shape[:2]
    resized = rgb if (w, h) == size else _resize(rgb, size)
    if tuple(extent) == tuple(canvas):
        return np.ascontiguousarray(resized)
    out = np.empty((*canvas, 3), np.uint8)
    out[...] = pad
    out[: extent[0], : extent[1]] = resized
    return out


def fit(
    rgb: np.ndarray,
    side: int,
    settings: InputSettings | str,
    pad: np.ndarray,
    *,
    scale: float = 1.0,
    photo: tuple[int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """(canvas uint8, (height, width) of ``rgb`` on it): ``rgb`` (a crop of ``photo``, or the
    whole photo) placed as ``placement`` says. ``settings`` may be just the resize name."""
    if isinstance(settings, str):
        if settings not in RESIZES:
            raise ValueError(f"image.resize {settings!r}: expected one of {', '.join(RESIZES)}")
        settings = InputSettings(resize=settings)
    crop = rgb.shape[:2]
    extent, canvas = placement(photo or crop, crop, side, scale, settings)
    return render(rgb, extent, canvas, pad), extent


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def valid_grid(
    extent: tuple[int, int], canvas: int | tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """bool [gh, gw]: the map positions over the photo (the top-left ``extent`` of the
    canvas, a side or (height, width)): each axis's first ceil(positions * extent / canvas),
    at least one."""
    ch, cw = (canvas, canvas) if isinstance(canvas, int) else canvas
    rows = max(1, math.ceil(grid[0] * extent[0] / ch - 1e-9))
    cols = max(1, math.ceil(grid[1] * extent[1] / cw - 1e-9))
    out = np.zeros(grid, bool)
    out[:rows, :cols] = True
    return out


def draw_crop(height: int, width: int, rng: np.random.Generator,
              settings: InputSettings) -> tuple[tuple[int, int, int, int], bool]:  # fmt: skip
    """torchvision's RandomResizedCrop box (10 tries, then the whole photo) as (left, top,
    width, height), and whether to flip: the draws both crop paths share."""
    box = (0, 0, width, height)
    lo, hi = settings.crop_area
    if (lo, hi) != (1.0, 1.0):
        log_ratio = np.log(settings.crop_ratio)
        for _ in range(10):
            area = height * width * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(*log_ratio))
            cw = round(math.sqrt(area * ratio))
            ch = round(math.sqrt(area / ratio))
            if 0 < cw <= width and 0 < ch <= height:
                top = int(rng.integers(0, height - ch + 1))
                left = int(rng.integers(0, width - cw + 1))
                box = (left, top, cw, ch)
                break
    return box, bool(settings.flip and rng.random() < 0.5)


def random_crop(rgb: np.ndarray, rng: np.random.Generator, settings: InputSettings) -> np.ndarray:
    """The host path: the drawn crop and flip applied to the pixels."""
    (left, top, cw, ch), flip = draw_crop(rgb.shape[0], rgb.shape[1], rng, settings)
    rgb = rgb[top : top + ch, left : left + cw]
    if flip:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


def into_frame(rgb: np.ndarray, frame: int) -> np.ndarray:
    """The photo at the top left of a ``frame x frame`` uint8 array (zeros beyond it), scaled
    down once (aspect kept) where it is larger: what device crops read."""
    h, w = rgb.shape[:2]
    if max(h, w) > frame:
        f = frame / max(h, w)
        rgb = _resize(rgb, (max(1, min(frame, round(w * f))), max(1, min(frame, round(h * f)))))
    out = np.zeros((frame, frame, 3), np.uint8)
    out[: rgb.shape[0], : rgb.shape[1]] = rgb
    return out
