"""Multiscale patch geometry, patch labels and per-image sampling, exactly as the reference.

Pure NumPy, vectorised over patches (and over patches x boxes for labels). Boxes are
``(x0, y0, x1, y1)`` floats in 0-based pixel coordinates; areas are continuous
``(x1 - x0) * (y1 - y0)``. docs/reference.md is the specification; the docstrings say where it is silent
and what we chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

REFERENCE_SCALES: tuple[float, ...] = (
    1.0, 1.3, 1.6, 2.0, 2.3, 2.6, 3.0, 3.3, 3.6, 4.0, 4.3, 4.6, 5.0,
)  # fmt: skip
PATCHES_PER_IMAGE = 448
MIN_SCALES = 11
MIN_PATCH_OVERLAP = 0.2  # intersection >= 20% of the patch area ...
MIN_BOX_COVERAGE = 0.6  # ... and >= 60% of the box area
IGNORE = -1  # label of a patch training must skip (difficult="ignore")

DifficultMode = Literal["object", "ignore", "exclude"]
DIFFICULT_MODES = ("object", "ignore", "exclude")
TEST_SAMPLINGS = ("random", "spread")
CropMode = Literal["exact", "reference"]
CROP_MODES = ("exact", "reference")


def axis_counts(length: int, sizes: np.ndarray) -> np.ndarray:
    """Patches along an axis of ``length`` pixels for each patch side: ceil((L-1)/size),
    doubled when above 1 (about 50% overlap). Same float operations as the reference."""
    n = np.ceil((length - 1) / sizes).astype(np.int64)
    return np.where(n > 1, 2 * n, n)


def scale_counts(
    width: int, height: int, scales: Sequence[float] = REFERENCE_SCALES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scale: (patch side, patches along x, patches along y)."""
    sizes = (min(width, height) - 1) / np.asarray(scales, np.float64)
    return sizes, axis_counts(width, sizes), axis_counts(height, sizes)


def scales_used(counts: np.ndarray, min_patches: int, min_scales: int) -> int:
    """Scales are taken in order; stop after the first scale at which at least ``min_patches``
    patches exist and at least ``min_scales`` scales were used (else all scales)."""
    total = np.cumsum(counts)
    enough = (total >= min_patches) & (np.arange(1, len(counts) + 1) >= min_scales)
    return int(np.argmax(enough)) + 1 if enough.any() else len(counts)


def patch_boxes(
    width: int,
    height: int,
    scales: Sequence[float] = REFERENCE_SCALES,
    min_patches: int = PATCHES_PER_IMAGE,
    min_scales: int = MIN_SCALES,
) -> tuple[np.ndarray, np.ndarray]:
    """All candidate patches of a ``width`` x ``height`` image, large scales first.

    Returns float64 boxes [N, 4] and int32 scale indices [N]. Within a scale the grid goes
    column by column, as the reference's loops do (x position outer, y position inner, top to
    bottom within a column); the order decides which positives are "the first 448".
    """
    if width < 2 or height < 2:
        raise ValueError(f"image of {width}x{height} pixels is too small for patches")
    sizes, nx, ny = scale_counts(width, height, scales)
    counts = nx * ny
    used = scales_used(counts, min_patches, min_scales)
    sizes, nx, ny, counts = sizes[:used], nx[:used], ny[:used], counts[:used]

    scale = np.repeat(np.arange(used), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    j = np.arange(counts.sum()) - first[scale]
    ix, iy = j // ny[scale], j % ny[scale]  # x outer, y inner (the reference's loops)
    size = sizes[scale]
    cx = _centres(width, size, ix, nx[scale])
    cy = _centres(height, size, iy, ny[scale])
    half = size / 2
    boxes = np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)
    return boxes, scale.astype(np.int32)


def _centres(length: int, size: np.ndarray, index: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Evenly spaced from size/2 to (L-1)-size/2; a single patch centred at (L-1)/2."""
    step = ((length - 1) - size) / np.maximum(n - 1, 1)
    return np.where(n > 1, size / 2 + index * step, (length - 1) / 2)


def crop_rectangles(boxes: np.ndarray, mode: CropMode = "exact") -> np.ndarray:
    """The rectangles the crops resample, for patch ``boxes`` [N, 4].

    "exact": the fractional boxes themselves (resampled exactly; the default). "reference":
    each coordinate truncated to a whole pixel, ``int(v)``, as the reference passed them to
    ``PIL.Image.crop``; its crops are up to one pixel off the exact box. Labels are always
    computed from the exact boxes, as in the reference.
    """
    if mode == "exact":
        return boxes
    if mode == "reference":
        return np.trunc(boxes)
    raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")


def box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def intersection_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] intersection areas of boxes a [N, 4] and b [M, 4]."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def patch_labels(
    patch_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_difficult: np.ndarray | None = None,
    *,
    min_patch_overlap: float = MIN_PATCH_OVERLAP,
    min_box_coverage: float = MIN_BOX_COVERAGE,
    difficult: DifficultMode = "object",
) -> np.ndarray:
    """int32 [N] label per patch: the label of the one qualifying box, else background (0).

    A box qualifies when its intersection with the patch is at least ``min_patch_overlap`` of
    the patch area and ``min_box_coverage`` of the box area; two or more qualifying boxes, even
    of one class, make the patch background (the reference rule). ``difficult``: "object"
    treats difficult boxes as ordinary (the reference); "ignore" labels a patch whose only
    qualifying box is difficult IGNORE (-1) so training skips it; "exclude" drops difficult
    boxes before labelling.
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int32).reshape(-1)
    is_difficult = (
        np.zeros(len(gt_labels), bool) if gt_difficult is None else np.asarray(gt_difficult, bool)
    )
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult must be object, ignore or exclude, got {difficult!r}")
    if difficult == "exclude":
        keep = ~is_difficult
        gt_boxes, gt_labels, is_difficult = gt_boxes[keep], gt_labels[keep], is_difficult[keep]
    n = len(patch_boxes)
    if len(gt_labels) == 0:
        return np.zeros(n, np.int32)
    inter = intersection_area(np.asarray(patch_boxes, np.float64), gt_boxes)
    qualifies = (inter >= min_patch_overlap * box_area(patch_boxes)[:, None]) & (
        inter >= min_box_coverage * box_area(gt_boxes)[None, :]
    )
    single = qualifies.sum(axis=1) == 1
    which = np.argmax(qualifies, axis=1)
    labels = np.where(single, gt_labels[which], 0).astype(np.int32)
    if difficult == "ignore":
        labels[single & is_difficult[which]] = IGNORE
    return labels


def sample_train(
    labels: np.ndarray,
    rng: np.random.Generator,
    num: int = PATCHES_PER_IMAGE,
    *,
    shuffle: bool = True,
) -> np.ndarray:
    """Indices of ``num`` training patches, the reference's resampling.

    More than ``num`` positives: the first ``num`` (large scales first). Otherwise all
    positives plus background drawn at random without replacement. When an image has fewer
    usable patches than ``num`` (very rare; ignored patches are never used) the rest is drawn
    with replacement. ``shuffle`` mixes positives into all micro-batches (docs/reference.md is silent
    on the order; without it every positive lands in the first micro-batch).
    """
    positives = np.flatnonzero(labels > 0)
    background = np.flatnonzero(labels == 0)
    if len(positives) >= num:
        chosen = positives[:num]
    else:
        need = num - len(positives)
        if len(background) >= need:
            extra = rng.choice(background, need, replace=False)
        else:
            pool = background if len(background) else positives
            if len(pool) == 0:
                raise ValueError("no usable patch: every patch is ignored")
            extra = np.concatenate(
                [background, rng.choice(pool, need - len(background), replace=True)]
            )
        chosen = np.concatenate([positives, np.sort(extra)])
    if shuffle:
        chosen = rng.permutation(chosen)
    return chosen.astype(np.int64)


def sample_test(
    num_patches: int,
    rng: np.random.Generator | None = None,
    num: int = PATCHES_PER_IMAGE,
    mode: Literal["random", "spread"] = "random",
) -> np.ndarray:
    """Indices of ``num`` test patches, -1 where an image has fewer (mask those out).

    "random": a random ``num`` of all candidates (the reference; needs ``rng``). "spread":
    ``num`` indices evenly spread over the candidate list (deterministic, no rng), a fixed
    choice for reproducible evaluation. To score all candidates use ``np.arange``.
    """
    if num_patches <= num:
        return np.concatenate([np.arange(num_patches), np.full(num - num_patches, -1)])
    if mode == "random":
        if rng is None:
            raise ValueError("mode='random' needs an rng")
        return np.sort(rng.choice(num_patches, num, replace=False))
    if mode == "spread":
        return np.unique(np.linspace(0, num_patches - 1, num).round().astype(np.int64))
    raise ValueError(f"mode must be random or spread, got {mode!r}")
