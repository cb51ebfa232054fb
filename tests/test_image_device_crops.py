"""Device crops of the whole-image family against the host path (PIL's crop, flip and
resize, the independent reference): the same canvases to uint8 rounding, the same valid
positions, the same draws."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from voc_jax.image import device_crops
from voc_jax.image.data import Source, canvases
from voc_jax.image.inputs import InputSettings, fit, into_frame, random_crop

PAD = np.array([124, 116, 104], np.uint8)


def host_canvas(rgb, box, flip, side, resize):
    left, top, cw, ch = box
    crop = rgb[top : top + ch, left : left + cw]
    crop = np.ascontiguousarray(crop[:, ::-1] if flip else crop)
    return fit(crop, side, resize, PAD)


def photo(h, w, seed=0):
    """A smooth photo with edges (noise alone would make every resampler differ a lot)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 80 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None] * rng.uniform(
        0.5, 1, 3
    )
    base[h // 3 : h // 2, w // 4 : w // 2] = [250, 20, 30]
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("resize", ["longer", "square"])
@pytest.mark.parametrize(
    ("box", "flip"),
    [
        ((0, 0, 90, 60), False),
        ((10, 5, 41, 33), True),
        ((50, 20, 17, 40), False),
        ((3, 1, 80, 50), True),
    ],  # fmt: skip
)
def test_a_crop_on_the_device_is_pils(resize, box, flip):
    rgb = photo(60, 90)
    frame = into_frame(rgb, 128)
    left, top, cw, ch = box
    for side in (32, 64, 96):
        want, ext = host_canvas(rgb, box, flip, side, resize)
        got = jax.jit(device_crops.fit_crop, static_argnums=5)(
            frame, np.array([60, 90]), np.array([left, top, left + cw, top + ch], np.float32),
            np.array(flip), np.array(ext), side, PAD,
        )  # fmt: skip
        d = np.abs(np.asarray(got) - want.astype(np.float32))
        # PIL works in 8-bit fixed point with rounded intermediates; we are float throughout.
        assert d.mean() < 0.6 and d.max() <= 3.0, (side, d.mean(), d.max())
        outside = np.ones((side, side), bool)
        outside[: ext[0], : ext[1]] = False
        assert np.array_equal(np.asarray(got)[outside], np.broadcast_to(PAD, (outside.sum(), 3)))


def test_pixels_outside_the_photo_in_the_frame_are_never_read():
    rgb = photo(40, 50)
    frame = into_frame(rgb, 64)
    noisy = frame.copy()
    noisy[40:, :] = 255
    noisy[:, 50:] = 0
    args = (np.array([40, 50]), np.array([30, 20, 50, 40], np.float32), np.array(True),
            np.array([32, 32]), 32, PAD)  # fmt: skip
    a = device_crops.fit_crop(frame, *args)
    b = device_crops.fit_crop(noisy, *args)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_photo_larger_than_the_frame_is_scaled_down_once():
    rgb = photo(100, 300)
    frame = into_frame(rgb, 64)
    want = np.asarray(Image.fromarray(rgb).resize((64, 21), Image.BILINEAR))
    assert np.array_equal(frame[:21], want) and not frame[21:].any()


def write_photos(root: Path, shapes):
    records = []
    for i, (h, w) in enumerate(shapes):
        path = root / f"{i:06d}.jpg"
        Image.fromarray(photo(h, w, i)).save(path, quality=95)
        labels = np.zeros(20, np.int8) - 1
        labels[i % 20] = 1
        records.append(_Record(path, w, h, labels))
    return records


@dataclasses.dataclass(frozen=True)
class _Record:
    image_path: Path
    width: int
    height: int
    labels: np.ndarray

    def targets(self) -> np.ndarray:
        return self.labels


SHAPES = [(60, 90), (96, 64), (50, 50), (70, 40), (64, 96), (90, 60), (40, 70)]


@pytest.mark.parametrize("resize", ["longer", "own"])
def test_device_batches_equal_host_batches(tmp_path, resize):
    """The same seeds draw the same crops and flips on both paths; the canvases agree to
    uint8 rounding and the valid positions exactly (own sizes: one canvas shape a batch)."""
    records = write_photos(tmp_path, SHAPES)
    inputs = InputSettings(size=96, scales=(1.0, 1.5), crop_area=(0.3, 1.0), frame=128,
                           resize=resize, bucket=32)  # fmt: skip
    grids = ((3, 3), (4, 4))
    assert inputs.sides == (96, 128)
    host = Source(records, dataclasses.replace(inputs, device_crops=False), grids, PAD, 2)
    dev = Source(records, inputs, grids, PAD, 2)
    assert dev.device_crops and not host.device_crops
    fitter = jax.jit(device_crops.make_fitter(PAD))
    seen_shapes = set()
    for epoch in (0, 3):
        for b in range(dev.batches_per_epoch):
            want = host.train_batch(7, epoch, b)
            got = dev.train_batch(7, epoch, b)
            assert got["count"] == want["count"]
            assert np.array_equal(got["indices"], want["indices"])
            assert np.array_equal(got["valid"], want["valid"])
            assert np.array_equal(got["targets"], want["targets"])
            views = fitter(got)
            shapes = tuple(w.shape[1:3] for w in want["views"])
            assert {canvases(records[i], inputs) for i in got["indices"]} == {shapes}
            for v, w in zip(views, want["views"], strict=True):
                assert v.shape == w.shape
                seen_shapes.add(w.shape[1:3])
                d = np.abs(np.asarray(v) - w.astype(np.float32))
                assert d.mean() < 0.6 and d.max() <= 4.0, (epoch, b, d.mean(), d.max())
    # own: the photos' buckets (64 x 96 for a 60 x 90 photo at scale 1, ...), not squares
    assert len(seen_shapes) == 2 if resize == "longer" else len(seen_shapes) > 4, seen_shapes


def test_the_host_crop_and_its_draws_are_unchanged():
    """random_crop (the host path) applies exactly the box and flip draw_crop gives."""
    rgb = photo(60, 90)
    inputs = InputSettings(crop_area=(0.3, 1.0))
    assert not Source(
        [], dataclasses.replace(inputs, crop_area=(1.0, 1.0)), (), PAD, 1
    ).device_crops
    out = random_crop(rgb, np.random.default_rng([1, 2, 3]), inputs)
    from voc_jax.image.inputs import draw_crop

    (left, top, cw, ch), flip = draw_crop(60, 90, np.random.default_rng([1, 2, 3]), inputs)
    want = rgb[top : top + ch, left : left + cw]
    assert np.array_equal(out, want[:, ::-1] if flip else want)


@pytest.mark.parametrize("resize", ["longer", "own"])
def test_each_epoch_sees_every_photo_once_in_batches_of_one_shape(tmp_path, resize):
    from voc_jax.image.data import batches_per_epoch, order, test_plan, train_plan

    records = write_photos(tmp_path, SHAPES * 3)
    inputs = InputSettings(size=96, resize=resize, bucket=32)
    for epoch in range(3):
        plan = train_plan(records, inputs, 4, seed=5, epoch=epoch)
        assert len(plan) == batches_per_epoch(records, inputs, 4)
        assert sorted(np.concatenate(plan).tolist()) == list(range(len(records)))
        assert all(len({canvases(records[i], inputs) for i in b}) == 1 for b in plan)
        again = train_plan(records, inputs, 4, seed=5, epoch=epoch)
        assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))
        if resize == "longer":  # the order every earlier run saw, unchanged
            assert np.array_equal(np.concatenate(plan), order(len(records), 5, epoch))
    tested = test_plan(records, inputs, 4)
    assert sorted(np.concatenate(tested).tolist()) == list(range(len(records)))
    assert all(len({canvases(records[i], inputs) for i in b}) == 1 for b in tested)
