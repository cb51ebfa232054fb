"""Image-level label lists: ``ROOT/<split>.csv`` or ``ROOT/<split>.jsonl``, one image a row
with its labels and, optionally, labels to ignore (VOC's difficult: neither positive nor
negative in the AP and the loss). No boxes: the whole-image family and the linear probe use
them; the patch family needs boxes and refuses them before any work.

CSV: a header ``image,labels[,ignore]``; ``labels`` and ``ignore`` are class names separated
by ``;`` (empty for none)::

    image,labels,ignore
    photos/0001.jpg,dog;person,
    photos/0002.jpg,car,bicycle

JSON lines: ``{"image": "photos/0001.jpg", "labels": ["dog", "person"], "ignore": []}``.
Image paths are relative to ROOT; the class list is ``ROOT/classes.txt`` or ``data.classes``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from voc_jax.data.voc import (
    DecodedCache,
    Problem,
    VocDataset,
    VocError,
    VocRecord,
    checked_size,
    finished,
    missing_images,
)

SUFFIXES = (".csv", ".jsonl")


def list_file(root: Path, split: str) -> Path:
    """``ROOT/<split>.csv`` or ``ROOT/<split>.jsonl``, whichever exists (not both)."""
    found = [Path(root) / f"{split}{s}" for s in SUFFIXES if (Path(root) / f"{split}{s}").is_file()]
    if len(found) == 2:
        raise VocError(f"{root}: both {split}.csv and {split}.jsonl exist; keep one")
    if not found:
        raise VocError(
            f"{root}: no {split}.csv or {split}.jsonl (data.format=labels reads "
            "ROOT/<split>.csv or ROOT/<split>.jsonl)"
        )
    return found[0]


def read_rows(path: Path) -> list[tuple[int, str, list[str], list[str]]]:
    """(line number, image, labels, ignore) per row, as written."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VocError(f"{path}: not UTF-8 text (byte {e.start})") from e
    return read_jsonl(path, text) if path.suffix == ".jsonl" else read_csv(path, text)


def split_names(cell: str | None) -> list[str]:
    return [n.strip() for n in (cell or "").split(";") if n.strip()]


def read_csv(path: Path, text: str) -> list[tuple[int, str, list[str], list[str]]]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
        raise VocError(
            f"{path}: the header must name the columns image,labels (and optionally ignore); "
            f"it is {reader.fieldnames}"
        )
    return [
        (reader.line_num, (row["image"] or "").strip(), split_names(row["labels"]),
         split_names(row.get("ignore")))
        for row in reader
    ]  # fmt: skip


def read_jsonl(path: Path, text: str) -> list[tuple[int, str, list[str], list[str]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, labels = str(row["image"]), row["labels"]
            ignore = row.get("ignore", [])
            if not isinstance(labels, list) or not isinstance(ignore, list):
                raise TypeError("labels and ignore must be lists of class names")
        except (ValueError, KeyError, TypeError) as e:
            raise VocError(
                f"{path}: line {number} is not "
                '{"image": PATH, "labels": [NAMES], "ignore": [NAMES]} '
                f"({type(e).__name__}: {e})"
            ) from e
        rows.append((number, image.strip(), [str(n) for n in labels], [str(n) for n in ignore]))
    return rows


def image_targets(
    labels: Sequence[str], ignore: Sequence[str], index: dict[str, int], where: str
) -> tuple[np.ndarray | None, str | None]:
    """int8 [C] (1 a label, 0 ignored, -1 absent), or None and the problem."""
    out = np.full(len(index), -1, np.int8)
    for name in [*labels, *ignore]:
        if name not in index:
            return None, f"{where}: unknown class {name!r} (not in classes.txt or data.classes)"
    both = sorted(set(labels) & set(ignore))
    if both:
        verb = "is" if len(both) == 1 else "are"
        return None, f"{where}: {', '.join(both)} {verb} both a label and ignored"
    out[[index[n] for n in ignore]] = 0
    out[[index[n] for n in labels]] = 1
    return out, None


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
    """Index a label list; every image's header is read (its size places it in the whole-
    image family's batches), and decoded when ``images`` is "decode"."""
    del strict  # no boxes to clip
    root = Path(root)
    path = list_file(root, split)
    rows = read_rows(path)
    index = {name: i for i, name in enumerate(classes)}
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    entries = []
    for number, image, labels, ignore in rows:
        where = f"line {number} ({image})"
        if not image:
            problems.append(Problem("error", str(path), f"line {number}: no image path"))
            continue
        if image in seen:
            problems.append(Problem("error", str(path), f"{image} is listed twice (lines "
                                    f"{seen[image]} and {number})"))  # fmt: skip
            continue
        seen[image] = number
        targets, problem = image_targets(labels, ignore, index, where)
        if problem:
            problems.append(Problem("error", str(path), problem))
            continue
        entries.append((image, root / image, targets))
    problems += missing_images([p for _, p, _ in entries], str(path), path.name)
    if any(p.severity == "error" for p in problems):
        return finished(
            VocDataset(root, split, [], problems, tuple(classes), False), raise_on_error
        )
    decoded = decoded if decoded is not None else DecodedCache(None)
    records = []
    for image, image_path, targets in progress(entries) if progress else entries:
        size = checked_size(image_path, "decode" if images == "decode" else "sizes", decoded,
                            problems)  # fmt: skip
        if size is None:
            continue
        records.append(
            VocRecord(
                image_id=str(Path(image).with_suffix("")),
                image_path=image_path,
                width=size[0],
                height=size[1],
                boxes=np.zeros((0, 4), np.float32),
                labels=np.zeros(0, np.int32),
                difficult=np.zeros(0, bool),
                truncated=np.zeros(0, bool),
                num_classes=len(classes),
                image_targets=targets,
            )
        )
    return finished(
        VocDataset(root, split, records, problems, tuple(classes), False), raise_on_error
    )
