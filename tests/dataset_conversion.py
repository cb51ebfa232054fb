"""A VOC-layout split written out in the other two formats, as a user's converter would:
COCO instances JSON (``x = xmin - 1, w = xmax - xmin + 1``, difficult as ``iscrowd``) and an
image-level label list (positives as labels, difficult-only classes as ignore). The tests read
them back with voc-jax's readers and compare with the VOC reader's records and APs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from defusedxml import ElementTree as SafeET

from voc_jax.data.voc import read_split


def voc_to_coco(voc: Path, split: str, root: Path, classes: tuple[str, ...]) -> Path:
    """``root/annotations/instances_<split>.json`` and ``root/<split>/`` (a link to the JPEGs),
    straight from the XML files (not through voc-jax's reader)."""
    images, annotations = [], []
    for number, image_id in enumerate(read_split(voc, split), start=1):
        xml = SafeET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        size = xml.find("size")
        images.append({"id": number, "file_name": f"{image_id}.jpg",
                       "width": int(size.findtext("width")),
                       "height": int(size.findtext("height"))})  # fmt: skip
        for obj in xml.findall("object"):
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            annotations.append({
                "id": len(annotations) + 1, "image_id": number,
                "category_id": 100 + classes.index(obj.findtext("name").strip()),
                "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1],
                "area": (x1 - x0 + 1) * (y1 - y0 + 1),
                "iscrowd": int(obj.findtext("difficult") == "1"),
            })  # fmt: skip
    categories = [{"id": 100 + c, "name": name} for c, name in enumerate(classes)]
    out = root / "annotations" / f"instances_{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": categories}))  # fmt: skip
    if not (root / split).exists():
        os.symlink((voc / "JPEGImages").resolve(), root / split)
    return out


def voc_image_labels(voc: Path, split: str) -> list[tuple[str, list[str], list[str]]]:
    """(image id, positive classes, difficult-only classes) per image, from the XML."""
    rows = []
    for image_id in read_split(voc, split):
        xml = SafeET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        easy, hard = [], []
        for obj in xml.findall("object"):
            name = obj.findtext("name").strip()
            (hard if obj.findtext("difficult") == "1" else easy).append(name)
        labels = sorted(set(easy))
        rows.append((image_id, labels, sorted(set(hard) - set(labels))))
    return rows


def voc_to_label_list(voc: Path, split: str, root: Path, classes, suffix: str = ".csv") -> Path:
    """``root/<split>.csv`` (or ``.jsonl``), ``root/classes.txt`` and ``root/JPEGImages``."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "JPEGImages").exists():
        os.symlink((voc / "JPEGImages").resolve(), root / "JPEGImages")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    rows = voc_image_labels(voc, split)
    out = root / f"{split}{suffix}"
    if suffix == ".jsonl":
        out.write_text("".join(json.dumps({"image": f"JPEGImages/{i}.jpg", "labels": labels,
                                           "ignore": ignore}) + "\n"
                               for i, labels, ignore in rows))  # fmt: skip
        return out
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels", "ignore"])
        for i, labels, ignore in rows:
            writer.writerow([f"JPEGImages/{i}.jpg", ";".join(labels), ";".join(ignore)])
    return out
