"""Batches of the whole-image family: photos decoded, augmented and fitted to each scale's
canvas (or a frozen backbone's cached maps), their valid map positions and their labels.
Batch ``b`` of epoch ``e`` depends only on (seed, e, b): a resumed run sees the same data.
The last batch is padded with the first photo, its labels all 0 (ignored by the loss)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from voc_jax import feature_cache as fc
from voc_jax.data.pipeline import decode_image
from voc_jax.data.voc import VocRecord
from voc_jax.image import cache as map_cache
from voc_jax.image.inputs import (
    InputSettings,
    draw_crop,
    fit_into,
    into_frame,
    placement,
    random_crop,
    render,
    valid_grid,
)


def order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


def photo_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def chunks(n: int, batch: int) -> int:
    return -(-n // batch)


Canvases = tuple[tuple[int, int], ...]  # one (height, width) per scale


def canvases(record: VocRecord, inputs: InputSettings) -> Canvases:
    """The photo's canvas at each scale (one shape for every photo unless resize is own)."""
    photo = (record.height, record.width)
    return tuple(placement(photo, photo, side, scale, inputs)[1]
                 for side, scale in zip(inputs.sides, inputs.scales, strict=True))  # fmt: skip


def buckets(records: Sequence[VocRecord], inputs: InputSettings) -> dict[Canvases, np.ndarray]:
    """The photos' indices by canvas shapes, in a fixed order of the shapes."""
    keys = [canvases(r, inputs) for r in records]
    return {k: np.array([i for i, key in enumerate(keys) if key == k], np.int64)
            for k in sorted(set(keys))}  # fmt: skip


def train_plan(records: Sequence[VocRecord], inputs: InputSettings, batch: int, seed: int,
               epoch: int) -> list[np.ndarray]:  # fmt: skip
    """Epoch ``epoch``'s batches (photo indices), from (seed, epoch) alone: a shuffled order cut
    into batches; with own sizes, each bucket's photos in that order cut into batches, and the
    batches shuffled (every batch one canvas shape, every photo once an epoch)."""
    permutation = order(len(records), seed, epoch)
    if inputs.resize != "own":
        return [
            permutation[b * batch : (b + 1) * batch] for b in range(chunks(len(records), batch))
        ]
    rank = np.empty(len(records), np.int64)
    rank[permutation] = np.arange(len(records))
    plan = []
    for members in buckets(records, inputs).values():
        ordered = members[np.argsort(rank[members], kind="stable")]
        plan += [ordered[b : b + batch] for b in range(0, len(ordered), batch)]
    shuffle = np.random.default_rng([seed, epoch, 11]).permutation(len(plan))
    return [plan[i] for i in shuffle]


def test_plan(records: Sequence[VocRecord], inputs: InputSettings, batch: int) -> list[np.ndarray]:
    """The evaluation's batches: in order, or bucket by bucket with own sizes."""
    if inputs.resize != "own":
        every = np.arange(len(records))
        return [every[b : b + batch] for b in range(0, len(records), batch)]
    return [members[b : b + batch] for members in buckets(records, inputs).values()
            for b in range(0, len(members), batch)]  # fmt: skip


def batches_per_epoch(records: Sequence[VocRecord], inputs: InputSettings, batch: int) -> int:
    if inputs.resize != "own":
        return chunks(len(records), batch)
    return sum(chunks(len(m), batch) for m in buckets(records, inputs).values())


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a split's batches come from: the photos, or the cached maps of each view."""

    records: Sequence[VocRecord]
    inputs: InputSettings
    grids: tuple[tuple[int, int], ...]  # each scale's map positions on its square canvas
    pad: np.ndarray  # the canvas' padding pixel
    batch: int
    cache: fc.FeatureCache | None = None
    layout: map_cache.Layout | None = None
    # The map positions of a (height, width) canvas (own sizes); None: in proportion to the
    # square canvas' (exact for the stride-32 backbones)
    grid_of: Callable[[tuple[int, int]], tuple[int, int]] | None = None
    _plans: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def device_crops(self) -> bool:
        """Random resized crops from the photos go to the device; without crops the canvas
        is PIL's, as the map cache's is (a frozen run is the same from either)."""
        return (self.cache is None and self.inputs.device_crops
                and self.inputs.crop_area != (1.0, 1.0))  # fmt: skip

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.records, self.inputs, self.batch)

    def plan(self, seed: int, epoch: int) -> list[np.ndarray]:
        key = (seed, epoch)
        if key not in self._plans:
            self._plans.clear()
            self._plans[key] = train_plan(self.records, self.inputs, self.batch, seed, epoch)
        return self._plans[key]

    def test_batches(self) -> list[np.ndarray]:
        if None not in self._plans:
            self._plans[None] = test_plan(self.records, self.inputs, self.batch)
        return self._plans[None]

    def grid(self, scale: int, canvas: tuple[int, int]) -> tuple[int, int]:
        side, square = self.inputs.sides[scale], self.grids[scale]
        if canvas == (side, side):
            return square
        if self.grid_of is not None:
            return self.grid_of(canvas)
        return (round(square[0] * canvas[0] / side), round(square[1] * canvas[1] / side))

    def train_batch(self, seed: int, epoch: int, b: int) -> dict:
        chosen = self.plan(seed, epoch)[b]
        if self.device_crops:
            return self._framed(seed, epoch, chosen)
        views, valid = [], []
        for index in chosen:
            rng = photo_rng(seed, epoch, int(index))
            if self.cache is not None:
                v, m = self._cached(int(index), flipped=self.inputs.flip and rng.random() < 0.5)
            else:
                v, m = self._pixels(random_crop(self._decode(int(index)), rng, self.inputs),
                                    int(index))  # fmt: skip
            views.append(v)
            valid.append(m)
        return self._finish(views, valid, chosen)

    def test_batch(self, b: int) -> dict:
        chosen = self.test_batches()[b]
        views, valid = [], []
        for index in chosen:
            if self.cache is not None:
                v, m = self._cached(int(index), flipped=False)
                if self.inputs.test_flip:
                    v2, m2 = self._cached(int(index), flipped=True)
                    v, m = v + v2, np.concatenate([m, m2])
            else:
                rgb = self._decode(int(index))
                v, m = self._pixels(rgb, int(index))
                if self.inputs.test_flip:
                    v2, m2 = self._pixels(np.ascontiguousarray(rgb[:, ::-1]), int(index))
                    v, m = v + v2, np.concatenate([m, m2])
            views.append(v)
            valid.append(m)
        return self._finish(views, valid, chosen)

    def _decode(self, index: int) -> np.ndarray:
        r = self.records[index]
        return decode_image(str(r.image_path), (r.width, r.height))

    def _photo(self, index: int) -> tuple[int, int]:
        return self.records[index].height, self.records[index].width

    def _pixels(self, rgb: np.ndarray, index: int) -> tuple[list[np.ndarray], np.ndarray]:
        """``rgb`` (the photo or a crop of it) on each scale's canvas, and the valid positions."""
        views, valid = [], []
        photo = self._photo(index)
        for i, (side, scale) in enumerate(zip(self.inputs.sides, self.inputs.scales, strict=True)):
            extent, canvas = placement(photo, rgb.shape[:2], side, scale, self.inputs)
            views.append(render(rgb, extent, canvas, self.pad))
            valid.append(valid_grid(extent, canvas, self.grid(i, canvas)).reshape(-1))
        return views, np.concatenate(valid)

    def _cached(self, index: int, flipped: bool) -> tuple[list[np.ndarray], np.ndarray]:
        """The stored maps (each in its scale's square grid, the photo's canvas at the top
        left) and their valid positions."""
        maps = map_cache.photo_maps(self.cache, self.layout, index)
        photo = self._photo(index)
        views, valid = [], []
        for view, m in zip(self.layout.views, maps, strict=True):
            if view.flipped != flipped:
                continue
            i = self.inputs.sides.index(view.side)
            extent, canvas = placement(photo, photo, view.side, self.inputs.scales[i], self.inputs)
            views.append(m)
            valid.append(framed_valid(extent, canvas, self.grid(i, canvas), view.grid))
        return views, np.concatenate(valid)

    def _framed(self, seed: int, epoch: int, chosen: np.ndarray) -> dict:
        """The device-crop batch: frames, crop boxes, flips, each scale's extents and canvas
        shape (an empty array's shape: jit compiles once per shape); the step resamples."""
        frames, sizes, boxes, flips, valid = [], [], [], [], []
        extents: list[list[tuple[int, int]]] = [[] for _ in self.inputs.sides]
        shapes: list[tuple[int, int]] = []
        for index in chosen:
            rng = photo_rng(seed, epoch, int(index))
            frame = into_frame(self._decode(int(index)), self.inputs.frame)
            photo = self._photo(int(index))
            h, w = (
                photo
                if max(photo) <= self.inputs.frame
                else fit_into(*photo, (self.inputs.frame, self.inputs.frame))
            )
            (left, top, cw, ch), flip = draw_crop(h, w, rng, self.inputs)
            frames.append(frame)
            sizes.append((h, w))
            boxes.append((left, top, left + cw, top + ch))
            flips.append(flip)
            grids, shapes = [], []
            scales = zip(self.inputs.sides, self.inputs.scales, strict=True)
            for i, (side, scale) in enumerate(scales):
                extent, canvas = placement(photo, (ch, cw), side, scale, self.inputs)
                extents[i].append(extent)
                shapes.append(canvas)
                grids.append(valid_grid(extent, canvas, self.grid(i, canvas)).reshape(-1))
            valid.append(np.concatenate(grids))
        batch = self._finish([[f] for f in frames], valid, chosen)
        (stacked,) = batch.pop("views")
        pad = self.batch - len(chosen)
        fill = lambda rows, dtype: np.asarray(list(rows) + [rows[0]] * pad, dtype)  # noqa: E731
        batch |= {
            "frames": stacked,
            "sizes": fill(sizes, np.int32),
            "boxes": fill(boxes, np.float32),
            "flips": fill(flips, bool),
            "extents": tuple(fill(e, np.int32) for e in extents),
            "canvases": tuple(np.zeros((*shape, 0), np.uint8) for shape in shapes),
        }
        return batch

    def _finish(self, views: list, valid: list, chosen: np.ndarray) -> dict:
        targets = np.stack([self.records[int(i)].targets() for i in chosen])
        missing = self.batch - len(chosen)
        if missing:
            views += [views[0]] * missing
            valid += [valid[0]] * missing
            targets = np.concatenate([targets, np.zeros((missing, targets.shape[1]), np.int8)])
        return {
            "views": tuple(np.stack(v) for v in zip(*views, strict=True)),
            "valid": np.stack(valid),
            "targets": targets,
            "count": len(chosen),
            "indices": np.asarray(chosen, np.int64),
        }


def framed_valid(extent: tuple[int, int], canvas: tuple[int, int], grid: tuple[int, int],
                 frame: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """The valid positions of a photo's map (``grid``, of its ``canvas``) stored at the top
    left of a larger ``frame`` grid, flattened."""
    out = np.zeros(frame, bool)
    out[: grid[0], : grid[1]] = valid_grid(extent, canvas, grid)
    return out.reshape(-1)
