"""A cache of fc6 activations for every candidate patch: the frozen backbone computed once.

With conv1-fc6 frozen (Oquab et al.'s variant, ``voc07_frozen.py``), every epoch recomputes
the same fc6 activations for the same candidate patches: an image's candidates are fixed
(about 620 per VOC image) and only the sampling of 448 of them changes. The cache stores the
fc6 activations (after ReLU, before dropout) of EVERY candidate of every image once; training
then samples exactly as before (same generator, same labels), gathers the sampled rows and runs
only dropout -> fc7 -> ReLU -> dropout -> head.

Storage: one NumPy ``.npy`` file opened as a memory map (rows of ``feature_cache.dtype``,
float16 by default: fc6 activations are small non-negative numbers, where float16 keeps 3
more mantissa bits than bfloat16), plus ``index.npy`` (each image's first row) and a JSON
manifest. A memory-mapped ``.npy`` is what a random-row gather from the host pipeline needs:
no decoding, no chunk layer, readable by anything that reads NumPy; tensorstore or
array_record would add a storage layer without adding a feature this access pattern uses.

The cache lives in a directory named by a digest of everything its content depends on: the
backbone parameters up to fc6, the preprocessing, the model's width, dtype and conv1 padding,
the patch geometry and crop settings, the split, and every image file (size and SHA-256). Any
change gives another directory: a stale cache is never reused, it is rebuilt.

Building is resumable: rows are written in image order, flushed, and only then is the count
of finished images committed (an atomic rename of ``progress.json``); a rerun after a kill
continues from there. Its size is computed and checked against the free disk space before
it starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from voc_jax.data import pipeline
from voc_jax.data.voc import VocDataset, VocRecord
from voc_jax.errors import DiskFull
from voc_jax.experiment import Experiment
from voc_jax.model import FC6_PREFIX
from voc_jax.settings import CacheSettings
from voc_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "bfloat16": jnp.bfloat16, "float32": np.float32}
FEATURES, INDEX, MANIFEST, PROGRESS = "features.npy", "index.npy", "manifest.json", "progress.json"
VERSION = 1
COMMIT_EVERY = 16  # images between commits of the build's progress


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def backbone_digest(params: Any) -> str:
    """SHA-256 of the parameters the cached activations depend on (conv1..fc6)."""
    h = hashlib.sha256()
    for layer in FC6_PREFIX:
        for leaf in ("kernel", "bias"):
            value = np.ascontiguousarray(np.asarray(params[layer][leaf], np.float32))
            h.update(f"{layer}/{leaf}|{value.shape}|".encode())
            h.update(value.tobytes())
    return h.hexdigest()


def describe(exp: Experiment, split: str, records: Sequence[VocRecord]) -> dict[str, Any]:
    """Everything the cached rows depend on; its digest names the cache directory."""
    patch_cfg, model = exp.patches, exp.settings.model
    return {
        "version": VERSION,
        "backbone": backbone_digest(exp.model.params),
        "preprocessing": exp.model.preprocessing.to_dict(),
        "model": {
            "width": model.width,
            "dtype": model.dtype,
            "conv1_padding": exp.model.module.conv1_padding,
        },
        "patches": {
            "size": model.patch_size,
            "scales": list(patch_cfg.scales),
            "min_patches": patch_cfg.min_patches,
            "min_scales": patch_cfg.min_scales,
            "canvas": list(patch_cfg.canvas),
            "crop_boxes": patch_cfg.crop_boxes,
            "crops": patch_cfg.crops,
        },
        "dtype": exp.cache.dtype,
        "split": split,
        "images": [
            [r.image_id, r.image_path.stat().st_size, file_digest(r.image_path)] for r in records
        ],
    }


def key_of(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


@dataclasses.dataclass
class FeatureCache:
    """A finished cache: ``gather(image index, candidate indices)`` -> [K, D] rows. Opened
    lazily (and again in each worker process: a memory map is not pickled, its path is)."""

    directory: Path
    dtype: Any
    width: int
    offsets: np.ndarray  # [images + 1] first row of each image

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_features", None)
        return state

    @property
    def features(self) -> np.ndarray:
        if "_features" not in self.__dict__:
            self._features = np.load(self.directory / FEATURES, mmap_mode="r")
        return self._features

    def rows(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def gather(self, index: int, chosen: np.ndarray) -> np.ndarray:
        start = int(self.offsets[index])
        rows = np.asarray(self.features[start + np.asarray(chosen)])
        return rows.view(self.dtype) if rows.dtype != self.dtype else rows


def cache_root(cache: CacheSettings, workdir: Path) -> Path:
    return Path(cache.dir) if cache.dir else workdir / "feature_cache"


def _storage_dtype(dtype: Any) -> np.dtype:
    """What the .npy holds: bfloat16 as its raw 16 bits (NumPy has no bfloat16 of its own)."""
    return np.dtype(np.uint16) if dtype is jnp.bfloat16 else np.dtype(dtype)


def ensure(
    exp: Experiment, dataset: VocDataset, workdir: Path, *, progress: bool = True
) -> FeatureCache:
    """The cache of ``dataset`` for this experiment's weights and patches: reused when
    complete, continued when a build was interrupted, built otherwise."""
    records = dataset.records
    description = describe(exp, dataset.split, records)
    directory = cache_root(exp.cache, workdir) / f"{dataset.split}-{key_of(description)}"
    dtype = DTYPES[exp.cache.dtype]
    counts = np.array([len(pipeline.candidates(r, exp.patches)[0]) for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    width = int(exp.model.params["fc6"]["kernel"].shape[1])
    cache = FeatureCache(directory, dtype, width, offsets)
    manifest = directory / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("complete"):
        log.info("feature cache %s: complete, reused (%d rows)", directory, offsets[-1])
        return cache
    with WorkdirLock(directory, "feature cache build"):
        build(exp, records, cache, description, progress=progress)
    return cache


def build(
    exp: Experiment,
    records: Sequence[VocRecord],
    cache: FeatureCache,
    description: dict[str, Any],
    *,
    progress: bool = True,
) -> None:
    """Write every candidate's fc6 row, image by image, resumably."""
    directory, offsets = cache.directory, cache.offsets
    total_rows, storage = int(offsets[-1]), _storage_dtype(cache.dtype)
    size = total_rows * cache.width * storage.itemsize
    features_path, progress_path = directory / FEATURES, directory / PROGRESS
    done = 0
    if features_path.exists() and progress_path.exists():
        done = int(json.loads(progress_path.read_text())["images"])
        features = np.load(features_path, mmap_mode="r+")
    else:
        free = shutil.disk_usage(directory).free
        if size * 1.02 > free:
            raise DiskFull(
                f"the feature cache needs {size / 2**30:.2f} GiB in {directory} but only "
                f"{free / 2**30:.2f} GiB are free; set --config.feature_cache.dir to a larger "
                "disk or --config.feature_cache.dtype=float16"
            )
        features = np.lib.format.open_memmap(
            features_path, mode="w+", dtype=storage, shape=(total_rows, cache.width)
        )
        np.save(directory / INDEX, offsets)
        _write_json(directory / MANIFEST, description | {"complete": False})
        _write_json(progress_path, {"images": 0})
    log.info(
        "feature cache %s: %d images, %d candidate patches, %.2f GiB (%s)%s",
        directory,
        len(records),
        total_rows,
        size / 2**30,
        np.dtype(storage).name if cache.dtype is not jnp.bfloat16 else "bfloat16",
        f"; continuing after image {done}" if done else "",
    )
    chunk = exp.train.batch_size
    k_pad = int(-(-int((offsets[1:] - offsets[:-1]).max()) // chunk) * chunk)
    step = exp.fc6_step(cache.dtype)
    params = jax.device_put(exp.model.params)
    started, commit_every = time.perf_counter(), COMMIT_EVERY
    bar = tqdm(
        total=len(records), initial=done, desc="building the feature cache", unit="img",
        disable=not progress,
    )  # fmt: skip
    for index in range(done, len(records)):
        example = candidates_example(records[index], index, exp.patches, k_pad)
        out = step(params, {k: np.asarray(v)[None] for k, v in example.items()})
        rows = np.asarray(out[0, : cache.rows(index)])
        features[offsets[index] : offsets[index + 1]] = (
            rows.view(np.uint16) if cache.dtype is jnp.bfloat16 else rows
        )
        bar.update(1)
        if index == done:
            per_image = time.perf_counter() - started
            log.info(
                "feature cache: first image (with compilation) took %.1f s; %d to go",
                per_image,
                len(records) - done - 1,
            )
        finished = index + 1
        if finished % commit_every == 0 or finished == len(records):
            features.flush()  # rows on disk before the count that says they are there
            _write_json(progress_path, {"images": finished})
    bar.close()
    del features
    _write_json(
        directory / MANIFEST,
        description | {"complete": True, "seconds": time.perf_counter() - started},
    )


def candidates_example(
    record: VocRecord, index: int, config: pipeline.PatchConfig, k_pad: int
) -> dict[str, np.ndarray]:
    """An element holding every candidate of one image (padded to ``k_pad``)."""
    boxes, _ = pipeline.candidates(record, config)
    n = len(boxes)
    image = pipeline.decode_image(str(record.image_path), (record.width, record.height))
    image, _ = pipeline.fit_canvas(image, record.boxes, config.canvas)
    padded = np.concatenate([boxes, np.repeat(boxes[:1], k_pad - n, 0)])
    valid = np.arange(k_pad) < n
    return pipeline.example_from_boxes(image, padded, np.full(k_pad, -1), valid, index, config)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value) + "\n")
    os.replace(tmp, path)
