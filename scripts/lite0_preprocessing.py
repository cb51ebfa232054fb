"""Which normalisation EfficientNet-Lite0's packaged weights expect, decided on real photos.

The two candidates: TensorFlow's Lite builder, RGB 0-255 as (x - 127) / 128, and torchvision's
ImageNet mean/std. Each genuine VOC 2007 photo holding objects of one class only (person
excluded: ImageNet has no person class) is shown to the converted ImageNet classifier the way
ImageNet is evaluated (shorter side to 256, centre crop 224); a hit is a top-1 (top-5) class
among that VOC class's ImageNet classes (airliner and warplane for aeroplane, the 118 dog
breeds for dog, ...). The normalisation the weights were trained with gives more hits and a
more confident, lower-entropy top-1. Prints one line per candidate, and JSON with --json.

    python scripts/lite0_preprocessing.py [--voc ../shared/data/voc2007-subset/VOCdevkit/VOC2007]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from voc_jax import models, weights
from voc_jax.classes import VOC_CLASSES
from voc_jax.convert import converter
from voc_jax.data.voc import load_dataset
from voc_jax.models.efficientnet_lite import TF_LITE
from voc_jax.preprocessing import TORCHVISION

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VOC_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_VOC = SHARED / "voc2007-subset" / "VOCdevkit" / "VOC2007"


def _span(a: int, b: int) -> tuple[int, ...]:
    return tuple(range(a, b + 1))


# ImageNet-1k class indices of each VOC class (person has none).
IMAGENET_OF = {
    "aeroplane": (404, 895, 908),
    "bicycle": (444, 671),
    "bird": _span(7, 24) + _span(80, 100) + _span(127, 146),
    "boat": (472, 484, 510, 554, 576, 625, 628, 693, 724, 780, 814, 833, 871, 914),
    "bottle": (440, 720, 737, 898, 901, 907),
    "bus": (654, 779, 874),
    "car": (436, 468, 479, 511, 581, 609, 627, 656, 661, 717, 751, 817),
    "cat": _span(281, 285),
    "chair": (423, 559, 765, 857),
    "cow": (345, 346, 347),
    "diningtable": (532,),
    "dog": _span(151, 268),
    "horse": (339, 603),
    "motorbike": (665, 670),
    "pottedplant": (738,),
    "sheep": (348, 349),
    "sofa": (831,),
    "train": (466, 547, 565, 705, 820),
    "tvmonitor": (527, 664, 782, 851),
}


def imagenet_view(path: Path) -> np.ndarray:
    """ImageNet's evaluation view: shorter side 256 (bilinear), centre crop 224, RGB uint8."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return np.asarray(image.crop((left, top, left + 224, top + 224)))


def single_class_images(voc: Path) -> list[tuple[Path, str]]:
    out = []
    for split in ("trainval", "test"):
        for record in load_dataset(voc, split, images="exist").records:
            classes = {VOC_CLASSES[label - 1] for label in record.labels}
            if len(classes) == 1 and (name := classes.pop()) in IMAGENET_OF:
                out.append((record.image_path, name))
    return out


def measure(voc: Path, batch: int = 32) -> dict:
    b = models.backbone("efficientnet_lite0")
    result = converter.from_package(b)
    model = weights.classifier_from_metadata(result.metadata)
    apply = jax.jit(lambda x: jax.nn.softmax(model.apply(result.variables, x)))
    images = single_class_images(voc)
    pixels = np.stack([imagenet_view(p) for p, _ in images])
    names = [n for _, n in images]
    rows = {}
    for label, prep in (
        ("tensorflow (x - 127) / 128", TF_LITE),
        ("torchvision mean/std", TORCHVISION),
    ):
        start = time.perf_counter()
        probs = np.concatenate(
            [
                np.asarray(apply(prep.normalize(pixels[i : i + batch])))
                for i in range(0, len(pixels), batch)
            ]
        )
        top5 = np.argsort(-probs, axis=1)[:, :5]
        hit1 = [top5[i, 0] in IMAGENET_OF[n] for i, n in enumerate(names)]
        hit5 = [bool(set(top5[i]) & set(IMAGENET_OF[n])) for i, n in enumerate(names)]
        entropy = -(probs * np.log(np.maximum(probs, 1e-12))).sum(axis=1)
        rows[label] = {
            "images": len(names),
            "top1_hits": float(np.mean(hit1)),
            "top5_hits": float(np.mean(hit5)),
            "mean_top1_probability": float(probs.max(axis=1).mean()),
            "mean_entropy_nats": float(entropy.mean()),
            "seconds": time.perf_counter() - start,
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", type=Path, default=DEFAULT_VOC, help="a VOC2007 directory")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    rows = measure(args.voc)
    for label, row in rows.items():
        print(
            f"{label:28s} {row['images']} single-class photos: top-1 {100 * row['top1_hits']:.1f}%, "
            f"top-5 {100 * row['top5_hits']:.1f}% of them in their VOC class's ImageNet classes; "
            f"mean top-1 probability {row['mean_top1_probability']:.3f}, entropy "
            f"{row['mean_entropy_nats']:.2f} nats"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
