"""Crop + resize patch boxes on the device, inside jit: the reference's bottleneck, removed.

The host sends each image once (uint8, padded to a fixed canvas, with its true size) and the
float patch boxes; this module produces the resized patches with PIL's bilinear filter, which
is antialiased when down-sampling (a triangle filter widened by the down-scale factor,
weights renormalised at the crop border). Separable, and written as dense matrix products
(a vertical pass [P, Hc] x image, then a horizontal pass [P, Wc] per patch) because matmuls
are what every accelerator and CPU does fastest; gathering filter taps instead was ~100x
slower on CPU. Patches that share a row interval share the vertical pass.

Boxes are ``(x0, y0, x1, y1)`` crop rectangles in pixel-edge coordinates, exactly what
``PIL.Image.crop`` takes: pixel ``j`` spans ``[j, j + 1)``; non-integer boxes are resampled
exactly rather than rounded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from voc_jax.preprocessing import Preprocessing


def axis_weights(
    start: jax.Array, length: jax.Array, limit: jax.Array, out_size: int, in_size: int
) -> jax.Array:
    """Dense [out, in] resampling weights of one crop interval along one axis, PIL's filter.

    ``start``/``length``: the crop interval (scalars, pixel-edge coordinates); ``limit``: the
    image's true size on that axis (canvas padding beyond it is never read). Output pixel i
    has centre c = start + (i + 0.5) * scale and weights max(0, 1 - |j + 0.5 - c| / fs) with
    fs = max(scale, 1) over the input pixels j inside the crop, renormalised to sum 1.
    """
    scale = length / out_size
    filter_scale = jnp.maximum(scale, 1.0)
    centre = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
    pixel = jnp.arange(in_size, dtype=jnp.float32) + 0.5
    weight = jnp.maximum(0.0, 1.0 - jnp.abs(pixel[None, :] - centre[:, None]) / filter_scale)
    inside = (pixel > start) & (pixel < start + length) & (pixel < limit)
    weight = jnp.where(inside[None, :], weight, 0.0)
    return weight / jnp.maximum(weight.sum(axis=1, keepdims=True), 1e-12)


def resample_rows(
    image: jax.Array, intervals: jax.Array, height: jax.Array, patch_size: int
) -> jax.Array:
    """[Hc, Wc, 3] image, [R, 2] (y0, y1) intervals -> [R, P, Wc, 3] vertically resampled."""
    weights = jax.vmap(
        lambda iv: axis_weights(iv[0], iv[1] - iv[0], height, patch_size, image.shape[0])
    )(intervals)
    return jnp.einsum("rph,hwc->rpwc", weights, image.astype(jnp.float32))


def resample_cols(
    rows: jax.Array, intervals: jax.Array, width: jax.Array, patch_size: int
) -> jax.Array:
    """[K, P, Wc, 3] row-resampled strips, [K, 2] (x0, x1) intervals -> [K, P, P, 3]."""
    weights = jax.vmap(
        lambda iv: axis_weights(iv[0], iv[1] - iv[0], width, patch_size, rows.shape[2])
    )(intervals)
    return jnp.einsum("kqw,kpwc->kpqc", weights, rows)


def crop_patches(
    images: jax.Array, image_sizes: jax.Array, boxes: jax.Array, patch_size: int
) -> jax.Array:
    """[B, Hc, Wc, 3] uint8 images, [B, 2] true (height, width), [B, K, 4] boxes ->
    [B, K, P, P, 3] float32 patches in 0-255. Each patch resampled on its own; see
    crop_patches_shared_rows for the faster form when many patches share a row interval."""
    boxes = boxes.astype(jnp.float32)

    def per_image(image, size, image_boxes):
        rows = resample_rows(image, image_boxes[:, 1::2], size[0], patch_size)
        return resample_cols(rows, image_boxes[:, 0::2], size[1], patch_size)

    return jax.vmap(per_image)(images, image_sizes, boxes)


def crop_patches_shared_rows(
    images: jax.Array,
    image_sizes: jax.Array,
    row_intervals: jax.Array,
    row_index: jax.Array,
    col_intervals: jax.Array,
    patch_size: int,
) -> jax.Array:
    """Like crop_patches, but the vertical pass runs once per distinct row interval.

    A patch grid has few distinct (y0, y1) intervals (65 for 448+ VOC patches of a landscape
    image, see share_intervals), so the expensive pass over the whole image height runs ~7x less.
    ``row_intervals`` [B, R, 2], ``row_index`` [B, K] (which interval each patch uses),
    ``col_intervals`` [B, K, 2]. Same result as crop_patches to float rounding.
    """

    def per_image(image, size, rows_iv, index, cols_iv):
        rows = resample_rows(image, rows_iv.astype(jnp.float32), size[0], patch_size)
        return resample_cols(rows[index], cols_iv.astype(jnp.float32), size[1], patch_size)

    return jax.vmap(per_image)(images, image_sizes, row_intervals, row_index, col_intervals)


def share_intervals(intervals: np.ndarray, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Host side of crop_patches_shared_rows: the distinct [K, 2] intervals padded to
    [max_rows, 2] (with the first one) and the index of each patch's interval [K].

    The reference grid along an image's shorter side has 2 * ceil(s) positions per scale
    (one at scale 1): 85 distinct intervals over all 13 scales, so the bound the configs
    derive, 2 * sum(ceil(s)) = 86 (experiment.grid_rows), always suffices when the shorter side
    is the row axis (the pipeline transposes portrait images for that).
    """
    intervals = np.asarray(intervals, np.float32)
    distinct, index = np.unique(intervals, axis=0, return_inverse=True)
    if len(distinct) > max_rows:
        raise ValueError(
            f"{len(distinct)} distinct row intervals exceed max_rows={max_rows}; raise it"
        )
    padded = np.repeat(distinct[:1], max_rows, axis=0)
    padded[: len(distinct)] = distinct
    return padded, index.reshape(-1).astype(np.int32)


def crop_batch(batch: dict[str, jax.Array], patch_size: int) -> jax.Array:
    """[B, K, P, P, 3] float32 patches (0-255) from a pipeline batch, shared-rows form.

    Portrait images were given intervals in the transposed frame (see pipeline): they are
    transposed here on the device, cropped, and their patches transposed back.
    """
    images, sizes, flip = batch["image"], batch["image_size"], batch["transposed"]
    if images.shape[1] == images.shape[2]:
        images = jnp.where(flip[:, None, None, None], images.swapaxes(1, 2), images)
    sizes = jnp.where(flip[:, None], sizes[:, ::-1], sizes)
    out = crop_patches_shared_rows(
        images,
        sizes,
        batch["row_intervals"],
        batch["row_index"],
        batch["col_intervals"],
        patch_size,
    )
    return jnp.where(flip[:, None, None, None, None], out.swapaxes(2, 3), out)


def crop_and_normalize(
    images: jax.Array,
    image_sizes: jax.Array,
    boxes: jax.Array,
    patch_size: int,
    preprocessing: Preprocessing,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Patches ready for the network: cropped, resized and normalised as the weights expect."""
    patches = crop_patches(images, image_sizes, boxes, patch_size)
    return preprocessing.normalize(patches, dtype)
