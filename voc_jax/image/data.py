"""Batches of the whole-image family: photos decoded, augmented and fitted to each scale's
canvas (or a frozen backbone's cached maps), their valid map positions and their labels.
Batch ``b`` of epoch ``e`` depends only on (seed, e, b): a resumed run sees the same data.
The last batch is padded with the first photo, its labels all 0 (ignored by the loss)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from voc_jax import feature_cache as fc
from voc_jax.classes import VOC_CLASSES
from voc_jax.data.pipeline import decode_image
from voc_jax.data.voc import VocRecord
from voc_jax.image import cache as map_cache
from voc_jax.image.inputs import InputSettings, fit, random_crop, valid_grid


def extent(record: VocRecord, side: int, resize: str) -> tuple[int, int]:
    """The photo's (height, width) on a canvas (what ``fit`` gives, without the pixels)."""
    if resize == "square":
        return side, side
    f = side / max(record.width, record.height)
    return (max(1, min(side, round(record.height * f))), max(1, min(side, round(record.width * f))))


def order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


def photo_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def chunks(n: int, batch: int) -> int:
    return -(-n // batch)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a split's batches come from: the photos, or the cached maps of each view."""

    records: Sequence[VocRecord]
    inputs: InputSettings
    grids: tuple[tuple[int, int], ...]  # one per scale
    pad: np.ndarray  # the canvas' padding pixel
    batch: int
    cache: fc.FeatureCache | None = None
    layout: map_cache.Layout | None = None

    def train_batch(self, seed: int, epoch: int, b: int) -> dict:
        chosen = order(len(self.records), seed, epoch)[b * self.batch : (b + 1) * self.batch]
        views, valid = [], []
        for index in chosen:
            rng = photo_rng(seed, epoch, int(index))
            if self.cache is not None:
                v, m = self._cached(int(index), flipped=self.inputs.flip and rng.random() < 0.5)
            else:
                v, m = self._pixels(random_crop(self._decode(int(index)), rng, self.inputs))
            views.append(v)
            valid.append(m)
        return self._finish(views, valid, chosen)

    def test_batch(self, b: int) -> dict:
        chosen = np.arange(b * self.batch, min(len(self.records), (b + 1) * self.batch))
        views, valid = [], []
        for index in chosen:
            if self.cache is not None:
                v, m = self._cached(int(index), flipped=False)
                if self.inputs.test_flip:
                    v2, m2 = self._cached(int(index), flipped=True)
                    v, m = v + v2, np.concatenate([m, m2])
            else:
                rgb = self._decode(int(index))
                v, m = self._pixels(rgb)
                if self.inputs.test_flip:
                    v2, m2 = self._pixels(np.ascontiguousarray(rgb[:, ::-1]))
                    v, m = v + v2, np.concatenate([m, m2])
            views.append(v)
            valid.append(m)
        return self._finish(views, valid, chosen)

    def _decode(self, index: int) -> np.ndarray:
        r = self.records[index]
        return decode_image(str(r.image_path), (r.width, r.height))

    def _pixels(self, rgb: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        views, valid = [], []
        for side, grid in zip(self.inputs.sides, self.grids, strict=True):
            canvas, ext = fit(rgb, side, self.inputs.resize, self.pad)
            views.append(canvas)
            valid.append(valid_grid(ext, side, grid).reshape(-1))
        return views, np.concatenate(valid)

    def _cached(self, index: int, flipped: bool) -> tuple[list[np.ndarray], np.ndarray]:
        maps = map_cache.photo_maps(self.cache, self.layout, index)
        views, valid = [], []
        for view, m in zip(self.layout.views, maps, strict=True):
            if view.flipped != flipped:
                continue
            views.append(m)
            ext = extent(self.records[index], view.side, self.inputs.resize)
            valid.append(valid_grid(ext, view.side, view.grid).reshape(-1))
        return views, np.concatenate(valid)

    def _finish(self, views: list, valid: list, chosen: np.ndarray) -> dict:
        targets = np.stack([self.records[int(i)].targets() for i in chosen])
        missing = self.batch - len(chosen)
        if missing:
            views += [views[0]] * missing
            valid += [valid[0]] * missing
            targets = np.concatenate([targets, np.zeros((missing, len(VOC_CLASSES)), np.int8)])
        return {
            "views": tuple(np.stack(v) for v in zip(*views, strict=True)),
            "valid": np.stack(valid),
            "targets": targets,
            "count": len(chosen),
        }
