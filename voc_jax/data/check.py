"""Validate a VOC dataset up front: ``python -m voc_jax.data.check ROOT --split trainval``.

Prints per-class counts (images, objects, difficult, truncated), the image size range, whether
the image-level targets agree with the official per-class files, and every problem found.
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

from voc_jax.classes import VOC_CLASSES
from voc_jax.data.patches import patch_boxes, patch_labels
from voc_jax.data.voc import (
    IMAGE_CHECKS,
    VocDataset,
    VocError,
    format_problems,
    load_dataset,
    read_class_targets,
)


def class_table(dataset: VocDataset) -> str:
    n = len(VOC_CLASSES)
    images, objects, difficult, truncated = (np.zeros(n, int) for _ in range(4))
    for r in dataset.records:
        images[np.unique(r.labels) - 1] += 1
        np.add.at(objects, r.labels - 1, 1)
        np.add.at(difficult, r.labels[r.difficult] - 1, 1)
        np.add.at(truncated, r.labels[r.truncated] - 1, 1)
    lines = [
        f"| {'class':<12} | {'images':>6} | {'objects':>7} | {'difficult':>9} | {'truncated':>9} |",
        f"|{'-' * 14}|{'-' * 7}:|{'-' * 8}:|{'-' * 10}:|{'-' * 10}:|",
    ]
    for c, name in enumerate(VOC_CLASSES):
        lines.append(
            f"| {name:<12} | {images[c]:>6} | {objects[c]:>7} | {difficult[c]:>9} | {truncated[c]:>9} |"
        )
    with_objects = sum(1 for r in dataset.records if r.num_objects)
    lines.append(
        f"| {'total':<12} | {with_objects:>6} | {objects.sum():>7} | {difficult.sum():>9} | "
        f"{truncated.sum():>9} |"
    )
    return "\n".join(lines)


def patch_statistics(dataset: VocDataset) -> str:
    """Candidate patches per class under the reference geometry and label rule."""
    counts = np.zeros(len(VOC_CLASSES) + 1, np.int64)
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
    for c, name in enumerate(VOC_CLASSES, start=1):
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
    official = read_class_targets(dataset.root, dataset.split)
    if official is None:
        return None
    mismatches = []
    for r in dataset.records:
        want = official.get(r.image_id)
        got = r.targets()
        if want is None:
            mismatches.append(f"{r.image_id}: not in the per-class files")
        elif not np.array_equal(got, want):
            bad = [VOC_CLASSES[c] for c in np.flatnonzero(got != want)]
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
    parser.add_argument("root", type=Path, help="the VOC2007 directory (with Annotations/)")
    parser.add_argument("--split", default="trainval", help="ImageSets/Main/<split>.txt")
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
        help="how far to check the JPEGs: auto = sizes if JPEGImages/ exists, else none",
    )
    return cli.argparse_command(argv, parser, run)


def run(args: argparse.Namespace) -> int:
    images = args.images
    if images == "auto":
        images = "sizes" if (args.root / "JPEGImages").is_dir() else "none"
    start = time.perf_counter()
    if not args.root.is_dir():
        raise VocError(f"{args.root}: no such directory (the VOC2007 directory, with Annotations/)")
    dataset = load_dataset(
        args.root,
        args.split,
        strict=args.strict,
        images=images,
        raise_on_error=False,
        progress=lambda ids: tqdm(ids, desc=f"parsing {args.split}", unit="xml", leave=False),
    )
    elapsed = time.perf_counter() - start
    print(f"{args.root} split {args.split}: {len(dataset)} images indexed in {elapsed:.2f} s")
    print(f"image check: {images}" + (" (no JPEGImages/ found)" if images == "none" else ""))
    comparison = compare_with_official(dataset) if dataset.records else None
    if dataset.records:
        widths = [r.width for r in dataset.records]
        heights = [r.height for r in dataset.records]
        print(f"sizes: width {min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}")
        print(class_table(dataset))
        if comparison:
            print(comparison[1])
        if args.patch_stats:
            print(patch_statistics(dataset))
    if dataset.problems:
        print(format_problems(dataset.problems))
    print(f"{len(dataset.errors)} errors, {len(dataset.warnings)} warnings")
    failed = bool(dataset.errors) or (comparison is not None and not comparison[0])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
