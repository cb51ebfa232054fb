"""Fine-tuning's random resized crops and flips on the device, inside the jitted step.

The host sends each photo once (uint8, at the top left of a fixed frame, scaled down once if
it is larger) with the crop box it drew (torchvision's RandomResizedCrop rule, the same draws
as the host path in ``inputs.random_crop``), the flip, and the extent the crop fills on each
scale's canvas. Here each canvas is resampled from the frame with PIL's bilinear filter
(``voc_jax.data.crops``: antialiased when shrinking, the patch family's device crops), as two
dense matrix products per photo, mirrored by reversing the horizontal pass's sample positions,
and padded with the weights' mean pixel outside the extent. Equal to the host path (PIL crop,
flip and resize) to uint8 rounding: tested.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def fill_weights(start: jax.Array, length: jax.Array, limit: jax.Array, extent: jax.Array,
                 out_size: int, in_size: int, mirrored: jax.Array) -> jax.Array:  # fmt: skip
    """Dense [out_size, in_size] weights: the crop interval [start, start + length) resampled
    onto the first ``extent`` outputs (PIL's bilinear filter, renormalised inside the crop and
    the photo's ``limit``), in reverse order when ``mirrored``; outputs past the extent 0."""
    scale = length / extent
    filter_scale = jnp.maximum(scale, 1.0)
    i = jnp.arange(out_size, dtype=jnp.float32)
    offset = jnp.where(mirrored, extent - i - 0.5, i + 0.5)
    centre = start + offset * scale
    pixel = jnp.arange(in_size, dtype=jnp.float32) + 0.5
    weight = jnp.maximum(0.0, 1.0 - jnp.abs(pixel[None, :] - centre[:, None]) / filter_scale)
    inside = (pixel > start) & (pixel < start + length) & (pixel < limit)
    weight = jnp.where(inside[None, :], weight, 0.0)
    weight = weight / jnp.maximum(weight.sum(axis=1, keepdims=True), 1e-12)
    return jnp.where((i < extent)[:, None], weight, 0.0)


def fit_crop(frame: jax.Array, size: jax.Array, box: jax.Array, flip: jax.Array,
             extent: jax.Array, canvas: int | tuple[int, int], pad: jax.Array) -> jax.Array:  # fmt: skip
    """One photo: [F, F, 3] uint8 frame, (height, width) of the photo on it, crop box
    (x0, y0, x1, y1), flip, (height, width) it fills -> [H, W, 3] float32 in 0-255 (the
    canvas: a side, or (H, W))."""
    height, width = (canvas, canvas) if isinstance(canvas, int) else canvas
    box = box.astype(jnp.float32)
    extent = extent.astype(jnp.float32)
    rows = fill_weights(box[1], box[3] - box[1], size[0], extent[0], height, frame.shape[0],
                        jnp.asarray(False))  # fmt: skip
    cols = fill_weights(box[0], box[2] - box[0], size[1], extent[1], width, frame.shape[1], flip)
    out = jnp.einsum("ph,hwc->pwc", rows, frame.astype(jnp.float32))
    out = jnp.einsum("qw,pwc->pqc", cols, out)
    i = jnp.arange(height, dtype=jnp.float32)
    j = jnp.arange(width, dtype=jnp.float32)
    inside = (i[:, None] < extent[0]) & (j[None, :] < extent[1])
    return jnp.where(inside[..., None], out, pad.astype(jnp.float32))


def make_fitter(pad: np.ndarray) -> Callable[[dict], tuple]:
    """batch (frames, sizes, boxes, flips, and per scale extents [B, 2] and the canvas shape,
    as an empty [H, W, 0] array's) -> one [B, H, W, 3] float32 canvas per scale."""
    pad_pixel = jnp.asarray(pad, jnp.float32)

    def fit(batch: dict) -> tuple:
        views = []
        for shape, extents in zip(batch["canvases"], batch["extents"], strict=True):
            canvas = tuple(shape.shape[:2])
            one = jax.vmap(lambda f, s, b, m, e, c=canvas: fit_crop(f, s, b, m, e, c, pad_pixel))
            views.append(one(batch["frames"], batch["sizes"], batch["boxes"], batch["flips"],
                             extents))  # fmt: skip
        return tuple(views)

    return fit
