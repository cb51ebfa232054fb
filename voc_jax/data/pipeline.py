"""The host pipeline (grain): records -> shuffled, decoded, patch-sampled NumPy batches.

One element is one image and its K sampled patches. Every random choice comes from grain's
per-element generator, derived from the seed, the epoch and the element's position, so batches
are reproducible and batch ``b`` of an epoch can be recomputed from its index alone.

A batch (B images, K patches per image) holds, whatever the crop site:
  labels        int32   [B, K]          0 background, 1..20 classes, -1 ignored / padding
  valid         bool    [B, K]          a real sampled patch (False only for padding)
  image_index   int32   [B]             index into the records list (-1 for padding)
and, by where the patches are cropped (``PatchConfig.crops``) or whether they come from a
feature cache:
- device crops (accelerators): the image and the crop plan, the jitted step crops
    image         uint8   [B, Hc, Wc, 3]  RGB, top-left aligned, zero padding
    image_size    int32   [B, 2]          true (height, width) on the canvas
    boxes         float32 [B, K, 4]       (x0, y0, x1, y1) crop rectangles, canvas pixels
    row_intervals float32 [B, R, 2]       distinct intervals for the shared vertical pass
    row_index     int32   [B, K]          which interval each patch uses
    col_intervals float32 [B, K, 2]       the other axis of each box
    transposed    bool    [B]             intervals refer to the transposed (portrait) image
- host crops (the CPU default): the workers crop with PIL
    patches       uint8   [B, K, P, P, 3]
- a feature cache (frozen backbone): the sampled patches' cached fc6 rows
    features      float16/bfloat16/float32 [B, K, D]
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import grain
import numpy as np
from absl import flags
from PIL import Image, ImageOps

from voc_jax.data import patches as P
from voc_jax.data.crops import share_intervals
from voc_jax.data.voc import (
    ModeError,
    TooLarge,
    VocRecord,
    check_mode,
    check_pixels,
    open_image,
)
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
    shuffle_patches: bool = (
        True  # mix positives over the micro-batches (docs/reference.md is silent)
    )
    test_sampling: Literal["random", "spread"] = "random"  # the reference draws at random
    canvas: tuple[int, int] = (500, 500)  # (Hc, Wc); larger images are scaled down once
    crop_boxes: P.CropMode = "exact"  # exact fractional boxes | reference: int()-truncated
    # device: the jitted step crops (images + boxes in the batch); host: the workers crop
    # with PIL (``patches`` in the batch), faster on a CPU backend
    crops: Literal["device", "host"] = "device"
    patch_size: int = 224  # P, for host crops
    max_rows: int = 96  # R; the reference grid needs 85 (see crops.share_intervals)


class ImageError(DataError):
    """An image file that cannot be used; the message names it."""


def decode_image(
    path: str, expected_size: tuple[int, int] | None = None, *, orient: bool = False
) -> np.ndarray:
    """RGB uint8 [H, W, 3] from any file PIL reads (grayscale, CMYK, palette, PNG named .jpg).
    ``orient``: turn the pixels as the file's EXIF orientation says (a phone photo taken
    upright is stored sideways); for a user's images (predict). Datasets keep their stored
    pixels, which their boxes describe (VOC's JPEGs carry no orientation)."""
    try:
        with open_image(path) as im:
            check_mode(im.mode)
            check_pixels(im.size)
            if orient:
                im = ImageOps.exif_transpose(im)
            if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, (0, 0, 0))
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            rgb = np.asarray(im.convert("RGB"))
    except (ModeError, TooLarge) as e:
        raise ImageError(f"{path}: {e}") from e
    except Exception as e:  # PIL raises many types for broken files
        raise ImageError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    if expected_size is not None and (rgb.shape[1], rgb.shape[0]) != expected_size:
        raise ImageError(
            f"{path}: is {rgb.shape[1]}x{rgb.shape[0]} but its annotation says "
            f"{expected_size[0]}x{expected_size[1]}; fix the XML or the image"
        )
    return rgb


def canvas_scale(width: int, height: int, canvas: tuple[int, int]) -> tuple[float, int, int]:
    """(factor, new width, new height) of an image fitted into the canvas: scaled down once
    when larger, untouched (factor 1) otherwise."""
    f = min(canvas[0] / height, canvas[1] / width)
    if f >= 1:
        return 1.0, width, height
    new_w = max(1, min(canvas[1], round(width * f)))
    new_h = max(1, min(canvas[0], round(height * f)))
    return f, new_w, new_h


def fit_canvas(
    image: np.ndarray, boxes: np.ndarray, canvas: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Scale an image larger than the canvas down once (PIL bilinear, antialiased), with its
    boxes; smaller images are untouched. Pixel centres map as (x + 0.5) * f - 0.5."""
    h, w = image.shape[:2]
    f, new_w, new_h = canvas_scale(w, h, canvas)
    if f >= 1:
        return image, boxes
    scaled = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    return scaled, _scale_boxes(boxes, f)


def _scale_boxes(boxes: np.ndarray, f: float) -> np.ndarray:
    return ((boxes + 0.5) * f - 0.5).astype(np.float32)


def pad_to_canvas(image: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    out = np.zeros((*canvas, 3), np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def candidates(record: VocRecord, config: PatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate patch of an image (on the canvas scale) and its label; from the
    annotation alone (no pixels): float64 boxes [N, 4], int32 labels [N]."""
    f, w, h = canvas_scale(record.width, record.height, config.canvas)
    gt = record.boxes if f >= 1 else _scale_boxes(record.boxes, f)
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
    return boxes, labels


def sample(
    labels: np.ndarray, rng: np.random.Generator, config: PatchConfig, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the K sampled candidates, valid [K]): the reference's sampling. Padding
    (an image with fewer than K candidates, at test time) repeats candidate 0, not valid."""
    k = config.patches_per_image
    if train:
        return P.sample_train(labels, rng, k, shuffle=config.shuffle_patches), np.ones(k, bool)
    chosen = P.sample_test(len(labels), rng, k, config.test_sampling)
    return np.maximum(chosen, 0), chosen >= 0


def make_example(
    record: VocRecord,
    index: int,
    rng: np.random.Generator,
    config: PatchConfig,
    train: bool,
) -> Batch:
    """Decode one image and sample its K patches (pure NumPy; runs in the workers)."""
    boxes, labels = candidates(record, config)
    chosen, valid = sample(labels, rng, config, train)
    image = decode_image(str(record.image_path), (record.width, record.height))
    image, _ = fit_canvas(image, record.boxes, config.canvas)
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
    """One element from an image (already on the canvas scale) and its K patch boxes: the
    crop rectangles (``config.crop_boxes``) and the shared-rows crop plan for the device, or
    (``config.crops="host"``) the patches themselves, cropped here with PIL."""
    h, w = image.shape[:2]
    if config.crops == "host":
        return {
            "patches": host_crops(image, P.crop_rectangles(boxes, config.crop_boxes), config),
            "labels": np.asarray(labels, np.int32),
            "valid": np.asarray(valid, bool),
            "image_index": np.int32(index),
        }
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


def host_crops(image: np.ndarray, boxes: np.ndarray, config: PatchConfig) -> np.ndarray:
    """uint8 [K, P, P, 3]: each box resampled by PIL's bilinear filter (antialiased when
    down-sampling), fractional boxes exactly; the filter voc_jax.data.crops computes on the
    device (the two agree within a grey level: PIL rounds an 8-bit intermediate)."""
    pil = Image.fromarray(image)
    size = (config.patch_size, config.patch_size)
    out = np.empty((len(boxes), *size, 3), np.uint8)
    for i, box in enumerate(np.asarray(boxes, np.float64)):
        out[i] = np.asarray(pil.resize(size, Image.BILINEAR, box=tuple(box)))
    return out


def padding_example(config: PatchConfig) -> Batch:
    """An element that contributes nothing (labels -1, image_index -1), to fill a last batch."""
    k = config.patches_per_image
    if config.crops == "host":
        return {
            "patches": np.zeros((k, config.patch_size, config.patch_size, 3), np.uint8),
            "labels": np.full(k, P.IGNORE, np.int32),
            "valid": np.zeros(k, bool),
            "image_index": np.int32(-1),
        }
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
            return self.padding()
        rng = np.random.default_rng([self.seed, position])
        return self.example(self.records[index], index, rng)

    def example(self, record: VocRecord, index: int, rng: np.random.Generator) -> Batch:
        return make_example(record, index, rng, self.config, self.train)

    def padding(self) -> Batch:
        return padding_example(self.config)


class _CachedExample(_Example):
    """The same sampling (same generator, same candidates, same labels), but the patches are
    rows of a feature cache (fc6 activations) instead of pixels: no decoding, no crops."""

    def __init__(self, records, config, train, seed, features: Any):
        super().__init__(records, config, train, seed)
        self.features = features  # a voc_jax.feature_cache.FeatureCache (opened lazily)

    def example(self, record: VocRecord, index: int, rng: np.random.Generator) -> Batch:
        _, labels = candidates(record, self.config)
        chosen, valid = sample(labels, rng, self.config, self.train)
        return {
            "features": self.features.gather(index, chosen),
            "labels": np.where(valid, labels[chosen], P.IGNORE).astype(np.int32),
            "valid": valid,
            "image_index": np.int32(index),
        }

    def padding(self) -> Batch:
        k = self.config.patches_per_image
        return {
            "features": np.zeros((k, self.features.width), self.features.dtype),
            "labels": np.full(k, P.IGNORE, np.int32),
            "valid": np.zeros(k, bool),
            "image_index": np.int32(-1),
        }


def global_order(
    num_records: int, global_batch: int, *, train: bool, seed: int, epoch: int
) -> np.ndarray:
    """[batches, global_batch] record indices of one epoch, the same on every process.

    Training: a fresh permutation every epoch; evaluation: every record in order. Either way
    every record appears once, the last batch padded with -1 (padding elements carry no valid
    patch: they add nothing to the loss, its gradient or the scores)."""
    if train:
        order = np.random.default_rng(_mix(seed, epoch, 0)).permutation(num_records)
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
    features: Any = None,
) -> grain.MapDataset:
    """One epoch as a grain MapDataset of this process's batches of ``images_per_batch``.

    The epoch's global batches hold ``images_per_batch * shard_count`` images
    (:func:`global_order`); process ``shard_index`` reads the contiguous slice
    ``[shard_index * images_per_batch, (shard_index + 1) * images_per_batch)`` of each, which
    is what ``jax.make_array_from_process_local_data`` expects along a 1-D data mesh. The
    batches are therefore identical for any number of processes with the same global batch,
    and batch ``b`` of an epoch can be recomputed from its index alone (``dataset[b:]``
    resumes an epoch). With ``features`` (a voc_jax.feature_cache.FeatureCache of these
    records) the elements are the sampled patches' cached fc6 rows instead of pixels:
    ``features`` [K, D], ``labels``, ``valid``, ``image_index``, from the same sampling.
    """
    per = images_per_batch
    order = global_order(len(records), per * shard_count, train=train, seed=seed, epoch=epoch)
    positions = np.arange(order.size).reshape(order.shape)
    local = slice(shard_index * per, (shard_index + 1) * per)
    elements = list(
        zip(positions[:, local].ravel().tolist(), order[:, local].ravel().tolist(), strict=True)
    )
    ds = grain.MapDataset.source(elements)
    seed_ = _mix(seed, epoch, 1)
    element = (
        _Example(records, config, train, seed_)
        if features is None
        else _CachedExample(records, config, train, seed_, features)
    )
    ds = ds.map(element)
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


@contextlib.contextmanager
def iterating(dataset: grain.MapDataset, workers: int = 0, prefetch: int = 2) -> Iterator[Any]:
    """``iterate``, closed on every way out (an error, a stop request, an abandoned epoch):
    grain's workers hand batches over in shared memory (``/dev/shm``), and what they had
    prefetched is unlinked only by the iterator's ``close``; otherwise Python's resource
    tracker finds it at exit ("leaked shared_memory objects") or, after a kill, nobody does.
    The batches already consumed are unlinked by grain's deletion thread, asynchronously:
    waited for here, so that none is still queued when the process exits."""
    iterator = iterate(dataset, workers, prefetch)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        if workers > 0:
            gc.collect()  # the last batches' arrays, then their queued deletions
            wait_for_shared_memory_deletes()


def wait_for_shared_memory_deletes(timeout: float = 30.0) -> None:
    """Wait until grain's deletion thread has unlinked every shared-memory batch queued so far
    (``SharedMemoryArray.__del__`` hands them to a one-thread pool, whose daemon thread dies
    with the process: what it had not reached was left in /dev/shm)."""
    try:
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    except ImportError:  # another grain layout: nothing known to wait for
        return
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply_async(int).wait(timeout)  # one thread: runs after every earlier deletion
