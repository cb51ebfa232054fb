"""The host pipeline (grain): records -> shuffled, decoded, patch-sampled NumPy batches.

One element is one image: the uint8 image padded to a fixed canvas with its true size, and the
K sampled patch boxes with their labels; the device crops them (voc_jax.data.crops). Every
random choice comes from grain's per-element generator, derived from the seed, the epoch and
the element's position, so batches are reproducible and an iterator restored from a saved
state yields exactly the batches the original would have yielded next.

Batch layout (B images per batch, K patches per image, R row intervals):
  image         uint8   [B, Hc, Wc, 3]  RGB, top-left aligned, zero padding
  image_size    int32   [B, 2]          true (height, width) on the canvas
  boxes         float32 [B, K, 4]       (x0, y0, x1, y1) crop rectangles, canvas pixels
  labels        int32   [B, K]          0 background, 1..20 classes, -1 ignored / padding
  valid         bool    [B, K]          a real sampled patch (False only for padding)
  image_index   int32   [B]             index into the records list (-1 for padding)
  row_intervals float32 [B, R, 2]       distinct intervals for the shared vertical pass
  row_index     int32   [B, K]          which interval each patch uses
  col_intervals float32 [B, K, 2]       the other axis of each box
  transposed    bool    [B]             intervals refer to the transposed (portrait) image
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import grain
import numpy as np
from absl import flags
from PIL import Image

from voc_jax.data import patches as P
from voc_jax.data.crops import share_intervals
from voc_jax.data.voc import VocRecord
from voc_jax.errors import DataError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Every knob of patch extraction, with the reference's values as defaults."""

    scales: tuple[float, ...] = P.REFERENCE_SCALES
    patches_per_image: int = P.PATCHES_PER_IMAGE  # K
    min_patches: int = P.PATCHES_PER_IMAGE  # geometry stops once this many exist ...
    min_scales: int = P.MIN_SCALES  # ... and this many scales were used
    min_patch_overlap: float = P.MIN_PATCH_OVERLAP
    min_box_coverage: float = P.MIN_BOX_COVERAGE
    difficult: P.DifficultMode = "object"  # the reference counts difficult boxes as objects
    shuffle_patches: bool = True  # mix positives over the micro-batches (seed.md is silent)
    test_sampling: Literal["random", "spread"] = "random"  # the reference draws at random
    canvas: tuple[int, int] = (500, 500)  # (Hc, Wc); larger images are scaled down once
    crop_boxes: P.CropMode = "exact"  # exact fractional boxes | reference: int()-truncated
    max_rows: int = 96  # R; the reference grid needs at most 85 (see share_rows)


class ImageError(DataError):
    """An image file that cannot be used; the message names it."""


def decode_image(path: str, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] from any file PIL reads (grayscale, CMYK, palette, PNG named .jpg)."""
    try:
        with Image.open(path) as im:
            if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, (0, 0, 0))
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types for broken files
        raise ImageError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    if expected_size is not None and (rgb.shape[1], rgb.shape[0]) != expected_size:
        raise ImageError(
            f"{path}: is {rgb.shape[1]}x{rgb.shape[0]} but its annotation says "
            f"{expected_size[0]}x{expected_size[1]}; fix the XML or the image"
        )
    return rgb


def fit_canvas(
    image: np.ndarray, boxes: np.ndarray, canvas: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Scale an image larger than the canvas down once (PIL bilinear, antialiased), with its
    boxes; smaller images are untouched. Pixel centres map as (x + 0.5) * f - 0.5."""
    h, w = image.shape[:2]
    f = min(canvas[0] / h, canvas[1] / w)
    if f >= 1:
        return image, boxes
    size = (max(1, min(canvas[1], round(w * f))), max(1, min(canvas[0], round(h * f))))
    scaled = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return scaled, ((boxes + 0.5) * f - 0.5).astype(np.float32)


def pad_to_canvas(image: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    out = np.zeros((*canvas, 3), np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def make_example(
    record: VocRecord,
    index: int,
    rng: np.random.Generator,
    config: PatchConfig,
    train: bool,
) -> Batch:
    """Decode one image and sample its K patches (pure NumPy; runs in the workers)."""
    image = decode_image(str(record.image_path), (record.width, record.height))
    image, gt = fit_canvas(image, record.boxes, config.canvas)
    h, w = image.shape[:2]
    boxes, _ = P.patch_boxes(w, h, config.scales, config.min_patches, config.min_scales)
    labels = P.patch_labels(
        boxes,
        gt,
        record.labels,
        record.difficult,
        min_patch_overlap=config.min_patch_overlap,
        min_box_coverage=config.min_box_coverage,
        difficult=config.difficult,
    )
    k = config.patches_per_image
    if train:
        chosen = P.sample_train(labels, rng, k, shuffle=config.shuffle_patches)
        valid = np.ones(k, bool)
    else:
        chosen = P.sample_test(len(boxes), rng, k, config.test_sampling)
        valid = chosen >= 0
        chosen = np.maximum(chosen, 0)  # padding repeats patch 0, masked by valid and label
    sampled_labels = np.where(valid, labels[chosen], P.IGNORE)
    return example_from_boxes(image, boxes[chosen], sampled_labels, valid, index, config)


def example_from_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray,
    index: int,
    config: PatchConfig,
) -> Batch:
    """One element from an image (already on the canvas scale) and its K patch boxes:
    the crop rectangles (``config.crop_boxes``) and the shared-rows crop plan."""
    h, w = image.shape[:2]
    sampled = P.crop_rectangles(boxes, config.crop_boxes).astype(np.float32)
    transposed = h > w and config.canvas[0] == config.canvas[1]
    row_axis, col_axis = ([0, 2], [1, 3]) if transposed else ([1, 3], [0, 2])
    row_intervals, row_index = share_intervals(sampled[:, row_axis], config.max_rows)
    return {
        "image": pad_to_canvas(image, config.canvas),
        "image_size": np.array([h, w], np.int32),
        "boxes": sampled,
        "labels": np.asarray(labels, np.int32),
        "valid": np.asarray(valid, bool),
        "image_index": np.int32(index),
        "row_intervals": row_intervals,
        "row_index": row_index,
        "col_intervals": sampled[:, col_axis],
        "transposed": np.bool_(transposed),
    }


def padding_example(config: PatchConfig) -> Batch:
    """An element that contributes nothing (labels -1, image_index -1), to fill a last batch."""
    k = config.patches_per_image
    box = np.array([[0, 0, 1, 1]], np.float32).repeat(k, 0)
    return {
        "image": np.zeros((*config.canvas, 3), np.uint8),
        "image_size": np.array([2, 2], np.int32),
        "boxes": box,
        "labels": np.full(k, P.IGNORE, np.int32),
        "valid": np.zeros(k, bool),
        "image_index": np.int32(-1),
        "row_intervals": np.tile(np.array([[0, 1]], np.float32), (config.max_rows, 1)),
        "row_index": np.zeros(k, np.int32),
        "col_intervals": box[:, [0, 2]],
        "transposed": np.bool_(False),
    }


class _Example(grain.transforms.Map):
    """(global position, record index) -> one example. Its random generator comes from the
    epoch's seed and the image's position in the *global* order, so an image gets the same
    patches whichever process reads it and however many processes there are."""

    def __init__(self, records: Sequence[VocRecord], config: PatchConfig, train: bool, seed: int):
        self.records, self.config, self.train, self.seed = records, config, train, seed

    def map(self, element: tuple[int, int]) -> Batch:
        position, index = element
        if index < 0:
            return padding_example(self.config)
        rng = np.random.default_rng([self.seed, position])
        return make_example(self.records[index], index, rng, self.config, self.train)


def global_order(
    num_records: int, global_batch: int, *, train: bool, seed: int, epoch: int
) -> np.ndarray:
    """[batches, global_batch] record indices of one epoch, the same on every process.

    Training: a fresh permutation every epoch, the last incomplete batch dropped. Evaluation:
    every record once, in order, padded with -1 to whole batches."""
    if train:
        order = np.random.default_rng(_mix(seed, epoch, 0)).permutation(num_records)
        order = order[: len(order) - len(order) % global_batch]
    else:
        order = np.arange(num_records)
        pad = -len(order) % global_batch
        order = np.concatenate([order, np.full(pad, -1, order.dtype)])
    return order.reshape(-1, global_batch)


def epoch_dataset(
    records: Sequence[VocRecord],
    config: PatchConfig,
    *,
    images_per_batch: int,
    train: bool,
    seed: int,
    epoch: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """One epoch as a grain MapDataset of this process's batches of ``images_per_batch``.

    The epoch's global batches hold ``images_per_batch * shard_count`` images
    (:func:`global_order`); process ``shard_index`` reads the contiguous slice
    ``[shard_index * images_per_batch, (shard_index + 1) * images_per_batch)`` of each, which
    is what ``jax.make_array_from_process_local_data`` expects along a 1-D data mesh. The
    batches are therefore identical for any number of processes with the same global batch,
    and batch ``b`` of an epoch can be recomputed from its index alone (``dataset[b:]``
    resumes an epoch).
    """
    per = images_per_batch
    order = global_order(len(records), per * shard_count, train=train, seed=seed, epoch=epoch)
    positions = np.arange(order.size).reshape(order.shape)
    local = slice(shard_index * per, (shard_index + 1) * per)
    elements = list(
        zip(positions[:, local].ravel().tolist(), order[:, local].ravel().tolist(), strict=True)
    )
    ds = grain.MapDataset.source(elements)
    ds = ds.map(_Example(records, config, train, _mix(seed, epoch, 1)))
    return ds.batch(per, drop_remainder=False)


def _mix(seed: int, epoch: int, stream: int) -> int:
    """A 32-bit seed for (seed, epoch, stream), as grain wants."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def iterate(dataset: grain.MapDataset, workers: int = 0, prefetch: int = 2) -> Any:
    """A checkpointable iterator (``get_state``/``set_state``), with worker processes."""
    it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if workers > 0:
        if (
            not flags.FLAGS.is_parsed()
        ):  # grain's workers read absl flags;library users may not parse
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        )
    return iter(it_ds)
