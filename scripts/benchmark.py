"""Side-by-side benchmarks: each of our paths against its baseline, in the same run.

    python scripts/benchmark.py                       # everything, real VOC subset if present
    python scripts/benchmark.py --only crops,pipeline --patch-size 224 --json out.json
    python scripts/benchmark.py --quick               # seconds: keeps the script from rotting

Sections:
  pipeline  host pipeline images/s (decode + geometry + labels + sampling + padding),
            0 and N worker processes
  crops     device crops + normalisation (jit, shared-rows form) vs the reference's way:
            PIL crop + resize + NumPy normalisation one patch at a time, on the same patches

Timings are medians over --repeats after a warm-up; results are printed as a table and
written as JSON. Ratios are what to compare across machines; absolute numbers depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
from PIL import Image  # noqa: E402

from voc_jax.data.crops import crop_batch  # noqa: E402
from voc_jax.data.pipeline import PatchConfig, epoch_dataset, iterate  # noqa: E402
from voc_jax.data.synthetic import SyntheticConfig, generate  # noqa: E402
from voc_jax.data.voc import VocRecord, load_dataset  # noqa: E402
from voc_jax.preprocessing import TORCHVISION  # noqa: E402

SHARED_SUBSET = REPO.parent / "shared" / "data" / "voc2007-subset" / "VOCdevkit" / "VOC2007"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dataset_records(args: argparse.Namespace) -> tuple[list[VocRecord], str]:
    root = Path(args.data) if args.data else SHARED_SUBSET
    if root.is_dir():
        return load_dataset(root, "trainval").records, str(root)
    tmp = Path(tempfile.mkdtemp(prefix="voc-jax-bench-"))
    n = 8 if args.quick else 64
    root = generate(tmp / "VOC2007", SyntheticConfig(num_trainval=n, num_test=0))
    return load_dataset(root, "trainval").records, f"synthetic ({root})"


def bench_pipeline(records, config, args) -> list[dict]:
    """Steady state: worker start-up and the first batches are excluded."""
    n = min(len(records), 12 if args.quick else args.images)
    warm = 4
    rows = []
    for workers in sorted({0, args.workers}):
        ds = epoch_dataset(records[: n + warm], config, images_per_batch=1, train=True, seed=0)
        it = iterate(ds, workers=workers)
        for _ in range(warm):
            next(it)
        start = time.perf_counter()
        for _ in range(n):
            next(it)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "section": "pipeline",
                "what": f"host pipeline, {workers} workers",
                "images_per_s": n / seconds,
                "patches_per_s": n * config.patches_per_image / seconds,
            }
        )
    rows[-1]["ratio_vs_first"] = rows[-1]["images_per_s"] / rows[0]["images_per_s"]
    return rows


def bench_crops(records, config, args) -> list[dict]:
    p = args.patch_size
    n_images = 1 if args.quick else 3
    batches = list(
        epoch_dataset(records[:n_images], config, images_per_batch=1, train=True, seed=0)
    )
    prep = TORCHVISION

    crop = jax.jit(lambda b: prep.normalize(crop_batch(b, p)))
    device_batches = [jax.device_put(b) for b in batches]

    def device():
        for b in device_batches:
            crop(b).block_until_ready()

    images = [
        Image.open(records[int(b["image_index"][0])].image_path).convert("RGB") for b in batches
    ]
    mean, std = np.array(prep.mean), np.array(prep.std)

    def pil_one_by_one():
        for image, b in zip(images, batches, strict=True):
            for box in b["boxes"][0]:
                x0, y0, x1, y1 = (int(v) for v in box)
                patch = np.asarray(image.crop((x0, y0, x1, y1)).resize((p, p), Image.BILINEAR))
                _ = (patch * prep.scale - mean) / std

    patches = n_images * config.patches_per_image
    t_device = median_time(device, args.repeats)
    t_pil = median_time(pil_one_by_one, max(1, args.repeats // 2), warmup=0)
    return [
        {
            "section": "crops",
            "what": f"device crops + normalise, {p}px (jit)",
            "patches_per_s": patches / t_device,
            "ratio_vs_baseline": t_pil / t_device,
        },
        {
            "section": "crops",
            "what": f"PIL crop + resize + normalise one by one, {p}px (reference)",
            "patches_per_s": patches / t_pil,
        },
    ]


SECTIONS = {"pipeline": bench_pipeline, "crops": bench_crops}


def format_table(rows: list[dict]) -> str:
    lines = [
        "| section | what | images/s | patches/s | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        per_image = f"{r['images_per_s']:.1f}" if "images_per_s" in r else ""
        ratio = r.get("ratio_vs_baseline", r.get("ratio_vs_first"))
        ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
        lines.append(
            f"| {r['section']} | {r['what']} | {per_image} | {r['patches_per_s']:.0f} | {ratio_text} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--data", help="a VOC2007 directory (default: the shared real subset)")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=48, help="images for the pipeline section")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.patch_size = min(args.patch_size, 32)
        args.repeats = 1
    config = PatchConfig()
    if args.quick:
        config = PatchConfig(patches_per_image=64, min_patches=64, min_scales=4)
    records, source = dataset_records(args)
    rows = []
    for name in args.only.split(","):
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        rows += SECTIONS[name](records, config, args)
    env = {
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "data": source,
        "patch_size": args.patch_size,
        "patches_per_image": config.patches_per_image,
        "quick": args.quick,
    }
    print(f"devices: {env['devices']}, data: {source}")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
