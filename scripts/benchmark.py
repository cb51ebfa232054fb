"""Side-by-side benchmarks: each of our paths against its baseline, in the same run.

    python scripts/benchmark.py                       # everything, real VOC subset if present
    python scripts/benchmark.py --only crops,pipeline --patch-size 224 --json out.json
    python scripts/benchmark.py --quick               # seconds: keeps the script from rotting

Sections:
  pipeline  host pipeline images/s (decode + geometry + labels + sampling + padding),
            0 and N worker processes
  crops     device crops + normalisation (jit, shared-rows form) vs the reference's way:
            PIL crop + resize + NumPy normalisation one patch at a time, on the same patches
  train     one jitted train step (crops + normalisation + SGD update of --batch patches)
            for the full fine-tune and the frozen backbone, vs the same step in PyTorch
            (torchvision AlexNet + the same head, SGD momentum 0.9, weight decay, same
            batch, float32, same threads) on already-cropped tensors; the share of the step
            spent in crops + normalisation; the projected VOC 2007 epoch (2.24 M patches)
  eval      the jitted eval step (crops + forward + image scores) vs PyTorch's forward on
            already-cropped tensors; the projected VOC 2007 test pass (4952 x 448 patches)
  e2e       training through the real pipeline (grain iterator -> device -> step, as
            voc_jax.train runs it): patches/s and the fraction of wall time the device
            waits for data

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

import jax
import numpy as np
from PIL import Image

from voc_jax.data.crops import crop_batch
from voc_jax.data.pipeline import PatchConfig, epoch_dataset, iterate
from voc_jax.data.synthetic import SyntheticConfig, generate
from voc_jax.data.voc import VocRecord, load_dataset
from voc_jax.preprocessing import TORCHVISION

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VOC_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_SUBSET = SHARED_DATA / "voc2007-subset" / "VOCdevkit" / "VOC2007"


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
    warm = 4
    n = min(len(records) - warm, 12 if args.quick else args.images)
    if n < 1:
        raise SystemExit(f"the pipeline section needs more than {warm} images, got {len(records)}")
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


VOC_TRAIN_PATCHES = 5000 * 448  # the reference's epoch: 2.24 M patches
VOC_TEST_PATCHES = 4952 * 448


def train_config(args: argparse.Namespace, trainable: tuple[str, ...]):
    """The reference recipe at the benchmark's sizes: one image of --batch patches per step."""
    from voc_jax.configs import voc07_alexnet

    c = voc07_alexnet.get_config()
    c.patches.size = args.patch_size
    c.patches.per_image = c.patches.min_patches = args.batch
    c.batch_size = args.batch
    c.optim.trainable = trainable
    c.eval.images_per_step = 1
    return c


def device_batches(records, config, args, n: int) -> list[dict]:
    pc = PatchConfig(
        patches_per_image=config.patches.per_image,
        min_patches=config.patches.per_image,
        min_scales=4 if args.quick else 11,
    )
    batches = epoch_dataset(records[:n], pc, images_per_batch=1, train=True, seed=0)
    return [jax.device_put(b) for b in batches]


def jax_train_step(records, args, trainable):
    from voc_jax import experiment

    config = train_config(args, trainable)
    setup = experiment.build_model(config)
    state, optimizer, labels, schedule = experiment.make_train_state(config, setup, 100)
    step = experiment.jit_train_step(config, setup, optimizer, labels, schedule)
    return config, setup, state, step


def time_train_steps(state, step, batches, repeats: int) -> tuple[float, object]:
    """Median seconds per step; the state is threaded through (it is donated)."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
        if i:  # the first call compiles
            times.append(time.perf_counter() - start)
    return statistics.median(times), state


def torch_train_time(args, frozen: bool) -> float:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    from convert import torch_models

    model = torch_models.TransferNet().train()
    if frozen:  # the backbone: everything before the head's first Linear
        for module in model.backbone_modules():
            for p in module.parameters():
                p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.patch_size, args.patch_size)
    y = torch.randint(0, 21, (args.batch,))

    def one():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return median_time(one, args.repeats)


def bench_train(records, config, args) -> list[dict]:
    import torch

    rows = []
    n = args.batch
    batches = None
    step_times = {}
    for name, trainable in (("full", (".*",)), ("frozen", ("head/.*",))):
        cfg, setup, state, step = jax_train_step(records, args, trainable)
        if batches is None:
            batches = device_batches(records, cfg, args, 2)
        seconds, state = time_train_steps(state, step, batches, args.repeats)
        compiles = step._cache_size()
        step_times[name] = seconds
        t_torch = torch_train_time(args, frozen=name == "frozen")
        rows.append(
            {
                "section": "train",
                "what": f"JAX step, {name} {'fine-tune' if name == 'full' else 'backbone'}, "
                f"{n} patches at {args.patch_size}px incl. crops",
                "patches_per_s": n / seconds,
                "ratio_vs_baseline": t_torch / seconds,
                "compilations": compiles,
                "voc_epoch_s": VOC_TRAIN_PATCHES / (n / seconds),
            }
        )
        rows.append(
            {
                "section": "train",
                "what": f"PyTorch step, {name}, same batch on cropped tensors "
                f"({torch.get_num_threads()} threads)",
                "patches_per_s": n / t_torch,
                "voc_epoch_s": VOC_TRAIN_PATCHES / (n / t_torch),
            }
        )
        del state
    rows[2]["ratio_vs_full"] = step_times["full"] / step_times["frozen"]

    p = args.patch_size
    crop = jax.jit(lambda b: TORCHVISION.normalize(crop_batch(b, p)))
    t_crop = median_time(lambda: crop(batches[0]).block_until_ready(), args.repeats)
    rows.append(
        {
            "section": "train",
            "what": "of which crops + normalise (share of the full step)",
            "patches_per_s": n / t_crop,
            "share_of_step": t_crop / step_times["full"],
        }
    )
    return rows


def bench_eval(records, config, args) -> list[dict]:
    import torch

    from voc_jax import experiment, steps

    cfg = train_config(args, (".*",))
    setup = experiment.build_model(cfg)
    batches = device_batches(records, cfg, args, 2)
    rows = []
    half = args.batch // 2
    for form, unroll in (("2 chunks, lax.map", False), ("2 chunks, unrolled", True)):
        fn = jax.jit(
            steps.make_eval_step(
                setup.model,
                setup.preprocessing,
                patch_size=args.patch_size,
                batch_size=half,
                exponent=5.0,
                unroll=unroll,
            )
        )
        seconds = median_time(
            lambda fn=fn: jax.block_until_ready(fn(setup.params, batches[0])), args.repeats
        )
        rows.append(
            {
                "section": "eval",
                "what": f"JAX eval step ({form}), {args.batch} patches incl. crops",
                "patches_per_s": args.batch / seconds,
                "voc_test_pass_s": VOC_TEST_PATCHES / (args.batch / seconds),
            }
        )
    torch.manual_seed(0)
    from convert import torch_models

    model = torch_models.TransferNet().eval()
    x = torch.randn(args.batch, 3, args.patch_size, args.patch_size)

    def forward():
        with torch.no_grad():
            torch.softmax(model(x), -1)

    t_torch = median_time(forward, args.repeats)
    for r in rows:
        r["ratio_vs_baseline"] = t_torch * r["patches_per_s"] / args.batch
    rows.append(
        {
            "section": "eval",
            "what": "PyTorch forward + softmax on cropped tensors",
            "patches_per_s": args.batch / t_torch,
            "voc_test_pass_s": VOC_TEST_PATCHES / (args.batch / t_torch),
        }
    )
    return rows


def bench_e2e(records, config, args) -> list[dict]:
    """As voc_jax.train.run_epoch: fetch, put, step, read the metrics back, every call."""
    from voc_jax import experiment

    cfg, setup, state, step = jax_train_step(records, args, (".*",))
    pc = PatchConfig(
        patches_per_image=args.batch, min_patches=args.batch, min_scales=4 if args.quick else 11
    )
    n = 2 if args.quick else args.e2e_images
    ds = epoch_dataset(records[: n + 1], pc, images_per_batch=1, train=True, seed=0)
    it = iterate(ds, workers=args.workers)
    sharding = experiment.batch_sharding(experiment.make_mesh())
    state, metrics = step(state, experiment.put_batch(next(it), sharding))  # compile
    jax.device_get(metrics)
    waiting = 0.0
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        batch = experiment.put_batch(next(it), sharding)
        waiting += time.perf_counter() - t
        state, metrics = step(state, batch)
        jax.device_get(metrics)
    wall = time.perf_counter() - start
    return [
        {
            "section": "e2e",
            "what": f"train through the pipeline ({args.workers} workers), {n} images",
            "images_per_s": n / wall,
            "patches_per_s": n * args.batch / wall,
            "device_wait_fraction": waiting / wall,
        }
    ]


SECTIONS = {
    "pipeline": bench_pipeline,
    "crops": bench_crops,
    "train": bench_train,
    "eval": bench_eval,
    "e2e": bench_e2e,
}


def _note(r: dict) -> str:
    notes = []
    if "ratio_vs_full" in r:
        notes.append(f"{r['ratio_vs_full']:.2f}x faster than full")
    if "share_of_step" in r:
        notes.append(f"{100 * r['share_of_step']:.1f}% of the full step")
    if "device_wait_fraction" in r:
        notes.append(f"device waits {100 * r['device_wait_fraction']:.1f}% of wall time")
    if "voc_epoch_s" in r:
        notes.append(f"VOC epoch {r['voc_epoch_s'] / 3600:.1f} h")
    if "voc_test_pass_s" in r:
        notes.append(f"VOC test pass {r['voc_test_pass_s'] / 60:.0f} min")
    if r.get("compilations") is not None:
        notes.append(f"{r['compilations']} compilation(s)")
    return "; ".join(notes)


def format_table(rows: list[dict]) -> str:
    lines = [
        "| section | what | images/s | patches/s | ratio | notes |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        per_image = f"{r['images_per_s']:.1f}" if "images_per_s" in r else ""
        ratio = r.get("ratio_vs_baseline", r.get("ratio_vs_first"))
        ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
        lines.append(
            f"| {r['section']} | {r['what']} | {per_image} | {r['patches_per_s']:.0f} "
            f"| {ratio_text} | {_note(r)} |"
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
    parser.add_argument("--batch", type=int, default=64, help="patches per SGD update / eval step")
    parser.add_argument("--e2e-images", type=int, default=6, help="images for the e2e section")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.patch_size = min(args.patch_size, 64)
        args.repeats = 1
        args.batch = min(args.batch, 16)
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
    from voc_jax.cli import run_guarded

    sys.exit(run_guarded(main))
