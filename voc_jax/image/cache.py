"""A cache of the frozen backbone's maps of every photo (each scale, and its mirror image when
flips are on): a frozen whole-image run's head then trains from rows on disk, in seconds to
minutes, instead of running the backbone every epoch.

The storage, integrity and resumption are the patch family's (voc_jax.feature_cache): rows in
a memory-mapped ``.npy`` (float16 by default), a SHA-256 per photo's rows, commits every few
photos so that an interrupted build continues, its space reserved before the first row, a
damaged cache set aside and rebuilt. A photo's rows are its views' map positions, row-major,
view after view; the directory is named by a digest of everything they depend on (the
backbone's parameters and statistics, the preprocessing, the network's form, the canvases,
the split and every image file).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from voc_jax import feature_cache as fc
from voc_jax.data.pipeline import decode_image
from voc_jax.data.voc import VocRecord
from voc_jax.image.inputs import InputSettings, fit, pad_value
from voc_jax.memory import format_bytes
from voc_jax.preprocessing import Preprocessing
from voc_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)
VERSION = 1


@dataclasses.dataclass(frozen=True)
class View:
    side: int  # the canvas side
    flipped: bool  # the photo mirrored before it is fitted
    grid: tuple[int, int]  # the map's positions


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which views of each photo are stored, in order, and how wide a row is."""

    views: tuple[View, ...]
    width: int

    @property
    def rows_per_photo(self) -> int:
        return sum(v.grid[0] * v.grid[1] for v in self.views)

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """A photo's rows -> one [gh, gw, C] map per view."""
        out, start = [], 0
        for v in self.views:
            n = v.grid[0] * v.grid[1]
            out.append(rows[start : start + n].reshape(*v.grid, rows.shape[-1]))
            start += n
        return out


def view_pixels(
    rgb: np.ndarray, view: View, inputs: InputSettings, pad: np.ndarray
) -> tuple[np.ndarray, tuple[int, int]]:
    """The canvas of one view (square, or the photo's bucket with own sizes) and the photo's
    extent on it."""
    if view.flipped:
        rgb = np.ascontiguousarray(rgb[:, ::-1])
    scale = inputs.scales[inputs.sides.index(view.side)]
    return fit(rgb, view.side, inputs, pad, scale=scale)


def view_maps(
    photos: Sequence[np.ndarray],
    view: View,
    inputs: InputSettings,
    pad: np.ndarray,
    forward: Callable[[int, np.ndarray], np.ndarray],
    batch: int,
) -> np.ndarray:
    """[len(photos), gh * gw, C] rows of one view: each canvas shape through the network as
    one batch of ``batch`` (one compile per shape), each map at the top left of the view's
    grid (own sizes' smaller canvases leave zeros, masked when read)."""
    canvases = [view_pixels(p, view, inputs, pad)[0] for p in photos]
    out = None
    for shape in sorted({c.shape for c in canvases}):
        members = [i for i, c in enumerate(canvases) if c.shape == shape]
        pixels = np.stack([canvases[i] for i in members])
        if len(members) < batch:
            pixels = np.concatenate([pixels, np.repeat(pixels[:1], batch - len(members), 0)])
        maps = np.asarray(forward(view.side, pixels))[: len(members)]
        if out is None:
            out = np.zeros((len(photos), *view.grid, maps.shape[-1]), maps.dtype)
        out[members, : maps.shape[1], : maps.shape[2]] = maps
    return out.reshape(len(photos), -1, out.shape[-1])


def describe(
    *,
    network: dict[str, Any],
    variables: dict[str, Any],
    layers: Sequence[str],
    preprocessing: Preprocessing,
    inputs: InputSettings,
    layout: Layout,
    dtype: str,
    split: str,
    records: Sequence[VocRecord],
) -> dict[str, Any]:
    """Everything the rows depend on; its digest names the directory."""
    return {
        "version": VERSION,
        "family": "image",
        "backbone": fc.backbone_digest(variables, layers),
        "network": network,
        "preprocessing": preprocessing.to_dict(),
        "resize": inputs.resize,
        **(
            {"bucket": inputs.bucket, "scales": list(inputs.scales)}
            if inputs.resize == "own"
            else {}
        ),  # fmt: skip
        "views": [[v.side, v.flipped] for v in layout.views],
        "dtype": dtype,
        "split": split,
        "images": [
            [r.image_id, r.image_path.stat().st_size, fc.file_digest(r.image_path)] for r in records
        ],
    }


def ensure(
    root: Path,
    split: str,
    records: Sequence[VocRecord],
    description: dict[str, Any],
    layout: Layout,
    dtype: str,
    forward: Callable[[int, np.ndarray], np.ndarray],
    inputs: InputSettings,
    preprocessing: Preprocessing,
    *,
    batch: int = 8,
    progress: bool = True,
) -> fc.FeatureCache:
    """The maps of ``records``: reused when complete and verified, continued after an
    interruption, built otherwise (a damaged cache set aside first). ``forward(side, pixels)``
    gives [B, gh, gw, C] maps of [B, side, side, 3] canvases."""
    directory = root / f"image-{split}-{fc.key_of(description)}"
    offsets = np.arange(len(records) + 1, dtype=np.int64) * layout.rows_per_photo
    cache = fc.FeatureCache(directory, fc.DTYPES[dtype], layout.width, offsets)
    hint = "wait for it, or set --config.feature_cache.dir to another directory"
    with WorkdirLock(root, "feature cache build", busy_hint=hint):
        try:
            done = fc.verified_images(cache, progress=progress)
        except fc.CacheDamaged as e:
            fc.set_aside(directory, str(e))
            done = 0
        if done == len(records):
            log.info("image map cache %s: complete, verified, reused", directory)
            return cache
        build(cache, records, description, layout, forward, inputs, preprocessing, done,
              batch=batch, progress=progress)  # fmt: skip
    return cache


def build(
    cache: fc.FeatureCache,
    records: Sequence[VocRecord],
    description: dict[str, Any],
    layout: Layout,
    forward: Callable[[int, np.ndarray], np.ndarray],
    inputs: InputSettings,
    preprocessing: Preprocessing,
    done: int,
    *,
    batch: int,
    progress: bool,
) -> None:
    """Rows photo by photo from ``done`` (a batch of photos per forward pass), committed every
    ``fc.COMMIT_EVERY`` photos."""
    features, digests = (
        fc.resume_files(cache, done) if done else (fc.create_files(cache, description), [])
    )
    log.info("image map cache %s: %d photos x %d rows, %s%s", cache.directory, len(records),
             layout.rows_per_photo, format_bytes(features.nbytes),
             f"; continuing after photo {done}" if done else "")  # fmt: skip
    pad = pad_value(preprocessing)
    started = time.perf_counter()
    bar = tqdm(total=len(records), initial=done, desc="caching image maps", unit="img",
               disable=not progress)  # fmt: skip
    try:
        for start in range(done, len(records), batch):
            chunk = records[start : start + batch]
            photos = [decode_image(str(r.image_path), (r.width, r.height)) for r in chunk]
            per_view = [view_maps(photos, view, inputs, pad, forward, batch)
                        for view in layout.views]  # fmt: skip
            rows = np.concatenate(per_view, axis=1)
            rows = _stored(rows, cache.dtype)
            for i in range(len(chunk)):
                index = start + i
                features[cache.offsets[index] : cache.offsets[index + 1]] = rows[i]
                digests.append(fc.rows_digest(rows[i]))
                finished = index + 1
                if finished % fc.COMMIT_EVERY == 0 or finished == len(records):
                    fc.commit(cache.directory, features, digests)
            bar.update(len(chunk))
    finally:
        bar.close()
    del features
    fc.write_json(
        cache.directory / fc.MANIFEST,
        description | {"complete": True, "seconds": time.perf_counter() - started},
    )


def _stored(rows: np.ndarray, dtype: Any) -> np.ndarray:
    if dtype is jnp.bfloat16:
        return np.asarray(jax.numpy.asarray(rows, jnp.bfloat16)).view(np.uint16)
    return rows.astype(dtype)


def photo_maps(cache: fc.FeatureCache, layout: Layout, index: int) -> list[np.ndarray]:
    """One photo's cached maps, one [gh, gw, C] per view, in the cache's dtype."""
    rows = np.asarray(cache.features[cache.offsets[index] : cache.offsets[index + 1]])
    if rows.dtype != cache.dtype:
        rows = rows.view(cache.dtype)
    return layout.split(rows)
