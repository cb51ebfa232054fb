"""The COCO reader: ``ROOT/annotations/instances_<split>.json`` (images, categories, boxes
``[x, y, w, h]``, ``iscrowd``) and the images in ``ROOT/<split>/`` -> the same validated
records as the VOC reader, for both method families.

The categories become a dense class list in the file's order (class c is category
``categories[c]``), unless the dataset's list is given (``classes.txt`` or ``data.classes``),
in which case every category must be in it. A box becomes VOC's 0-based inclusive corners,
``(x, y, x + w - 1, y + h - 1)``: the inverse of the usual VOC -> COCO conversion
(``x = xmin - 1, w = xmax - xmin + 1``), so a VOC dataset converted to COCO reads back to the
same records. Crowd boxes (``iscrowd: 1``) are treated as VOC treats difficult objects:
ignored by the AP (an image whose only instances of a class are crowds is neither a positive
nor a negative) and, in the patch family, as ``patches.difficult`` says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voc_jax.classes import check_classes
from voc_jax.data.voc import (
    MIN_IMAGE_SIDE,
    DecodedCache,
    Problem,
    VocDataset,
    VocError,
    VocRecord,
    checked_size,
    finished,
    missing_images,
)


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def image_dir(root: Path, split: str) -> Path:
    return Path(root) / split


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise VocError(
            f"{path}: COCO annotation file not found (data.format=coco reads "
            "ROOT/annotations/instances_<split>.json and the images in ROOT/<split>/)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise VocError(f"{path}: not valid JSON ({e})") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise VocError(f"{path}: no {key!r} list; is it a COCO instances file?")
    return data


def categories_of(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    """The category names in the file's order (the dense class list)."""
    names = []
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise VocError(f"{path}: category {i} has no id or name")
        names.append(category["name"])
    return check_classes(names, f"{path} (categories)")


def file_classes(root: Path, split: str) -> tuple[str, ...]:
    """The class list a COCO split defines: its categories, in the file's order."""
    path = annotation_file(root, split)
    return categories_of(read_json(path), path)


def load_dataset(
    root: str | Path,
    split: str,
    *,
    classes: Sequence[str],
    strict: bool = False,
    images: str = "sizes",
    raise_on_error: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
    decoded: DecodedCache | None = None,
) -> VocDataset:
    """Index a COCO split, checked as the VOC reader checks (``images``: none | exist | sizes
    | decode); boxes outside their image are clipped with one warning (errors in ``strict``
    mode). Raises VocError listing every error unless ``raise_on_error`` is False."""
    root = Path(root)
    path = annotation_file(root, split)
    data = read_json(path)
    where = str(path)
    problems: list[Problem] = []
    label_of = category_labels(data, path, classes, problems)
    images_by_id = image_table(data, root, split, where, problems)
    objects = group_objects(data, images_by_id, label_of, where, strict, problems)
    ordered = list(images_by_id.items())
    if images != "none":
        problems += missing_images([p for _, (p, _, _) in ordered], str(image_dir(root, split)),
                                   path.name)  # fmt: skip
    decoded = decoded if decoded is not None else DecodedCache(None)
    iterator: Iterable = progress(ordered) if progress else ordered
    records = []
    for image_id, (image_path, width, height) in iterator:
        if images in ("sizes", "decode") and image_path.is_file():
            size = checked_size(image_path, images, decoded, problems)
            if size is None:
                continue
            if size != (width, height):
                problems.append(Problem("error", where, f"image {image_id} ({image_path.name}) "
                                        f"is {size[0]}x{size[1]}, the file says {width}x{height}"))  # fmt: skip
                continue
        boxes, labels, crowd = objects.get(image_id, ([], [], []))
        records.append(
            VocRecord(
                image_id=image_path.stem,
                image_path=image_path,
                width=width,
                height=height,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int32),
                difficult=np.asarray(crowd, bool),
                truncated=np.zeros(len(labels), bool),
                num_classes=len(classes),
            )
        )
    return finished(VocDataset(root, split, records, problems, tuple(classes)), raise_on_error)


def category_labels(
    data: dict[str, Any], path: Path, classes: Sequence[str], problems: list[Problem]
) -> dict[Any, int]:
    """Category id -> 1-based label in ``classes``; a category outside the list is an error,
    a category no annotation uses a warning (said once, with the names)."""
    index = {name: i + 1 for i, name in enumerate(classes)}
    label_of: dict[Any, int] = {}
    for category in data["categories"]:
        name = category.get("name")
        if name not in index:
            problems.append(Problem("error", str(path), f"category {category.get('id')} "
                                    f"{name!r} is not in the class list (classes.txt or data.classes)"))  # fmt: skip
            continue
        if category["id"] in label_of:
            problems.append(Problem("error", str(path), f"category id {category['id']} twice"))
        label_of[category["id"]] = index[name]
    used = {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}
    unused = [c["name"] for c in data["categories"] if c["id"] not in used]
    if unused:
        problems.append(Problem("warning", str(path), f"{len(unused)} categories have no "
                                f"annotation in this split: {', '.join(unused[:10])}"
                                f"{' ...' if len(unused) > 10 else ''}"))  # fmt: skip
    return label_of


def image_table(
    data: dict[str, Any], root: Path, split: str, where: str, problems: list[Problem]
) -> dict[Any, tuple[Path, int, int]]:
    """image id -> (path, width, height), in the file's order; an id or file named twice, or
    a size missing or too small, is an error."""
    table: dict[Any, tuple[Path, int, int]] = {}
    files: dict[str, Any] = {}
    for i, image in enumerate(data["images"]):
        try:
            image_id, name = image["id"], str(image["file_name"])
            width, height = int(image["width"]), int(image["height"])
        except (KeyError, TypeError, ValueError) as e:
            problems.append(Problem("error", where, f"images[{i}]: missing or bad field ({e})"))
            continue
        if image_id in table or name in files:
            twice = f"id {image_id}" if image_id in table else f"file {name}"
            problems.append(Problem("error", where, f"images[{i}]: {twice} is listed twice"))
            continue
        if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
            problems.append(Problem("error", where, f"image {image_id}: size {width}x{height} "
                                    f"is below {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"))  # fmt: skip
            continue
        files[name] = image_id
        table[image_id] = (image_dir(root, split) / name, width, height)
    return table


def group_objects(
    data: dict[str, Any],
    images: dict[Any, tuple[Path, int, int]],
    label_of: dict[Any, int],
    where: str,
    strict: bool,
    problems: list[Problem],
) -> dict[Any, tuple[list, list, list]]:
    """image id -> (boxes, labels, crowd) of its usable annotations, boxes clipped to the
    image (one warning with the count; errors when ``strict``)."""
    out: dict[Any, tuple[list, list, list]] = {}
    clipped = dropped = 0
    unknown: dict[Any, int] = {}  # category id -> its first annotation
    for i, a in enumerate(data["annotations"]):
        try:
            image_id, category = a["image_id"], a["category_id"]
            x, y, w, h = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError) as e:
            problems.append(
                Problem("error", where, f"annotations[{i}]: missing or bad field ({e})")
            )
            continue
        if image_id not in images:
            problems.append(Problem("error", where, f"annotations[{i}]: image {image_id} is "
                                    "not in the images list"))  # fmt: skip
            continue
        if category not in label_of:
            unknown.setdefault(category, i)
            continue
        if not all(np.isfinite((x, y, w, h))):
            problems.append(Problem("error", where, f"annotations[{i}]: bbox {a['bbox']} is "
                                    "not finite"))  # fmt: skip
            continue
        _, width, height = images[image_id]
        box = (x, y, x + w - 1.0, y + h - 1.0)
        inside = (
            float(np.clip(box[0], 0, width - 1)),
            float(np.clip(box[1], 0, height - 1)),
            float(np.clip(box[2], 0, width - 1)),
            float(np.clip(box[3], 0, height - 1)),
        )
        clipped += inside != box
        if inside[2] <= inside[0] or inside[3] <= inside[1]:
            dropped += 1
            continue
        boxes, labels, crowd = out.setdefault(image_id, ([], [], []))
        boxes.append(inside)
        labels.append(label_of[category])
        crowd.append(bool(a.get("iscrowd", 0)))
    for category, i in unknown.items():
        if category not in {c.get("id") for c in data["categories"]}:
            problems.append(Problem("error", where, f"annotations[{i}] (and maybe more): "
                                    f"category {category} is not in the categories list"))  # fmt: skip
    severity = "error" if strict else "warning"
    if clipped:
        problems.append(Problem(severity, where, f"{clipped} boxes reach outside their image; "
                                "clipped to it"))  # fmt: skip
    if dropped:
        problems.append(Problem(severity, where, f"{dropped} boxes are empty inside their "
                                "image; dropped"))  # fmt: skip
    return out
