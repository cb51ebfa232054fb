"""A synthetic single-object source task: the ImageNet role in the offline transfer demo.

Each image shows one roughly centred object of a *source* class over the same cluttered
backgrounds as the synthetic VOC set. Source classes are shape x colour x texture combinations
drawn from the same visual vocabulary (voc_jax.data.synthetic's shapes, colours and textures)
but never one of the 20 target patterns, so a network pretrained on them has learned edges,
colours, textures and shapes, not the target classes themselves. Objects vary in scale,
position, aspect, rotation and shading. Deterministic: image ``i`` of a split comes from
``np.random.default_rng([seed, split_id, i])`` and its class is ``i % num_classes``.

NumPy and PIL only, so the PyTorch pretraining script and the tests can share it.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from PIL import Image

from voc_jax.data.synthetic import (
    COLOURS,
    SHAPES,
    STYLES,
    TEXTURES,
    ClassStyle,
    _background,
    _shape_mask,
    _texture,
)

SPLIT_IDS = {"train": 0, "val": 1}


def source_styles(num_classes: int = 100, seed: int = 0) -> tuple[ClassStyle, ...]:
    """``num_classes`` shape x colour x texture combinations, none of them a target class.

    The choice is a seeded permutation of the 300 non-target combinations, balanced so every
    shape appears (almost) equally often.
    """
    targets = set(STYLES)
    candidates = [
        ClassStyle(shape, colour, texture)
        for shape, colour, texture in itertools.product(SHAPES, COLOURS, TEXTURES)
        if ClassStyle(shape, colour, texture) not in targets
    ]
    if not 1 <= num_classes <= len(candidates):
        raise ValueError(f"num_classes must be in 1..{len(candidates)}, got {num_classes}")
    rng = np.random.default_rng(seed)
    by_shape = {s: [c for c in candidates if c.shape == s] for s in SHAPES}
    for group in by_shape.values():
        rng.shuffle(group)
    # Round-robin over shapes so small class counts still cover the whole vocabulary.
    ordered = [
        group[k]
        for k in range(max(map(len, by_shape.values())))
        for group in by_shape.values()
        if k < len(group)
    ]
    return tuple(ordered[:num_classes])


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    num_classes: int = 100
    size: int = 64  # image side (square)
    class_seed: int = 0  # which combinations are the source classes
    min_object_fraction: float = 0.35  # object side / image side, uniform
    max_object_fraction: float = 0.9
    max_shift: float = 0.15  # centre offset, fraction of the image side
    max_rotation: float = 30.0  # degrees, uniform in [-r, r]
    render_scale: int = 2  # drawn this many times larger, then downsampled (anti-aliasing)


def render_source_image(
    rng: np.random.Generator, style: ClassStyle, config: SourceConfig
) -> np.ndarray:
    """One uint8 (size, size, 3) image of ``style``."""
    big = config.size * config.render_scale
    img = _background(big, big, rng)
    side = rng.uniform(config.min_object_fraction, config.max_object_fraction) * big
    aspect = np.exp(rng.uniform(-0.3, 0.3))
    ow, oh = max(6, int(side * aspect)), max(6, int(side / aspect))
    mask = Image.fromarray((_shape_mask(style.shape, ow, oh) * 255).astype(np.uint8))
    tex = Image.fromarray(_texture(style, ow, oh, rng).astype(np.uint8))
    angle = rng.uniform(-config.max_rotation, config.max_rotation)
    mask = np.asarray(mask.rotate(angle, Image.BILINEAR, expand=True)) / 255.0
    tex = np.asarray(tex.rotate(angle, Image.BILINEAR, expand=True), np.float32)
    mh, mw = mask.shape
    cx = big / 2 + rng.uniform(-config.max_shift, config.max_shift) * big
    cy = big / 2 + rng.uniform(-config.max_shift, config.max_shift) * big
    x0, y0 = int(cx - mw / 2), int(cy - mh / 2)
    # Clip the pasted rectangle to the canvas (large rotated objects may overhang).
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    w = min(mw - sx0, big - dx0)
    h = min(mh - sy0, big - dy0)
    alpha = mask[sy0 : sy0 + h, sx0 : sx0 + w, None]
    region = img[dy0 : dy0 + h, dx0 : dx0 + w]
    img[dy0 : dy0 + h, dx0 : dx0 + w] = (
        alpha * tex[sy0 : sy0 + h, sx0 : sx0 + w] + (1 - alpha) * region
    )
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if config.render_scale != 1:
        out = out.resize((config.size, config.size), Image.BILINEAR, reducing_gap=None)
    return np.asarray(out)


def make_split(
    split: str, count: int, config: SourceConfig = SourceConfig(), seed: int = 0, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8 [N, size, size, 3]) and labels (int64 [N]), classes balanced."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    styles = source_styles(config.num_classes, config.class_seed)
    images = np.empty((count, config.size, config.size, 3), np.uint8)
    labels = np.arange(count, dtype=np.int64) % config.num_classes
    indices = progress(range(count)) if progress else range(count)
    for i in indices:
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        images[i] = render_source_image(rng, styles[labels[i]], config)
    return images, labels
