"""A generated VOC-format dataset that a model can learn: real JPEG files and VOC XML.

Each of the 20 VOC class names is drawn as its own visual pattern, a shape x colour x texture
combination (classes sharing a shape differ in colour and texture). Images hold 1-4 objects
at widely varied scales over cluttered backgrounds, with occlusion (later objects cover
earlier ones), truncation at the borders and a ``difficult`` flag for objects that are tiny or
mostly hidden. Sizes vary like VOC's (about 200-500 px a side). Everything is deterministic
from the seed: image ``i`` is drawn from ``np.random.default_rng([seed, i])``.

Used by the tests, the quickstart and the smoke config, and it passes voc_jax.data.check.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from voc_jax.atomic import atomic_directory
from voc_jax.classes import CLASS_FILE, VOC_CLASSES

SHAPES = (
    "disc",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "hexagon",
    "halfdisc",
    "bars",
)
COLOURS = (
    (220, 40, 40),  # red
    (40, 170, 60),  # green
    (40, 80, 220),  # blue
    (235, 200, 30),  # yellow
    (200, 50, 200),  # magenta
    (30, 190, 200),  # cyan
    (240, 130, 20),  # orange
    (120, 60, 170),  # purple
)
TEXTURES = ("solid", "stripes", "checker", "dots")


@dataclasses.dataclass(frozen=True)
class ClassStyle:
    shape: str
    colour: tuple[int, int, int]
    texture: str


MAX_CLASSES = 80  # classes a generated dataset may have, each its own pattern


def class_styles(count: int = len(VOC_CLASSES)) -> tuple[ClassStyle, ...]:
    """Class c < 20: shape c // 2, colour 3c mod 8, texture c mod 4 -- all 20 combinations
    differ, and the two classes of a shape differ in both colour and texture. Classes past
    20 (a generated dataset of other classes) take the unused combinations in a fixed order,
    shapes first, so neighbours differ in shape."""
    if not 1 <= count <= MAX_CLASSES:
        raise ValueError(f"a generated dataset has 1..{MAX_CLASSES} classes, not {count}")
    first = [
        ClassStyle(SHAPES[c // 2], COLOURS[(3 * c) % len(COLOURS)], TEXTURES[c % len(TEXTURES)])
        for c in range(min(count, len(VOC_CLASSES)))
    ]
    rest = [
        ClassStyle(shape, colour, texture)
        for texture in TEXTURES
        for colour in COLOURS
        for shape in SHAPES
        if ClassStyle(shape, colour, texture) not in first
    ]
    return tuple(first + rest[: count - len(first)])


STYLES = class_styles()


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_trainval: int = 200
    num_test: int = 100
    seed: int = 0
    min_side: int = 200  # image sides are drawn from [min_side, max_side]
    max_side: int = 500
    max_objects: int = 4
    min_object_fraction: float = 0.12  # object side / shorter image side, log-uniform
    max_object_fraction: float = 0.85
    difficult_min_side: int = 20  # visible box side (px) under which an object is difficult
    difficult_max_hidden: float = 0.6  # hidden fraction above which an object is difficult
    jpeg_quality: int = 90
    classes: tuple[str, ...] = ()  # the classes' names (written to classes.txt); () = VOC's 20

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes) or VOC_CLASSES


@dataclasses.dataclass
class SyntheticObject:
    label: int  # 1..number of classes
    box: tuple[int, int, int, int]  # 0-based, inclusive pixel indices (VOC's, minus 1)
    truncated: bool
    difficult: bool


# ----------------------------------------------------------------------------- drawing


def _shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    x1, y1 = w - 1, h - 1
    cx, cy = x1 / 2, y1 / 2
    if shape == "disc":
        d.ellipse((0, 0, x1, y1), fill=255)
    elif shape == "square":
        d.rectangle((0, 0, x1, y1), fill=255)
    elif shape == "triangle":
        d.polygon([(cx, 0), (x1, y1), (0, y1)], fill=255)
    elif shape == "diamond":
        d.polygon([(cx, 0), (x1, cy), (cx, y1), (0, cy)], fill=255)
    elif shape == "cross":
        d.rectangle((w * 0.33, 0, w * 0.67, y1), fill=255)
        d.rectangle((0, h * 0.33, x1, h * 0.67), fill=255)
    elif shape == "ring":
        d.ellipse((0, 0, x1, y1), fill=255)
        d.ellipse((w * 0.28, h * 0.28, w * 0.72, h * 0.72), fill=0)
    elif shape == "star":
        angles = np.arange(10) * np.pi / 5 - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = [
            (cx + cx * r * np.cos(a), cy + cy * r * np.sin(a))
            for a, r in zip(angles, radius, strict=True)
        ]
        d.polygon(pts, fill=255)
    elif shape == "hexagon":
        angles = np.arange(6) * np.pi / 3
        d.polygon([(cx + cx * np.cos(a), cy + cy * np.sin(a)) for a in angles], fill=255)
    elif shape == "halfdisc":
        d.pieslice((0, 0, x1, 2 * y1), 180, 360, fill=255)
    elif shape == "bars":
        for k in range(3):
            d.rectangle((0, h * (0.05 + 0.33 * k), x1, h * (0.25 + 0.33 * k)), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(mask) > 127


def _texture(style: ClassStyle, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    colour = np.clip(np.array(style.colour) + rng.integers(-20, 21, 3), 0, 255)
    dark = colour * 0.35
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(4, int(min(w, h) / rng.uniform(4, 7)))
    if style.texture == "solid":
        on = np.ones((h, w), bool)
    elif style.texture == "stripes":
        on = (yy // max(2, period // 2)) % 2 == 0
    elif style.texture == "checker":
        on = ((yy // period) + (xx // period)) % 2 == 0
    else:  # dots on a dark ground
        r = period / 3
        on = ((yy % period - period / 2) ** 2 + (xx % period - period / 2) ** 2) > r * r
    tex = np.where(on[..., None], colour, dark)
    shade = np.linspace(0.85, 1.1, w)[None, :, None] * rng.uniform(0.9, 1.1)
    return np.clip(tex * shade, 0, 255)


def _background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Low-saturation gradient, grey clutter shapes and noise: things that are not objects."""
    a, b = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    grey = rng.uniform(0.5, 0.9)
    a = grey * a.mean() + (1 - grey) * a
    b = grey * b.mean() + (1 - grey) * b
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    ramp = a + (b - a) * t[:, None]
    img = np.broadcast_to(ramp[None] if len(t) == w else ramp[:, None], (h, w, 3)).copy()
    canvas = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(6, 18)):
        g = int(rng.integers(40, 220))
        fill = tuple(int(np.clip(g + rng.integers(-15, 16), 0, 255)) for _ in range(3))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(5, min(w, h) / 4)
        kind = rng.integers(3)
        if kind == 0:
            d.rectangle((x0, y0, x0 + s, y0 + s * rng.uniform(0.3, 1.5)), fill=fill)
        elif kind == 1:
            d.ellipse((x0, y0, x0 + s, y0 + s * rng.uniform(0.5, 1.5)), fill=fill)
        else:
            d.line(
                (x0, y0, x0 + rng.uniform(-s, s) * 3, y0 + rng.uniform(-s, s) * 3),
                fill=fill,
                width=3,
            )
    out = np.asarray(canvas, np.float32) + rng.normal(0, 6, (h, w, 3))
    return out


def render_image(
    rng: np.random.Generator, config: SyntheticConfig
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """One image (uint8 HxWx3) and its objects."""
    w = int(rng.integers(config.min_side, config.max_side + 1))
    h = int(rng.integers(config.min_side, config.max_side + 1))
    img = _background(w, h, rng)
    owner = np.full((h, w), -1, np.int32)
    n = int(rng.integers(1, config.max_objects + 1))
    names = config.class_names
    styles = STYLES if names == VOC_CLASSES else class_styles(len(names))
    labels = rng.integers(1, len(names) + 1, n)
    drawn: list[tuple[int, np.ndarray, bool]] = []  # label, pixels, truncated
    lo, hi = np.log(config.min_object_fraction), np.log(config.max_object_fraction)
    for label in labels:
        side = np.exp(rng.uniform(lo, hi)) * min(w, h)
        aspect = np.exp(rng.uniform(-0.4, 0.4))
        ow, oh = max(6, int(side * aspect)), max(6, int(side / aspect))
        # Centres anywhere in the image: objects near a border get truncated.
        ox = int(rng.uniform(0, w) - ow / 2)
        oy = int(rng.uniform(0, h) - oh / 2)
        style = styles[label - 1]
        mask = _shape_mask(style.shape, ow, oh)
        tex = _texture(style, ow, oh, rng)
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + ow, w), min(oy + oh, h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        sub = mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        if sub.sum() < 4:
            continue
        region = img[y0:y1, x0:x1]
        region[sub] = tex[y0 - oy : y1 - oy, x0 - ox : x1 - ox][sub]
        owner[y0:y1, x0:x1][sub] = len(drawn)
        full = np.zeros((h, w), bool)
        full[y0:y1, x0:x1] = sub
        truncated = ox < 0 or oy < 0 or ox + ow > w or oy + oh > h
        drawn.append((int(label), full, truncated))
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    objects = []
    for k, (label, full, truncated) in enumerate(drawn):
        visible = (owner == k) & full
        hidden = 1.0 - visible.sum() / max(full.sum(), 1)
        if visible.sum() < 4:
            continue  # entirely covered: not annotated, as VOC annotators would not see it
        ys, xs = np.nonzero(visible)
        vis_box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        small = min(vis_box[2] - vis_box[0], vis_box[3] - vis_box[1]) < config.difficult_min_side
        objects.append(
            SyntheticObject(
                label=label,
                box=vis_box,
                truncated=truncated,
                difficult=bool(small or hidden > config.difficult_max_hidden),
            )
        )
    if not objects:  # keep every image annotated with at least one object
        return render_image(rng, config)
    return img, objects


# ----------------------------------------------------------------------------- files


def annotation_xml(
    image_id: str,
    width: int,
    height: int,
    objects: list[SyntheticObject],
    classes: tuple[str, ...] = VOC_CLASSES,
) -> str:
    """VOC 2007 XML (1-based inclusive coordinates)."""
    parts = [
        "<annotation>",
        "\t<folder>VOC2007</folder>",
        f"\t<filename>{escape(image_id)}.jpg</filename>",
        "\t<source><database>voc-jax synthetic</database></source>",
        f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "\t<segmented>0</segmented>",
    ]
    for o in objects:
        x0, y0, x1, y1 = (v + 1 for v in o.box)
        parts += [
            "\t<object>",
            f"\t\t<name>{escape(classes[o.label - 1])}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{int(o.truncated)}</truncated>",
            f"\t\t<difficult>{int(o.difficult)}</difficult>",
            f"\t\t<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def image_targets(
    objects: list[SyntheticObject], num_classes: int = len(VOC_CLASSES)
) -> np.ndarray:
    out = np.full(num_classes, -1, np.int8)
    for o in objects:
        if o.difficult:
            out[o.label - 1] = max(out[o.label - 1], 0)
    for o in objects:
        if not o.difficult:
            out[o.label - 1] = 1
    return out


def generate(
    out_dir: str | os.PathLike[str],
    config: SyntheticConfig = SyntheticConfig(),
    *,
    overwrite: bool = False,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> Path:
    """Write a VOC2007-layout directory (Annotations/, JPEGImages/, ImageSets/Main/) atomically.

    Splits: trainval (ids 000000..), test (after them), and train/val as the even/odd halves of
    trainval; per-class files ``<class>_<split>.txt`` with 1 / 0 / -1 as the official ones.
    """
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (tmp / sub).mkdir(parents=True)
        total = config.num_trainval + config.num_test
        ids = [f"{i:06d}" for i in range(total)]
        targets = {}
        indices: Iterable[int] = progress(range(total)) if progress else range(total)
        names = config.class_names
        for i in indices:
            rng = np.random.default_rng([config.seed, i])
            img, objects = render_image(rng, config)
            h, w = img.shape[:2]
            Image.fromarray(img).save(
                tmp / "JPEGImages" / f"{ids[i]}.jpg", quality=config.jpeg_quality
            )
            (tmp / "Annotations" / f"{ids[i]}.xml").write_text(
                annotation_xml(ids[i], w, h, objects, names)
            )
            targets[ids[i]] = image_targets(objects, len(names))
        trainval = ids[: config.num_trainval]
        splits = {
            "trainval": trainval,
            "train": trainval[0::2],
            "val": trainval[1::2],
            "test": ids[config.num_trainval :],
        }
        main = tmp / "ImageSets" / "Main"
        for split, members in splits.items():
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))
            for c, name in enumerate(names):
                lines = "".join(f"{i} {int(targets[i][c]):2d}\n" for i in members)
                (main / f"{name}_{split}.txt").write_text(lines)
        facts = dataclasses.asdict(config)
        if config.classes:  # a list of its own, beside the annotations (voc_jax.classes)
            (tmp / CLASS_FILE).write_text("".join(f"{n}\n" for n in names))
        else:  # VOC's: synthetic.json as it always was
            del facts["classes"]
        (tmp / "synthetic.json").write_text(json.dumps(facts, indent=2) + "\n")
    return Path(out_dir)
