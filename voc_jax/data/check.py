"""Validate a dataset up front: ``python -m voc_jax.data.check ROOT --split trainval``, in
any of the three formats (``--format voc | coco | labels``, README "Your own data").

Prints the class list and where it came from, per-class counts (images with the class,
images where it is only ignored (difficult or crowd), objects, difficult, truncated), the image
size range, whether the image-level targets agree with VOC's official per-class files (when
present), and every problem found.
Exit status: 0 clean (warnings allowed unless --strict), 1 errors, 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voc_jax.data import formats
from voc_jax.data.patches import patch_boxes, patch_labels
from voc_jax.data.voc import (
    IMAGE_CHECKS,
    VocDataset,
    VocError,
    format_problems,
    read_class_targets,
)


def class_table(dataset: VocDataset) -> str:
    """Per class: images where it is a label (positive), images where it is only ignored
    (difficult or crowd objects, a label list's ignore), objects, difficult, truncated."""
    n = len(dataset.classes)
    objects, difficult, truncated = (np.zeros(n, int) for _ in range(3))
    targets = dataset.targets() if dataset.records else np.zeros((0, n), np.int8)
    positive, ignored = (targets == 1).sum(0), (targets == 0).sum(0)
    for r in dataset.records:
        np.add.at(objects, r.labels - 1, 1)
        np.add.at(difficult, r.labels[r.difficult] - 1, 1)
        np.add.at(truncated, r.labels[r.truncated] - 1, 1)
    w = max(12, *(len(name) for name in dataset.classes))
    header = ("images", "ignored", "objects", "difficult", "truncated")
    lines = [
        f"| {'class':<{w}} | " + " | ".join(f"{h:>9}" for h in header) + " |",
        f"|{'-' * (w + 2)}|" + "|".join(f"{'-' * 10}:" for _ in header) + "|",
    ]
    rows = zip(dataset.classes, positive, ignored, objects, difficult, truncated, strict=True)
    for name, *counts in rows:
        lines.append(f"| {name:<{w}} | " + " | ".join(f"{v:>9}" for v in counts) + " |")
    with_labels = int((targets >= 0).any(1).sum())
    totals = (with_labels, int(ignored.sum()), objects.sum(), difficult.sum(), truncated.sum())
    lines.append(f"| {'total':<{w}} | " + " | ".join(f"{v:>9}" for v in totals) + " |")
    lines.append("(total images: those with at least one label or ignored class)")
    return "\n".join(lines)


def patch_statistics(dataset: VocDataset) -> str:
    """Candidate patches per class under the reference geometry and label rule."""
    counts = np.zeros(len(dataset.classes) + 1, np.int64)
    positives_per_image = []
    for r in dataset.records:
        boxes, _ = patch_boxes(r.width, r.height)
        labels = patch_labels(boxes, r.boxes, r.labels, r.difficult)
        counts += np.bincount(labels, minlength=len(counts))
        positives_per_image.append(int((labels > 0).sum()))
    total = counts.sum()
    lines = [
        f"patches under the reference rule: {total} candidates over {len(dataset)} images, "
        f"{counts[1:].sum() / total:.2%} positive",
        f"| {'class':<12} | {'patches':>8} | {'of all':>7} | {'of positives':>12} |",
        f"|{'-' * 14}|{'-' * 9}:|{'-' * 8}:|{'-' * 13}:|",
    ]
    for c, name in enumerate(dataset.classes, start=1):
        lines.append(
            f"| {name:<12} | {counts[c]:>8} | {counts[c] / total:>7.2%} | "
            f"{counts[c] / max(counts[1:].sum(), 1):>12.2%} |"
        )
    per_image = np.array(positives_per_image)
    lines.append(
        f"positives per image: median {np.median(per_image):.0f}, mean {per_image.mean():.1f}, "
        f"none in {(per_image == 0).sum()} images, more than 448 in {(per_image > 448).sum()}"
    )
    return "\n".join(lines)


def compare_with_official(dataset: VocDataset) -> tuple[bool, str] | None:
    """(agree, message): computed targets vs ImageSets/Main/<class>_<split>.txt, if present."""
    official = read_class_targets(dataset.root, dataset.split, dataset.classes)
    if official is None:
        return None
    mismatches = []
    for r in dataset.records:
        want = official.get(r.image_id)
        got = r.targets()
        if want is None:
            mismatches.append(f"{r.image_id}: not in the per-class files")
        elif not np.array_equal(got, want):
            bad = [dataset.classes[c] for c in np.flatnonzero(got != want)]
            mismatches.append(f"{r.image_id}: differs for {', '.join(bad)}")
    if mismatches:
        return False, (
            f"per-class files DISAGREE for {len(mismatches)} images: " + "; ".join(mismatches[:10])
        )
    return (
        True,
        f"image-level targets equal the official per-class files for all {len(dataset)} images",
    )


def main(argv: Sequence[str] | None = None) -> int:
    from voc_jax import cli

    parser = cli.ArgumentParser(prog="python -m voc_jax.data.check", description=__doc__)
    parser.add_argument("root", type=Path, help="the dataset's directory (VOC: with Annotations/)")
    parser.add_argument("--split", default="trainval",
                        help="voc: ImageSets/Main/<split>.txt; coco: annotations/instances_"
                        "<split>.json; labels: <split>.csv or <split>.jsonl")  # fmt: skip
    parser.add_argument("--format", choices=formats.FORMATS, default="voc",
                        help="the dataset's format (README: Your own data)")  # fmt: skip
    parser.add_argument("--classes", default="",
                        help="the class names, comma-separated (default: ROOT/classes.txt, "
                        "else the format's own: VOC's 20, the COCO file's categories)")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="warnings count as errors")
    parser.add_argument(
        "--patch-stats",
        action="store_true",
        help="also count positive patches per class under the reference geometry and rule",
    )
    parser.add_argument(
        "--images",
        choices=("auto", *IMAGE_CHECKS),
        default="auto",
        help="how far to check the images: auto = sizes (voc: none without JPEGImages/)",
    )
    return cli.argparse_command(argv, parser, run)


def run(args: argparse.Namespace) -> int:
    images = args.images
    if images == "auto":
        voc_without_images = args.format == "voc" and not (args.root / "JPEGImages").is_dir()
        images = "none" if voc_without_images else "sizes"
    start = time.perf_counter()
    if not args.root.is_dir():
        raise VocError(f"{args.root}: no such directory (the dataset's directory)")
    given = [n.strip() for n in args.classes.split(",") if n.strip()]
    classes, source = formats.dataset_classes(args.format, args.root, given, args.split)
    dataset = formats.load_dataset(
        args.format,
        args.root,
        args.split,
        classes=classes,
        strict=args.strict,
        images=images,
        raise_on_error=False,
        progress=lambda ids: tqdm(ids, desc=f"parsing {args.split}", unit="xml", leave=False),
    )
    elapsed = time.perf_counter() - start
    print(
        f"{args.root} split {args.split} ({args.format}): {len(dataset)} images indexed in "
        f"{elapsed:.2f} s"
    )
    print(f"classes ({len(classes)}, from {source}): {', '.join(classes)}")
    print(f"image check: {images}" + (" (no JPEGImages/ found)" if images == "none" else ""))
    comparison = compare_with_official(dataset) if dataset.records else None
    if dataset.records:
        widths = [r.width for r in dataset.records]
        heights = [r.height for r in dataset.records]
        print(f"sizes: width {min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}")
        print(class_table(dataset))
        if comparison:
            print(comparison[1])
        if args.patch_stats and dataset.has_boxes:
            print(patch_statistics(dataset))
    if dataset.problems:
        print(format_problems(dataset.problems))
    print(f"{len(dataset.errors)} errors, {len(dataset.warnings)} warnings")
    failed = bool(dataset.errors) or (comparison is not None and not comparison[0])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
