"""A cache of the frozen prefix's activations for every candidate patch: the frozen backbone
computed once. The prefix is the backbone's (voc_jax.models): AlexNet and VGG-16 up to fc6
after its ReLU, ResNet-50 up to the 2048 pooled features; AlexNet's words below hold for each.

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
architecture, its parameters (and BatchNorm statistics) up to the prefix, the preprocessing,
the model's width and dtype, the backbone's own options (AlexNet: conv1 padding), the patch
geometry and crop settings, the split, and every image file (size and SHA-256). Any change
gives another directory: a stale cache is never reused, it is rebuilt.

Building is resumable: rows are written in image order, flushed, and only then are the
finished images' digests and their count committed (atomic renames of ``digests.txt`` and
``progress.json``); a rerun after a kill continues from there. Its size is computed, checked
against the free disk space and reserved (``posix_fallocate``) before the first row: a full
disk is one error line, never a SIGBUS from a write into the memory map.

Integrity: every image's rows have a SHA-256 digest. A cache is verified before it is reused
(and the committed part of an interrupted build before it is continued): rows that do not
match, a truncated or malformed ``features.npy``, unreadable JSON or missing digests make it
damaged, like a damaged checkpoint: a one-line warning, the directory moved aside
(``<name>.damaged-<time>``, never deleted), and a fresh build.
"""

from __future__ import annotations

import dataclasses
import errno
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
from flax import traverse_util
from tqdm import tqdm

from voc_jax.data import pipeline
from voc_jax.data.voc import VocDataset, VocRecord
from voc_jax.errors import DiskFull, is_disk_full
from voc_jax.experiment import Experiment
from voc_jax.memory import format_bytes
from voc_jax.settings import CacheSettings
from voc_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "bfloat16": jnp.bfloat16, "float32": np.float32}
FEATURES, INDEX, MANIFEST, PROGRESS = "features.npy", "index.npy", "manifest.json", "progress.json"
DIGESTS = "digests.txt"  # one SHA-256 per finished image's rows, in image order
VERSION = 2  # 2: per-image digests
COMMIT_EVERY = 16  # images between commits of the build's progress


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def backbone_digest(variables: dict[str, Any], prefix_layers: Sequence[str]) -> str:
    """SHA-256 of the variables the cached activations depend on: the frozen prefix's
    parameters and BatchNorm statistics (AlexNet: conv1..fc6; ResNet-50: everything up to
    the pooled features)."""
    h = hashlib.sha256()
    for collection in ("params", "batch_stats"):
        tree = variables.get(collection) or {}
        for layer in prefix_layers:
            if layer not in tree:
                continue
            for path, leaf in sorted(traverse_util.flatten_dict(tree[layer], sep="/").items()):
                value = np.ascontiguousarray(np.asarray(leaf, np.float32))
                h.update(f"{collection}/{layer}/{path}|{value.shape}|".encode())
                h.update(value.tobytes())
    return h.hexdigest()


def describe(exp: Experiment, split: str, records: Sequence[VocRecord]) -> dict[str, Any]:
    """Everything the cached rows depend on; its digest names the cache directory."""
    patch_cfg, model = exp.patches, exp.settings.model
    module = exp.model.module
    b = module.backbone
    return {
        "version": VERSION,
        "backbone": backbone_digest(exp.model.variables, b.prefix_layers),
        "preprocessing": exp.model.preprocessing.to_dict(),
        # the backbone's own options join the block (AlexNet: conv1_padding)
        "model": {"arch": model.arch, "width": model.width, "dtype": model.dtype}
        | dataclasses.asdict(module.options if module.options is not None else b.options()),
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
    complete and every image's rows match their digests, continued when a build was
    interrupted, built otherwise; a damaged cache is set aside (never deleted) and rebuilt."""
    records = dataset.records
    description = describe(exp, dataset.split, records)
    root = cache_root(exp.cache, workdir)
    directory = root / f"{dataset.split}-{key_of(description)}"
    dtype = DTYPES[exp.cache.dtype]
    counts = np.array([len(pipeline.candidates(r, exp.patches)[0]) for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    width = exp.model.module.backbone.prefix_width(exp.settings.model.width)
    cache = FeatureCache(directory, dtype, width, offsets)
    hint = "wait for it, or set --config.feature_cache.dir to another directory"
    with WorkdirLock(root, "feature cache build", busy_hint=hint):
        try:
            done = verified_images(cache, progress=progress)
        except CacheDamaged as e:
            set_aside(directory, str(e))
            done = 0
        if done == len(records):
            log.info("feature cache %s: complete, verified, reused (%d rows)", directory,
                     offsets[-1])  # fmt: skip
            return cache
        build(exp, records, cache, description, done, progress=progress)
    return cache


class CacheDamaged(Exception):
    """A cache directory whose files do not hold up (the message says what)."""


def verified_images(cache: FeatureCache, *, progress: bool = False) -> int:
    """How many images' rows are on disk and match their digests: all of them for a complete
    cache, the committed ones of an interrupted build, 0 when nothing was built. Raises
    CacheDamaged for anything else: unreadable JSON, a truncated or malformed features.npy,
    missing digests, rows that do not match them."""
    directory = cache.directory
    manifest = _read_json(directory / MANIFEST)
    if manifest is None:
        return 0
    n = len(cache.offsets) - 1
    if manifest.get("complete"):
        done = n
    else:
        state = _read_json(directory / PROGRESS)
        done = int(state["images"]) if state and isinstance(state.get("images"), int) else -1
        if not 0 <= done <= n:
            raise CacheDamaged(f"{PROGRESS} is missing or unreadable")
    digests = _read_digests(directory)
    if len(digests) < done:
        raise CacheDamaged(f"{DIGESTS} holds {len(digests)} digests for {done} images")
    features = _open_features(cache, "r")
    bar = tqdm(total=done, desc="verifying the feature cache", unit="img", leave=False,
               disable=not progress or done == 0)  # fmt: skip
    for index in range(done):
        rows = features[cache.offsets[index] : cache.offsets[index + 1]]
        if rows_digest(rows) != digests[index]:
            raise CacheDamaged(f"the rows of image {index} do not match their digest")
        bar.update(1)
    bar.close()
    return done


def rows_digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows)).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, None when the file does not exist; CacheDamaged when unreadable."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheDamaged(f"{path.name} is unreadable ({type(e).__name__})") from e
    if not isinstance(value, dict):
        raise CacheDamaged(f"{path.name} is not a JSON object")
    return value


def _read_digests(directory: Path) -> list[str]:
    path = directory / DIGESTS
    try:
        return path.read_text().split() if path.exists() else []
    except (OSError, UnicodeDecodeError) as e:
        raise CacheDamaged(f"{DIGESTS} is unreadable") from e


def _open_features(cache: FeatureCache, mode: str) -> np.ndarray:
    """features.npy as a memory map, its header checked against what the cache must hold."""
    path = cache.directory / FEATURES
    try:
        features = np.load(path, mmap_mode=mode)
    except (OSError, ValueError, EOFError) as e:  # a truncated file, a broken header
        raise CacheDamaged(f"{FEATURES} cannot be opened ({type(e).__name__}: {e})") from e
    want = (int(cache.offsets[-1]), cache.width)
    if features.shape != want or features.dtype != _storage_dtype(cache.dtype):
        raise CacheDamaged(f"{FEATURES} holds {features.shape} {features.dtype}, not {want}")
    return features


def set_aside(directory: Path, reason: str) -> Path:
    """Move a damaged cache out of the way (kept for inspection) so it is built afresh."""
    target = directory.with_name(f"{directory.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    directory.rename(target)
    log.warning("feature cache %s is damaged (%s): moved to %s; rebuilding", directory, reason,
                target)  # fmt: skip
    return target


def create_files(cache: FeatureCache, description: dict[str, Any]) -> np.ndarray:
    """A fresh build's files, the space for every row checked and reserved first (writes
    into a memory map on a full disk would kill the process with SIGBUS)."""
    directory, storage = cache.directory, _storage_dtype(cache.dtype)
    size = int(cache.offsets[-1]) * cache.width * storage.itemsize
    directory.mkdir(parents=True, exist_ok=True)
    # What is still to be written: an earlier, interrupted build's features.npy (replaced
    # below) already holds some of its blocks, which count as free for this one.
    free = shutil.disk_usage(directory).free + _allocated(directory / FEATURES)
    if size * 1.02 > free:
        advice = (
            " or --config.feature_cache.dtype=float16 (half the size)"
            if storage.itemsize > 2
            else ""
        )
        raise DiskFull(
            f"the feature cache needs {format_bytes(size)} in {directory} but only "
            f"{format_bytes(free)} are free; set --config.feature_cache.dir to a larger "
            f"disk{advice}"
        )
    features = np.lib.format.open_memmap(
        directory / FEATURES, mode="w+", dtype=storage, shape=(int(cache.offsets[-1]), cache.width)
    )
    _reserve(directory / FEATURES)
    np.save(directory / INDEX, cache.offsets)
    (directory / DIGESTS).write_text("")
    write_json(directory / MANIFEST, description | {"complete": False})
    write_json(directory / PROGRESS, {"images": 0})
    return features


def _allocated(path: Path) -> int:
    """Bytes the file's blocks take on disk (0 when absent; a sparse file takes less than its
    size)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a full disk is an OSError here, not a SIGBUS later."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # the file system cannot reserve
                return
            if is_disk_full(e):
                raise DiskFull(
                    f"no space left on {path.parent} for the feature cache "
                    f"({format_bytes(os.fstat(f.fileno()).st_size)}); free some or set "
                    "--config.feature_cache.dir; the build resumes where it stopped"
                ) from e
            raise


def resume_files(cache: FeatureCache, done: int) -> tuple[np.ndarray, list[str]]:
    """An interrupted build's memory map (its space reserved again) and its first ``done``
    digests (lines written after the last commit are dropped)."""
    _reserve(cache.directory / FEATURES)
    return _open_features(cache, "r+"), _read_digests(cache.directory)[:done]


def build(
    exp: Experiment,
    records: Sequence[VocRecord],
    cache: FeatureCache,
    description: dict[str, Any],
    done: int = 0,
    *,
    progress: bool = True,
) -> None:
    """Write every candidate's fc6 row and each image's digest, image by image, resumably
    from image ``done``."""
    directory, offsets = cache.directory, cache.offsets
    if done:
        features, digests = resume_files(cache, done)
    else:
        features, digests = create_files(cache, description), []
    log.info(
        "feature cache %s: %d images, %d candidate patches, %s (%s)%s",
        directory,
        len(records),
        int(offsets[-1]),
        format_bytes(features.nbytes),
        exp.cache.dtype,
        f"; continuing after image {done}" if done else "",
    )
    chunk = exp.forward_chunk()
    step = exp.prefix_step(cache.dtype)
    variables = jax.device_put(exp.model.variables)
    started = time.perf_counter()
    bar = tqdm(
        total=len(records), initial=done, desc="building the feature cache", unit="img",
        disable=not progress,
    )  # fmt: skip
    try:  # the bar closed on every way out: a full disk's error line stays the last
        for index in range(done, len(records)):
            k_pad = padded_rows(cache.rows(index), chunk)
            example = candidates_example(records[index], index, exp.patches, k_pad)
            out = step(variables, {k: np.asarray(v)[None] for k, v in example.items()})
            rows = np.asarray(out[0, : cache.rows(index)])
            rows = rows.view(np.uint16) if cache.dtype is jnp.bfloat16 else rows
            features[offsets[index] : offsets[index + 1]] = rows
            digests.append(rows_digest(rows))
            bar.update(1)
            finished = index + 1
            if finished % COMMIT_EVERY == 0 or finished == len(records):
                commit(directory, features, digests)
    finally:
        bar.close()
    del features
    write_json(
        directory / MANIFEST,
        description | {"complete": True, "seconds": time.perf_counter() - started},
    )


def commit(directory: Path, features: np.ndarray, digests: list[str]) -> None:
    """Rows and digests on disk before the count that says they are there."""
    features.flush()
    tmp = directory / f"{DIGESTS}.tmp"
    tmp.write_text("".join(d + "\n" for d in digests))
    os.replace(tmp, directory / DIGESTS)
    write_json(directory / PROGRESS, {"images": len(digests)})


# Forward chunks an image's candidates are padded to: every image costs at most 1.5x its own
# candidates (not the largest image's count: 3.3x the work for VOC at 4 scales, where the
# mean is 135 and the largest 420), in a few compiled shapes.
CHUNK_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)


def padded_rows(rows: int, chunk: int) -> int:
    """``rows`` candidates padded to a bucket's number of ``chunk``-patch forward chunks."""
    chunks = max(1, -(-rows // chunk))
    bucket = next((b for b in CHUNK_BUCKETS if b >= chunks), None)
    if bucket is None:  # beyond the table: multiples of its largest step
        step = CHUNK_BUCKETS[-1] - CHUNK_BUCKETS[-2]
        bucket = -(-chunks // step) * step
    return bucket * chunk


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


def write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value) + "\n")
    os.replace(tmp, path)
