"""voc_jax/data/crops.py against PIL on real VOC images, and its equivalent fast paths."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from voc_jax.data import crops
from voc_jax.data.crops import crop_batch, share_intervals
from voc_jax.preprocessing import NEON, TORCHVISION

# Jitted as the train step uses them: one program a call, where op by op each slice and
# gather compiled a program of its own (70 for one test).
crop_patches = jax.jit(crops.crop_patches, static_argnums=3)
crop_patches_shared_rows = jax.jit(crops.crop_patches_shared_rows, static_argnums=5)
crop_and_normalize = jax.jit(crops.crop_and_normalize, static_argnums=(3, 4))

CANVAS = 500


def real_images(shared: Path, n: int) -> list[Path]:
    jpegs = sorted((shared / "voc2007-subset/VOCdevkit/VOC2007/JPEGImages").glob("*.jpg"))
    return jpegs[:: max(1, len(jpegs) // n)][:n]


def on_canvas(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    w, h = image.size
    canvas[:h, :w] = np.asarray(image)
    return canvas[None], np.array([[h, w]], np.int32)


def integer_boxes(rng, w, h, n, low, high):
    boxes = []
    for _ in range(n):
        bw = int(rng.integers(low, min(high, w) + 1))
        bh = int(np.clip(bw * rng.uniform(0.7, 1.4), 2, h))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        boxes.append((x0, y0, x0 + bw, y0 + bh))
    return np.array(boxes)


@pytest.mark.parametrize(
    ("patch", "low", "high"),
    [(64, 8, 60), (64, 70, 400), (224, 20, 200), (224, 230, 500)],
    ids=["up-64", "down-64", "up-224", "down-224"],
)
def test_matches_pil_on_real_images(shared_data, patch, low, high):
    rng = np.random.default_rng(patch + low)
    crop = jax.jit(lambda im, s, b: crop_patches(im, s, b, patch))
    diffs = []
    for path in real_images(shared_data, 6):
        image = Image.open(path).convert("RGB")
        boxes = integer_boxes(rng, *image.size, 6, low, high)
        got = np.asarray(crop(*on_canvas(image), boxes[None].astype(np.float32)))[0]
        for box, patch_out in zip(boxes, got, strict=True):
            want = np.asarray(image.crop(tuple(box)).resize((patch, patch), Image.BILINEAR))
            diffs.append(np.abs(patch_out - want.astype(np.float32)).ravel())
    d = np.concatenate(diffs)
    # PIL works in 8-bit fixed point with a rounded intermediate; we are float throughout.
    assert d.mean() <= 1.0 and np.percentile(d, 99) <= 4.0, (d.mean(), np.percentile(d, 99))


def test_padding_is_never_read():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 120, 90, 3), np.uint8)
    zeros = np.zeros((1, CANVAS, CANVAS, 3), np.uint8)
    white = np.full((1, CANVAS, CANVAS, 3), 255, np.uint8)
    zeros[:, :120, :90] = image
    white[:, :120, :90] = image
    boxes = np.array([[[60.0, 80.0, 90.0, 120.0], [0.0, 0.0, 90.0, 120.0]]], np.float32)
    size = np.array([[120, 90]])
    a = crop_patches(zeros, size, boxes, 32)
    b = crop_patches(white, size, boxes, 32)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fractional_boxes_are_continuous():
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, (1, 64, 64, 3), np.uint8)
    size = np.array([[64, 64]])
    box = np.array([[[10.0, 12.0, 40.0, 44.0]]], np.float32)
    base = np.asarray(crop_patches(canvas, size, box, 16))
    nudged = np.asarray(crop_patches(canvas, size, box + 1e-3, 16))
    assert np.abs(base - nudged).max() < 0.5
    half = np.asarray(crop_patches(canvas, size, box + 0.5, 16))
    assert np.abs(base - half).max() > 1.0  # sub-pixel shifts are resampled, not rounded


def portrait_and_landscape_batch(rng):
    images = np.zeros((2, 96, 96, 3), np.uint8)
    images[0, :80, :60] = rng.integers(0, 256, (80, 60, 3))  # portrait
    images[1, :50, :90] = rng.integers(0, 256, (50, 90, 3))  # landscape
    sizes = np.array([[80, 60], [50, 90]], np.int32)
    boxes = np.stack(
        [
            np.array([[0, 0, 40, 40], [10, 30, 50, 70], [20, 0, 60, 40], [0, 40, 40, 80]]),
            np.array([[0, 0, 40, 40], [50, 10, 90, 50], [20, 10, 60, 50], [0, 10, 40, 50]]),
        ]
    ).astype(np.float32)
    return images, sizes, boxes


def test_shared_rows_and_transposed_paths_equal_plain():
    rng = np.random.default_rng(2)
    images, sizes, boxes = portrait_and_landscape_batch(rng)
    want = np.asarray(crop_patches(images, sizes, boxes, 24))
    # Shared rows without transposition.
    rows = [share_intervals(b[:, [1, 3]], 8) for b in boxes]
    got = crop_patches_shared_rows(
        images,
        sizes,
        np.stack([r[0] for r in rows]),
        np.stack([r[1] for r in rows]),
        boxes[:, :, [0, 2]],
        24,
    )
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-3)
    # The pipeline's form: the portrait image (0) uses column intervals and is transposed.
    flip = np.array([True, False])
    row_axis = [[0, 2], [1, 3]]
    col_axis = [[1, 3], [0, 2]]
    rows = [share_intervals(b[:, row_axis[i]], 8) for i, b in enumerate(boxes)]
    batch = {
        "image": images,
        "image_size": sizes,
        "row_intervals": np.stack([r[0] for r in rows]),
        "row_index": np.stack([r[1] for r in rows]),
        "col_intervals": np.stack([b[:, col_axis[i]] for i, b in enumerate(boxes)]),
        "transposed": flip,
    }
    got = jax.jit(lambda b: crop_batch(b, 24))(batch)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-3)
    assert len(np.unique(boxes[0][:, [0, 2]], axis=0)) == 3  # shared: 3 intervals for 4 patches


def test_share_intervals_limit():
    with pytest.raises(ValueError, match="max_rows=2"):
        share_intervals(np.array([[0, 1], [0, 2], [0, 3]]), 2)


@pytest.mark.parametrize("prep", [TORCHVISION, NEON], ids=["torchvision", "neon"])
def test_normalisation_follows_metadata(prep):
    rng = np.random.default_rng(3)
    canvas = rng.integers(0, 256, (1, 40, 40, 3), np.uint8)
    size = np.array([[40, 40]])
    boxes = np.array([[[0.0, 0.0, 40.0, 40.0]]], np.float32)
    raw = np.asarray(crop_patches(canvas, size, boxes, 40))  # identity resize
    np.testing.assert_allclose(raw[0, 0], canvas[0], atol=1e-3)
    got = np.asarray(crop_and_normalize(canvas, size, boxes, 40, prep))
    x = raw[..., ::-1] if prep.channel_order == "BGR" else raw
    want = (x * prep.scale - np.array(prep.mean)) / np.array(prep.std)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
