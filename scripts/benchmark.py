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
  backbones VGG-16, ResNet-50 and EfficientNet-Lite0 (--arch; not in the default set:
            minutes on a CPU): the
            full, frozen and eval steps of each transfer network against the same network in
            PyTorch, on already-cropped patches, XLA's FLOP count and the GEMM-peak fraction
            python scripts/benchmark.py --only backbones --json docs/benchmark_backbones.json
  blocks    ResNet-50 piece by piece (the stem, one identity block per stage): forward + both
            gradients against torchvision's modules, 16 patches (one slice of the sliced
            full step): where the full step's gap to PyTorch comes from
  depthwise EfficientNet-Lite0's depthwise convolutions, formulation by formulation (XLA's
            grouped conv with voc-jax's options, with XLA's defaults, in NCHW; shifted
            slices autodiffed, and with voc-jax's written-out gradient) against PyTorch's
            grouped conv2d, forward and both gradients
  image     the whole-image family (scripts/bench_image.py): the frozen head's step from
            cached maps, the fine-tune step and the evaluation of ResNet-50 and Lite0 (--arch)
            against the same network in PyTorch, --image-batch photos at --image-size
            python scripts/benchmark.py --only image --json docs/benchmark_image.json

Timings are medians over --repeats after a warm-up; results are printed as a table and
written as JSON. Ratios are what to compare across machines; absolute numbers depend on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import linen as nn
from PIL import Image

from voc_jax import models
from voc_jax.data.crops import crop_batch
from voc_jax.data.pipeline import PatchConfig, epoch_dataset, iterating
from voc_jax.data.synthetic import SyntheticConfig, generate
from voc_jax.data.voc import VocRecord, load_dataset, parse_annotation, read_split
from voc_jax.models.common import Options, scaled
from voc_jax.preprocessing import TORCHVISION

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VOC_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_SUBSET = SHARED_DATA / "voc2007-subset" / "VOCdevkit" / "VOC2007"
# The backbones section's architectures: every registered one with a torch reference and
# ImageNet weights of its own but AlexNet, which the train, eval and crop sections measure in
# full (ResNet-26 has no weights to transfer: it is the tests' small ResNet).
BACKBONE_ROWS = tuple(
    name
    for name, b in models.BACKBONES.items()
    if name != "alexnet" and b.torch_features and (b.torchvision or b.package)
)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compiled_flops(fn: Callable, *args) -> float:
    """XLA's own count of the floating-point operations of one call of a jitted function:
    the cost analysis of its lowered program (nothing runs and nothing compiles; the same
    count as the compiled program's, checked for these steps), the compiled one's where the
    lowered program has none."""
    lowered = fn.lower(*args)
    analysis = lowered.cost_analysis()
    if not analysis:
        analysis = lowered.compile().cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per program
        analysis = analysis[0]
    return float((analysis or {}).get("flops", 0.0))


def matmul_peak(args: argparse.Namespace) -> tuple[float, int, float]:
    """(FLOP/s, n, seconds) of a large float32 matrix product through XLA on this backend:
    the physical limit a convolution network's step is measured against."""
    import jax.numpy as jnp

    n = 512 if args.quick else 4096
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((n, n), np.float32))
    b = jax.device_put(rng.standard_normal((n, n), np.float32))
    dot = jax.jit(jnp.dot)
    seconds = median_time(lambda: dot(a, b).block_until_ready(), max(args.repeats, 3))
    return 2.0 * n**3 / seconds, n, seconds


def add_peak_fractions(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Each row with a FLOP count gets its achieved GFLOP/s and that as a fraction of the
    GEMM peak measured in this run; the peak itself is a row."""
    counted = [r for r in rows if r.get("flops")]
    if not counted:
        return rows
    peak, n, seconds = matmul_peak(args)
    for r in counted:
        per_call = r.get("seconds") or args.batch / r["patches_per_s"]
        r["gflops_per_s"] = r["flops"] / per_call / 1e9
        r["fraction_of_peak"] = r["flops"] / per_call / peak
    peak_row = {
        "section": "peak",
        "what": f"float32 matrix product {n}x{n} through XLA: {peak / 1e9:.0f} GFLOP/s, the peak "
        "the fractions are of",
        "patches_per_s": 0.0,
        "gflops_per_s": peak / 1e9,
        "seconds": seconds,
    }
    return [*rows, peak_row]


TEMPORARY: list[Path] = []  # removed when the benchmark ends, however it ends


def temporary_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    TEMPORARY.append(path)
    return path


def remove_temporary() -> None:
    for path in TEMPORARY:
        shutil.rmtree(path, ignore_errors=True)
    TEMPORARY.clear()


def dataset_records(args: argparse.Namespace) -> tuple[list[VocRecord], str]:
    root = Path(args.data) if args.data else SHARED_SUBSET
    if root.is_dir():
        return load_dataset(root, "trainval").records, str(root)
    tmp = temporary_dir("voc-jax-bench-")
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
        with iterating(ds, workers=workers) as it:
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
    c.model.dtype = args.dtype
    c.model.width = args.width
    return c


def device_batches(records, config, args, n: int, crops: str = "device") -> list[dict]:
    """Pipeline batches on the device: images + boxes (crops="device") or host-cropped
    patches (crops="host")."""
    batches = epoch_dataset(
        records[:n], bench_patch_config(config, args, crops), images_per_batch=1, train=True, seed=0
    )
    return [jax.device_put(b) for b in batches]


def bench_patch_config(config, args, crops: str = "device") -> PatchConfig:
    return PatchConfig(
        patches_per_image=config.patches.per_image,
        min_patches=config.patches.per_image,
        min_scales=4 if args.quick else 11,
        crops=crops,
        patch_size=args.patch_size,
    )


def host_crop_runner(records, config, args) -> Callable[[], object]:
    """The host crops of one batch of patches (PIL, one worker), as the CPU default runs
    them in the pipeline workers: timed so that the host-crop rows can count them in."""
    from voc_jax.data.pipeline import candidates, decode_image, fit_canvas, host_crops, sample

    pc = bench_patch_config(config, args, "host")
    record = records[0]
    boxes, labels = candidates(record, pc)
    chosen, _ = sample(labels, np.random.default_rng(0), pc, True)
    image, _ = fit_canvas(decode_image(str(record.image_path)), record.boxes, pc.canvas)
    return lambda: host_crops(image, boxes[chosen], pc)


def host_crops_apply() -> bool:
    """Whether the production default (patches.crops="auto") crops on the host here."""
    from voc_jax.experiment import crop_site

    return crop_site("auto") == "host"


def jax_train_step(records, args, trainable, defaults: str = "ours", exp=None):
    """The production train step; ``defaults="xla"`` compiles it with XLA's own CPU options
    instead of voc-jax's (voc_jax.xla_options), for the side-by-side rows. ``exp``: the
    experiment to reuse (one model initialisation for every variant of a step)."""
    from voc_jax import xla_options
    from voc_jax.experiment import Experiment

    config = train_config(args, trainable)
    exp = exp or Experiment.build(config)
    optimizer = exp.optimizer(100)
    # A copy: the step donates its state, and the experiment's parameters serve the next one.
    state = jax.tree.map(jax.numpy.copy, exp.initial_state(optimizer))
    with xla_options.defaults(defaults):
        step = exp.train_step(optimizer)
    return config, exp, state, step


VARIANT_TEXT = {"ours": "voc-jax CPU options", "xla": "XLA's CPU defaults"}


def jax_variants() -> tuple[str, ...]:
    """Ours and XLA's defaults side by side where they differ (the CPU); elsewhere one."""
    from voc_jax import xla_options

    if jax.default_backend() != "cpu":
        VARIANT_TEXT["ours"] = f"{jax.default_backend()}"
        return ("ours",)
    return ("ours", "xla") if xla_options.compiler_options() else ("ours",)


def interleaved_medians(runners: dict[str, Callable[[], object]], repeats: int) -> dict:
    """Median seconds of each runner, measured in turn (A, B, C, A, B, C, ...) after one
    warm-up call each, so that a change in machine load hits all of them alike."""
    for run in runners.values():
        run()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


class Stepper:
    """Calls a donated-state train step repeatedly, threading the state."""

    def __init__(self, state, step, batches):
        self.state, self.step, self.batches, self.calls = state, step, batches, 0

    def __call__(self):
        self.state, metrics = self.step(self.state, self.batches[self.calls % len(self.batches)])
        self.calls += 1
        jax.block_until_ready(metrics)


def torch_device(args):
    """PyTorch's side runs where JAX runs: CUDA when JAX has a GPU, else the CPU threads."""
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu")


def torch_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_autocast(args, device):
    """bf16 compute with float32 weights, as model.dtype=bfloat16 does on the JAX side."""
    import contextlib

    import torch

    if args.dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_train_runner(args, frozen: bool) -> Callable[[], None]:
    import torch

    torch.manual_seed(0)
    device = torch_device(args)
    from voc_jax.convert import torch_models

    model = torch_models.TransferNet(width=args.width).to(device).train()
    if frozen:  # the backbone: everything before the head's first Linear
        for module in model.backbone_modules():
            for p in module.parameters():
                p.requires_grad_(False)
    return torch_sgd_step(model, args, device)


def torch_sgd_step(model, args, device) -> Callable[[], None]:
    """One PyTorch SGD step (momentum 0.9, decay 5e-4, as the reference) of ``model``'s
    trainable parameters on a random batch of cropped patches."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.patch_size, args.patch_size, device=device)
    y = torch.randint(0, 21, (args.batch,), device=device)

    def one():
        opt.zero_grad(set_to_none=True)
        with torch_autocast(args, device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        torch_sync(device)

    return one


def bench_train(records, config, args) -> list[dict]:
    import torch

    from voc_jax.experiment import Experiment

    rows = []
    n = args.batch
    batches = None
    ours = {}
    variants = jax_variants()
    for name, trainable in (("full", (".*",)), ("frozen", ("head/.*",))):
        runners, steps_, flops = {}, {}, {}
        exp = Experiment.build(train_config(args, trainable))
        for defaults in variants:
            cfg, _, state, step = jax_train_step(records, args, trainable, defaults, exp)
            if batches is None:
                batches = device_batches(records, cfg, args, 2)
            runners[defaults] = Stepper(state, step, batches)
            steps_[defaults] = step
            flops[defaults] = compiled_flops(step, state, batches[0])
        if host_crops_apply():
            cfg, _, state, step = jax_train_step(records, args, trainable, "ours", exp)
            host_batches = device_batches(records, cfg, args, 2, crops="host")
            runners["host"] = Stepper(state, step, host_batches)
            runners["pil"] = host_crop_runner(records, cfg, args)
            flops["host"] = compiled_flops(step, state, host_batches[0])
        runners["torch"] = torch_train_runner(args, frozen=name == "frozen")
        t = interleaved_medians(runners, args.repeats)
        ours[name] = t["ours"]
        if "host" in t:
            ours[f"{name}_host"] = t["host"] + t["pil"]
            rows.append(
                {
                    "section": "train",
                    "what": f"JAX step, {name} {'fine-tune' if name == 'full' else 'backbone'}, "
                    f"{n} patches at {args.patch_size}px, host crops (PIL) counted in (the CPU "
                    "default)",
                    "variant": "host",
                    "step": name,
                    "patches_per_s": n / ours[f"{name}_host"],
                    "seconds": ours[f"{name}_host"],
                    "crop_seconds": t["pil"],
                    "flops": flops["host"],
                    "ratio_vs_baseline": t["torch"] / ours[f"{name}_host"],
                    "voc_epoch_s": VOC_TRAIN_PATCHES / (n / ours[f"{name}_host"]),
                }
            )
        label = "fine-tune" if name == "full" else "backbone"
        for defaults in variants:
            text = VARIANT_TEXT[defaults]
            rows.append(
                {
                    "section": "train",
                    "what": f"JAX step, {name} {label}, {n} patches at {args.patch_size}px "
                    f"incl. crops ({text})",
                    "variant": defaults,
                    "step": name,
                    "patches_per_s": n / t[defaults],
                    "seconds": t[defaults],
                    "ratio_vs_baseline": t["torch"] / t[defaults],
                    "compilations": steps_[defaults]._cache_size(),
                    "flops": flops[defaults],
                    "voc_epoch_s": VOC_TRAIN_PATCHES / (n / t[defaults]),
                }
            )
        rows.append(
            {
                "section": "train",
                "what": f"PyTorch step, {name}, same batch on cropped tensors "
                f"({torch.get_num_threads()} threads)",
                "variant": "torch",
                "step": name,
                "patches_per_s": n / t["torch"],
                "seconds": t["torch"],
                # the same network, loss and update on cropped tensors: XLA's count of them
                "flops": flops.get("host", flops["ours"]),
                "voc_epoch_s": VOC_TRAIN_PATCHES / (n / t["torch"]),
            }
        )
        for r in runners.values():
            if isinstance(r, Stepper):
                del r.state
    production = "host" if "full_host" in ours else "ours"
    frozen_row = next(r for r in rows if r["step"] == "frozen" and r["variant"] == production)
    key = "_host" if production == "host" else ""
    frozen_row["ratio_vs_full"] = ours[f"full{key}"] / ours[f"frozen{key}"]

    p = args.patch_size
    crop = jax.jit(lambda b: TORCHVISION.normalize(crop_batch(b, p)))
    t_crop = median_time(lambda: crop(batches[0]).block_until_ready(), args.repeats)
    rows.append(
        {
            "section": "train",
            "what": "of which device crops + normalise (share of the full step)",
            "patches_per_s": n / t_crop,
            "seconds": t_crop,
            "share_of_step": t_crop / ours["full"],
        }
    )
    if "full_host" in ours:
        pil = next(r for r in rows if r.get("variant") == "host" and r["step"] == "full")
        rows.append(
            {
                "section": "train",
                "what": "of which host crops (PIL; share of the full step, the CPU default)",
                "patches_per_s": n / pil["crop_seconds"],
                "seconds": pil["crop_seconds"],
                "share_of_step": pil["crop_seconds"] / ours["full_host"],
                "production": True,
            }
        )
    return rows


def bench_eval(records, config, args) -> list[dict]:
    import torch

    from voc_jax import xla_options
    from voc_jax.experiment import Experiment

    cfg = train_config(args, (".*",))
    exp = Experiment.build(cfg)
    params = exp.model.variables  # what the evaluation step applies
    batches = device_batches(records, cfg, args, 2)
    runners = {}
    variants = jax_variants()
    flops = {}
    for defaults in variants:
        with xla_options.defaults(defaults):
            fn = exp.eval_step()  # the production path (chunks of --batch)
        runners[defaults] = lambda fn=fn: jax.block_until_ready(fn(params, batches[0]))
        flops[defaults] = compiled_flops(fn, params, batches[0])
    torch.manual_seed(0)
    from voc_jax.convert import torch_models

    device = torch_device(args)
    model = torch_models.TransferNet(width=args.width).to(device).eval()
    x = torch.randn(args.batch, 3, args.patch_size, args.patch_size, device=device)

    def forward():
        with torch.no_grad(), torch_autocast(args, device):
            torch.softmax(model(x), -1)
        torch_sync(device)

    runners["torch"] = forward
    if host_crops_apply():
        fn = exp.eval_step()
        host_batches = device_batches(records, cfg, args, 2, crops="host")
        runners["host"] = lambda: jax.block_until_ready(fn(params, host_batches[0]))
        runners["pil"] = host_crop_runner(records, cfg, args)
        flops["host"] = compiled_flops(fn, params, host_batches[0])
    t = interleaved_medians(runners, args.repeats)
    rows = []
    if "host" in t:
        seconds = t["host"] + t["pil"]
        rows.append(
            {
                "section": "eval",
                "what": f"JAX eval step, {args.batch} patches, host crops (PIL) counted in "
                "(the CPU default)",
                "variant": "host",
                "patches_per_s": args.batch / seconds,
                "seconds": seconds,
                "flops": flops["host"],
                "ratio_vs_baseline": t["torch"] / seconds,
                "voc_test_pass_s": VOC_TEST_PATCHES / (args.batch / seconds),
            }
        )
    for defaults in variants:
        text = VARIANT_TEXT[defaults]
        rows.append(
            {
                "section": "eval",
                "what": f"JAX eval step, {args.batch} patches incl. crops ({text})",
                "variant": defaults,
                "patches_per_s": args.batch / t[defaults],
                "seconds": t[defaults],
                "flops": flops[defaults],
                "ratio_vs_baseline": t["torch"] / t[defaults],
                "voc_test_pass_s": VOC_TEST_PATCHES / (args.batch / t[defaults]),
            }
        )
    rows.append(
        {
            "section": "eval",
            "what": "PyTorch forward + softmax on cropped tensors",
            "variant": "torch",
            "patches_per_s": args.batch / t["torch"],
            "seconds": t["torch"],
            "flops": flops.get("host", flops["ours"]),
            "voc_test_pass_s": VOC_TEST_PATCHES / (args.batch / t["torch"]),
        }
    )
    return rows


def bench_e2e(records, config, args) -> list[dict]:
    """As voc_jax.train.run_epoch: fetch, put, step; metrics stay on the device until read."""
    from voc_jax.experiment import crop_site

    cfg, exp, state, step = jax_train_step(records, args, (".*",))
    pc = PatchConfig(
        patches_per_image=args.batch,
        min_patches=args.batch,
        min_scales=4 if args.quick else 11,
        crops=crop_site("auto"),  # the production default
        patch_size=args.patch_size,
    )
    n = 2 if args.quick else args.e2e_images
    ds = epoch_dataset(records[: n + 1], pc, images_per_batch=1, train=True, seed=0)
    with iterating(ds, workers=args.workers) as it:
        state, metrics = step(state, exp.put_batch(next(it)))  # compile
        jax.device_get(metrics)
        waiting = 0.0
        pending = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            batch = exp.put_batch(next(it))
            waiting += time.perf_counter() - t
            state, metrics = step(state, batch)
            pending.append(metrics)  # fetched at log steps only, as voc_jax.train does
        jax.device_get(pending)
        wall = time.perf_counter() - start
        # The last batch's arrays may be the workers' shared memory itself (a CPU device_put
        # need not copy): dropped before ``iterating`` waits for their unlinking.
        del batch
    return [
        {
            "section": "e2e",
            "what": f"train through the pipeline ({args.workers} workers, {pc.crops} crops), "
            f"{n} images",
            "images_per_s": n / wall,
            "patches_per_s": n * args.batch / wall,
            "device_wait_fraction": waiting / wall,
        }
    ]


def bench_cache(records, config, args) -> list[dict]:
    """The frozen backbone's feature cache: its build against one uncached evaluation pass over
    the same candidates, and a frozen training epoch from it against one from pixels."""
    from voc_jax import feature_cache
    from voc_jax.data.voc import VocDataset
    from voc_jax.experiment import Experiment, grid_rows

    n = min(len(records), 2 if args.quick else args.cache_images)
    cfg = train_config(args, ("head/.*",))
    cfg.patches.per_image = cfg.patches.min_patches = 448 if not args.quick else 64
    cfg.patches.max_rows = 0
    if args.quick:
        cfg.patches.min_scales = 4
    cfg.patches.max_rows = grid_rows(cfg.patches.scales)
    cfg.feature_cache.enabled = True
    exp = Experiment.build(cfg)
    params = exp.model.variables  # what the evaluation step applies
    subset = VocDataset(Path("."), "bench", list(records[:n]), [])
    work = temporary_dir("voc-jax-cache-")
    start = time.perf_counter()
    cache = feature_cache.ensure(exp, subset, work, progress=False)
    build_s = time.perf_counter() - start
    total = int(cache.offsets[-1])
    size = total * cache.width * 2

    # One uncached evaluation pass over the same candidates (the build's own batches).
    pc, chunk = exp.patches, exp.forward_chunk()
    eval_step = exp.eval_step()
    examples = [
        feature_cache.candidates_example(r, i, pc, feature_cache.padded_rows(cache.rows(i), chunk))
        for i, r in enumerate(subset.records)
    ]
    batches = [{k: np.asarray(v)[None] for k, v in e.items()} for e in examples]
    jax.block_until_ready(eval_step(params, batches[0]))  # compile, as the build did
    start = time.perf_counter()
    for b in batches:
        jax.block_until_ready(eval_step(params, b))
    eval_s = time.perf_counter() - start

    # A frozen epoch (G = 1 image per call) from pixels and from the cache, same sampling.
    def epoch_runner(inputs):
        optimizer = exp.optimizer(100)
        state = jax.tree.map(jax.numpy.copy, exp.initial_state(optimizer))
        step = exp.train_step(optimizer, inputs=inputs)
        ds = epoch_dataset(
            subset.records, pc, images_per_batch=1, train=True, seed=0,
            features=cache if inputs == "prefix" else None,
        )  # fmt: skip
        device = [jax.device_put(b) for b in ds]
        return Stepper(state, step, device), len(device)

    pixels, calls = epoch_runner("pixels")
    cached, _ = epoch_runner("prefix")
    t = interleaved_medians({"pixels": pixels, "cached": cached}, max(args.repeats, calls))
    # What reuse costs: every image's rows read and checked against its digest, once a run.
    start = time.perf_counter()
    assert feature_cache.verified_images(cache) == n
    verify_s = time.perf_counter() - start
    per_image = cfg.patches.per_image
    voc_images = 5000
    return [
        {
            "section": "cache",
            "what": f"build: fc6 of all {total} candidates of {n} images, {args.patch_size}px",
            "images_per_s": n / build_s,
            "patches_per_s": total / build_s,
            "ratio_vs_eval_pass": build_s / eval_s,
            "cache_bytes": size,
            "voc_trainval_cache_gib": voc_trainval_candidates(args.quick) * cache.width * 2 / 2**30,
        },
        {
            "section": "cache",
            "what": "one uncached evaluation pass over the same candidates",
            "images_per_s": n / eval_s,
            "patches_per_s": total / eval_s,
        },
        {
            "section": "cache",
            "what": f"frozen epoch from the cache ({per_image} patches/image)",
            "images_per_s": 1 / t["cached"],
            "patches_per_s": per_image / t["cached"],
            "cache_speedup": t["pixels"] / t["cached"],
            "voc_epoch_s": voc_images * t["cached"],
        },
        {
            "section": "cache",
            "what": f"verifying the cache before reuse (SHA-256 of every row, {n} images)",
            "images_per_s": n / verify_s,
            "patches_per_s": total / verify_s,
            "verify_vs_cached_epoch": verify_s / (n * t["cached"]),
        },
        {
            "section": "cache",
            "what": f"frozen epoch from pixels ({per_image} patches/image)",
            "images_per_s": 1 / t["pixels"],
            "patches_per_s": per_image / t["pixels"],
            "voc_epoch_s": voc_images * t["pixels"],
        },
    ]


def bench_profile(records, config, args) -> list[dict]:
    """Where a full fine-tune step's time goes, JAX (our compile options) against PyTorch on the
    same tensors: forward only, forward + gradient (no update), and for JAX the crops."""
    import torch

    from voc_jax import optim, steps, xla_options
    from voc_jax.experiment import Experiment

    cfg = train_config(args, (".*",))
    exp = Experiment.build(cfg)
    model, params = exp.model.module, exp.model.params
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((args.batch, args.patch_size, args.patch_size, 3)))
    x = x.astype(np.float32)
    y = jax.device_put(rng.integers(0, 21, args.batch).astype(np.int32))
    valid = jax.device_put(np.ones(args.batch, bool))
    labels = optim.trainable_labels(params, (".*",))
    forward = xla_options.jit(lambda p, x: model.apply({"params": p}, x))
    grads = xla_options.jit(steps.make_grads(model, labels))
    key = jax.random.key(0)

    device = torch_device(args)
    from voc_jax.convert import torch_models

    net = torch_models.TransferNet(width=args.width).to(device).train()
    tx = torch.randn(args.batch, 3, args.patch_size, args.patch_size, device=device)
    ty = torch.randint(0, 21, (args.batch,), device=device)

    def torch_forward():
        with torch.no_grad():
            net.eval()(tx)
        torch_sync(device)

    def torch_backward():
        net.train()
        net.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(tx), ty).backward()
        torch_sync(device)

    t = interleaved_medians(
        {
            "jax_forward": lambda: jax.block_until_ready(forward(params, x)),
            "torch_forward": torch_forward,
            "jax_grad": lambda: jax.block_until_ready(grads(params, {}, x, y, valid, key)),
            "torch_grad": torch_backward,
        },
        args.repeats,
    )
    rows = []
    for part, what in (("forward", "forward only"), ("grad", "forward + gradients, no update")):
        rows.append(
            {
                "section": "profile",
                "what": f"JAX {what}, {args.batch} cropped patches at {args.patch_size}px",
                "patches_per_s": args.batch / t[f"jax_{part}"],
                "seconds": t[f"jax_{part}"],
                "ratio_vs_baseline": t[f"torch_{part}"] / t[f"jax_{part}"],
            }
        )
        rows.append(
            {
                "section": "profile",
                "what": f"PyTorch {what}",
                "patches_per_s": args.batch / t[f"torch_{part}"],
                "seconds": t[f"torch_{part}"],
            }
        )
    return rows


def bench_backbones(records, config, args) -> list[dict]:
    """Each modern backbone's full, frozen and eval steps against PyTorch's in the same run,
    on already-cropped patches (the network and its update, not the crops), float32 unless
    --dtype: the per-backbone rows of the README's table."""
    rows = []
    for arch in args.arch:
        rows += backbone_rows(arch, records, args)
    return rows


def backbone_rows(arch: str, records, args) -> list[dict]:
    """One backbone's steps against PyTorch's. Where the full step runs in slices (auto on a
    CPU, or --grad-chunks), the same update in one piece is timed beside it, so the slicing's
    gain is measured in the same run."""
    import torch

    from voc_jax.experiment import Experiment

    cfg = train_config(args, (".*",))
    cfg.model.arch, cfg.grad_chunks = arch, args.grad_chunks
    exp = Experiment.build(cfg)
    chunks = exp.grad_chunks()
    batches = device_batches(records, cfg, args, 2, crops="host")
    runners, flops = {}, {}
    for name, trainable in (("full", (".*",)), ("frozen", ("head/.*",))):
        if name in args.backbone_steps:
            runners[name], flops[name] = train_runner(exp, trainable, batches)
            frozen = name == "frozen"
            runners[f"torch_{name}"] = torch_backbone_train(arch, args.width, args, frozen)
    unsliced = "full" in args.backbone_steps and chunks > 1
    if unsliced:  # the same model and settings, one gradient slice
        train = dataclasses.replace(exp.settings.train, grad_chunks=1)
        whole = dataclasses.replace(exp, settings=dataclasses.replace(exp.settings, train=train))
        runners["full_unsliced"], flops["full_unsliced"] = train_runner(whole, (".*",), batches)
    if "eval" in args.backbone_steps:
        evaluate = exp.eval_step()
        variables = exp.model.variables
        flops["eval"] = compiled_flops(evaluate, variables, batches[0])
        runners["eval"] = lambda: jax.block_until_ready(evaluate(variables, batches[0]))
        runners["torch_eval"] = torch_backbone_eval(arch, args.width, args)
    t = interleaved_medians(runners, args.repeats)
    sliced = f" in {chunks} slices" if chunks > 1 else ""
    what = {"full": "full fine-tune step", "frozen": "frozen-backbone step", "eval": "eval"}
    threads = f"PyTorch ({torch.get_num_threads()} threads)"
    entries = []  # (step, variant, runner, description)
    for name in args.backbone_steps:
        entries.append((name, "ours", name, f"JAX {what[name]}{sliced}"))
        if name == "full" and unsliced:
            entries.append((name, "ours_unsliced", "full_unsliced", f"JAX {what[name]}, unsliced"))
        entries.append((name, "torch", f"torch_{name}", f"{threads} {what[name]}"))
    width = "" if args.width == 1 else f" (width {args.width:g})"
    rows = []
    for name, variant, key, text in entries:
        row = {
            "section": "backbones",
            "what": f"{arch}{width}: {text}, {args.batch} cropped patches at {args.patch_size}px",
            "arch": arch,
            "variant": variant,
            "step": name,
            "patches_per_s": args.batch / t[key],
            "seconds": t[key],
            "flops": flops.get(key, flops[name]),  # XLA's count of the same step
        }  # fmt: skip
        if variant != "torch":
            row["ratio_vs_baseline"] = t[f"torch_{name}"] / t[key]
        rows.append(row)
    for r in runners.values():
        if isinstance(r, Stepper):
            del r.state
    return rows


def train_runner(exp, trainable: tuple[str, ...], batches) -> tuple[Stepper, float]:
    """The experiment's train step with only ``trainable`` learning, and XLA's FLOP count."""
    from voc_jax import optim

    settings = dataclasses.replace(exp.settings.optim, trainable=trainable)
    optimizer = optim.make_optimizer(settings, exp.model.params, 100, 10)
    state = jax.tree.map(jax.numpy.copy, exp.initial_state(optimizer))
    step = exp.train_step(optimizer)
    return Stepper(state, step, batches), compiled_flops(step, state, batches[0])


def torch_backbone_train(arch: str, width: float, args, frozen: bool) -> Callable[[], None]:
    """PyTorch's SGD step of the same transfer network on cropped tensors (BatchNorm with its
    running statistics, as voc-jax's default)."""
    import torch

    from voc_jax.convert import torch_models

    torch.manual_seed(0)
    device = torch_device(args)
    model = torch_models.BackboneTransfer(arch, width=width).to(device).train()
    if frozen:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    return torch_sgd_step(model, args, device)


def torch_backbone_eval(arch: str, width: float, args) -> Callable[[], None]:
    import torch

    from voc_jax.convert import torch_models

    device = torch_device(args)
    model = torch_models.BackboneTransfer(arch, width=width).to(device).eval()
    x = torch.randn(args.batch, 3, args.patch_size, args.patch_size, device=device)

    def forward():
        with torch.no_grad(), torch_autocast(args, device):
            torch.softmax(model(x), -1)
        torch_sync(device)

    return forward


def bench_blocks(records, config, args) -> list[dict]:
    """ResNet-50 piece by piece: forward + both gradients (input and parameters) of the stem
    and of one identity block per stage (layerS_1, at its resolution), JAX as voc-jax compiles
    it against torchvision's modules, inference-mode BatchNorm on both sides, one slice of
    --grad-chunk-patches patches: which pieces the full step's gap comes from."""
    import torch
    import torchvision

    from voc_jax import xla_options
    from voc_jax.convert import torch_models
    from voc_jax.models import resnet

    n, side, w = args.grad_chunk_patches, args.patch_size, args.width
    device = torch_device(args)
    rows = []
    stem_out = scaled(64, w)
    pieces = [("stem (conv1, bn1, ReLU, max-pool)", ResNetStem(stem_out), torch_stem(stem_out),
               (n, side, side, 3))]  # fmt: skip
    for stage, (count, width) in enumerate(resnet.STAGES, start=1):
        planes, out = scaled(width, w), scaled(width, w) * resnet.EXPANSION
        res = -(-side // 2 ** (stage + 1))
        block = resnet.Bottleneck(planes, 1, Options(width=w))
        tblock = torchvision.models.resnet.Bottleneck(out, planes)
        pieces.append((f"layer{stage}_1 ({count} blocks in the stage)", block, tblock,
                       (n, res, res, out)))  # fmt: skip
    whole = torch_models.classifier("resnet50", 1000, w)
    whole.fc = torch.nn.Identity()
    pieces.append(("whole (stem + 16 blocks + pool: the sum of the pieces above, composed)",
                   ResNetFeatures(w), whole, (n, side, side, 3)))  # fmt: skip
    for what, module, tmodule, shape in pieces:
        rng = np.random.default_rng(0)
        x = jax.device_put(rng.standard_normal(shape).astype(np.float32))
        variables = random_variables(module, x, rng)

        stats = variables.get("batch_stats", {})

        def loss(params, x, module=module, stats=stats):
            return module.apply({"params": params, "batch_stats": stats}, x).sum()

        grads = xla_options.jit(jax.grad(loss, argnums=(0, 1)))
        params = variables["params"]
        tmodule = torch_models.randomize_batch_norm(tmodule).to(device).eval()
        tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device)
        tx.requires_grad_(True)

        def torch_grads(tmodule=tmodule, tx=tx):
            tmodule.zero_grad(set_to_none=True)
            tx.grad = None
            tmodule(tx).sum().backward()
            torch_sync(device)

        t = interleaved_medians(
            {"ours": lambda g=grads, p=params, x=x: jax.block_until_ready(g(p, x)),
             "torch": torch_grads},
            max(args.repeats, 3),
        )  # fmt: skip
        flops = compiled_flops(grads, params, x)
        for variant in ("ours", "torch"):
            side_text = "JAX" if variant == "ours" else "PyTorch"
            row = {
                "section": "blocks",
                "what": f"resnet50{'' if w == 1 else f' (width {w:g})'} {what}: {side_text} "
                f"forward + gradients, {n} patches at {args.patch_size}px",
                "variant": variant,
                "piece": what.split(" ")[0],
                "patches_per_s": n / t[variant],
                "seconds": t[variant],
                "flops": flops,
            }
            if variant == "ours":
                row["ratio_vs_baseline"] = t["torch"] / t["ours"]
            rows.append(row)
    return rows


# EfficientNet-Lite0's depthwise convolutions, (channels, side, kernel, stride) as a 224-px
# patch meets them: block 1 (96 at 112 px, 3x3/2), block 2 (144 at 56), block 4 (240 at 28,
# 5x5), block 8 (480 at 14, 5x5), block 13 (1152 at 7, 5x5).
DEPTHWISE_CASES = (
    (96, 112, 3, 2),
    (144, 56, 3, 1),
    (240, 28, 5, 1),
    (480, 14, 5, 1),
    (1152, 7, 5, 1),
)


def bench_depthwise(records, config, args) -> list[dict]:
    """Depthwise convolutions, the known weak spot of XLA on CPUs, formulation by
    formulation: forward and forward + both gradients of one layer on --grad-chunk-patches
    patches, against PyTorch's grouped conv2d on the same threads and tensors. XLA's grouped
    convolution as voc-jax compiles it (YNNPACK for dots only), with XLA's defaults (YNNPACK's
    convolutions too), in NCHW instead of NHWC, and the sum of k*k shifted slices, its
    gradient by JAX's autodiff and as voc-jax writes it out (voc_jax.models.depthwise)."""
    rows = []
    for channels, side, k, stride in DEPTHWISE_CASES:
        side = max(1, round(side * args.patch_size / 224))
        rows += depthwise_case(channels, side, k, stride, args)
    return rows


def depthwise_case(channels: int, side: int, k: int, stride: int, args) -> list[dict]:
    import torch

    from voc_jax import xla_options
    from voc_jax.models import depthwise
    from voc_jax.models import efficientnet_lite as lite

    n, device = args.grad_chunk_patches, torch_device(args)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((n, side, side, channels)).astype(np.float32))
    pads = [lite.same_padding(side, k, stride)] * 2
    module = lite.DepthwiseConv(k, stride)
    w = module.init(jax.random.key(0), x)["params"]["kernel"]
    dims = {"NHWC": ("NHWC", "HWIO", "NHWC"), "NCHW": ("NCHW", "OIHW", "NCHW")}

    def grouped(w, x, layout="NHWC"):
        if layout == "NCHW":
            x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
        y = jax.lax.conv_general_dilated(
            x, w, (stride, stride), pads, dimension_numbers=dims[layout],
            feature_group_count=channels,
        )  # fmt: skip
        return y.transpose(0, 2, 3, 1) if layout == "NCHW" else y

    forms = {
        "XLA grouped conv (voc-jax options)": (xla_options.jit, grouped),
        "XLA grouped conv (XLA defaults: YNNPACK convolutions)": (jax.jit, grouped),
        "XLA grouped conv, NCHW": (xla_options.jit, lambda w, x: grouped(w, x, "NCHW")),
        "shifted slices, autodiffed": (
            xla_options.jit,
            lambda w, x: depthwise.depthwise_conv_autodiff(x, w[:, :, 0, :], stride, tuple(pads)),
        ),
        "shifted slices, gradient written out (voc-jax)": (
            xla_options.jit,
            lambda w, x: module.apply({"params": {"kernel": w}}, x),
        ),
    }
    runners = {}
    for name, (jit, f) in forms.items():
        fwd = jit(f)
        both = jit(jax.grad(lambda w, x, f=f: (f(w, x) ** 2).sum(), argnums=(0, 1)))
        runners[(name, "forward")] = lambda fwd=fwd: jax.block_until_ready(fwd(w, x))
        runners[(name, "gradients")] = lambda both=both: jax.block_until_ready(both(w, x))
    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device)
    tw = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).to(device)
    tpad = (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
    conv = torch.nn.functional.conv2d

    def torch_forward():
        with torch.no_grad():
            conv(torch.nn.functional.pad(tx, tpad), tw, None, stride, 0, 1, channels)
        torch_sync(device)

    def torch_gradients():
        a, b = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True)
        y = conv(torch.nn.functional.pad(a, tpad), b, None, stride, 0, 1, channels)
        (y**2).sum().backward()
        torch_sync(device)

    runners[("torch", "forward")] = torch_forward
    runners[("torch", "gradients")] = torch_gradients
    t = interleaved_medians(runners, args.repeats)
    rows = []
    for (name, what), seconds in t.items():
        if name != "torch":
            rows.append({
                "section": "depthwise",
                "what": f"{channels} channels, {side}x{side}, {k}x{k}/{stride}, {n} patches: "
                f"{name}, {what}",
                "variant": name,
                "step": what,
                "seconds": seconds,
                "torch_seconds": t[("torch", what)],
                "ratio_vs_baseline": t[("torch", what)] / seconds,
            })  # fmt: skip
    return rows


def random_variables(module: nn.Module, x: jax.Array, rng: np.random.Generator) -> dict:
    """Random parameters (N(0, 0.05)) and BatchNorm statistics (mean 0, variance 1) of the
    module's shapes: timing needs no initialiser, whose compile takes longer than the piece."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)

    def fill(path, s):
        name = str(path[-1].key)
        if path[0].key == "batch_stats":
            return jax.numpy.full(s.shape, 1.0 if name == "var" else 0.0, s.dtype)
        return jax.device_put((rng.standard_normal(s.shape) * 0.05).astype(s.dtype))

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


class ResNetStem(nn.Module):
    """ResNet-50's stem as voc_jax.models.resnet.to_pool runs it (inference BatchNorm)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        from voc_jax.models import resnet
        from voc_jax.models.common import batch_norm, conv

        x = conv(self.features, 7, 2, 3, dtype=jax.numpy.float32, bias=False, name="conv1")(x)
        x = nn.relu(batch_norm(Options(), False, "bn1")(x))
        return resnet.max_pool_3x3_s2_p1(x)


class ResNetFeatures(nn.Module):
    """ResNet-50 to its pooled features, as the transfer network runs it."""

    width: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        from voc_jax.models import resnet

        return resnet.to_pool(x, Options(width=self.width))


def torch_stem(features: int):
    import torch

    nn_ = torch.nn
    return nn_.Sequential(
        nn_.Conv2d(3, features, 7, 2, 3, bias=False), nn_.BatchNorm2d(features),
        nn_.ReLU(inplace=True), nn_.MaxPool2d(3, 2, 1),
    )  # fmt: skip


def voc_trainval_candidates(quick: bool = False) -> int:
    """Candidate patches of the reference's 5000 VOC 2007 trainval images (from the real
    annotations when ../shared/data has them; else 5000 x 622, their measured mean; --quick:
    the first 250 images' count, scaled: within 0.3% of the 5000's, in a twentieth of the time)."""
    from voc_jax.data.pipeline import PatchConfig, candidates

    root = SHARED_DATA / "voc2007-annotations" / "VOC2007"
    if not root.is_dir():
        return 5000 * 622
    ids = read_split(root, "trainval")[:5000]
    count = 250 if quick else len(ids)
    parsed = (parse_annotation(root / "Annotations" / f"{i}.xml")[0] for i in ids[:count])
    records = [r for r in parsed if r is not None]
    return sum(len(candidates(r, PatchConfig())[0]) for r in records) * len(ids) // len(records)


def bench_image_section(records, config, args) -> list[dict]:
    """The whole-image family's steps against PyTorch's (scripts/bench_image.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_image

    return bench_image.bench_image(records, config, args, sys.modules[__name__])


SECTIONS = {
    "pipeline": bench_pipeline,
    "crops": bench_crops,
    "train": bench_train,
    "eval": bench_eval,
    "e2e": bench_e2e,
    "cache": bench_cache,
    "profile": bench_profile,
    "backbones": bench_backbones,
    "blocks": bench_blocks,
    "depthwise": bench_depthwise,
    "image": bench_image_section,
}


NOTES = (  # (row field, how it reads in the table's notes)
    ("ratio_vs_full", lambda v, r: f"{v:.2f}x faster than full"),
    ("share_of_step", lambda v, r: f"{100 * v:.1f}% of the full step"),
    ("device_wait_fraction", lambda v, r: f"device waits {100 * v:.1f}% of wall time"),
    ("voc_epoch_s", lambda v, r: f"VOC epoch {v / 3600:.1f} h"),
    ("voc_test_pass_s", lambda v, r: f"VOC test pass {v / 60:.0f} min"),
    ("cache_speedup", lambda v, r: f"{v:.1f}x faster than the uncached frozen epoch"),
    ("verify_vs_cached_epoch", lambda v, r: f"{100 * v:.2f}% of a cached epoch"),
    (
        "fraction_of_peak",
        lambda v, r: f"{r['gflops_per_s']:.0f} GFLOP/s, {100 * v:.0f}% of the GEMM peak",
    ),
    (
        "ratio_vs_eval_pass",
        lambda v, r: (
            f"{v:.2f}x the time of an evaluation pass; {r['cache_bytes'] / 2**20:.0f} "
            f"MiB; VOC 2007 trainval: {r['voc_trainval_cache_gib']:.1f} GiB"
        ),
    ),
    ("compilations", lambda v, r: f"{v} compilation(s)"),
    ("seconds", lambda v, r: f"{1000 * v:.0f} ms"),
)


def _note(r: dict) -> str:
    return "; ".join(text(r[field], r) for field, text in NOTES if r.get(field) is not None)


def format_table(rows: list[dict]) -> str:
    lines = [
        "| section | what | images/s | patches/s | ratio | notes |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        per_image = f"{r['images_per_s']:.1f}" if "images_per_s" in r else ""
        per_patch = f"{r['patches_per_s']:.0f}" if "patches_per_s" in r else ""
        ratio = r.get("ratio_vs_baseline", r.get("ratio_vs_first"))
        ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
        lines.append(
            f"| {r['section']} | {r['what']} | {per_image} | {per_patch} "
            f"| {ratio_text} | {_note(r)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(s for s in SECTIONS if s not in ("backbones", "blocks", "image")),
        help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all but backbones, "
        "blocks and image)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument(
        "--width",
        type=float,
        help="channel multiplier of every network, both sides (default 1: the real networks; "
        "1/16 with --quick)",
    )
    parser.add_argument("--data", help="a VOC2007 directory (default: the shared real subset)")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype of both sides (JAX model.dtype; PyTorch autocast)",
    )
    parser.add_argument("--images", type=int, default=48, help="images for the pipeline section")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
    parser.add_argument("--batch", type=int, default=64, help="patches per SGD update / eval step")
    parser.add_argument("--e2e-images", type=int, default=6, help="images for the e2e section")
    parser.add_argument(
        "--cache-images", type=int, default=8, help="images for the feature-cache section"
    )
    parser.add_argument(
        "--arch",
        action="append",
        choices=BACKBONE_ROWS,
        help="backbones for the backbones and image sections (repeatable; default: all with "
        "ImageNet weights but AlexNet, which the other sections measure)",
    )
    parser.add_argument(
        "--grad-chunks",
        type=int,
        default=0,
        help="backbones section: the train steps' grad_chunks (0: auto, the configs' default)",
    )
    parser.add_argument(
        "--backbone-steps",
        type=lambda text: tuple(text.split(",")),
        default=("full", "frozen", "eval"),
        help="backbones section: which steps (comma-separated of full, frozen, eval)",
    )
    parser.add_argument(
        "--grad-chunk-patches",
        type=int,
        default=16,
        help="blocks section: patches per piece (16: one slice of the sliced full step)",
    )
    parser.add_argument(
        "--image-size", type=int, default=448, help="image section: the canvas side (448)"
    )
    parser.add_argument(
        "--image-batch", type=int, default=8, help="image section: photos per step (8)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    args.arch = args.arch or list(BACKBONE_ROWS)
    if args.width is None:
        args.width = 1 / 16 if args.quick else 1.0
    if args.width <= 0:
        parser.error(f"--width {args.width:g}: a channel multiplier must be positive")
    if args.grad_chunk_patches < 1:
        parser.error(f"--grad-chunk-patches {args.grad_chunk_patches}: needs at least 1 patch")
    for name in ("repeats", "batch", "images", "cache_images", "patch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if args.quick:
        args.image_size = min(args.image_size, 64)
        args.image_batch = min(args.image_batch, 2)
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
    rows = add_peak_fractions(rows, args)
    from voc_jax import xla_options

    env = {
        "xla": xla_options.describe(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "data": source,
        "patch_size": args.patch_size,
        "dtype": args.dtype,
        "width": args.width,
        "patches_per_image": config.patches_per_image,
        "quick": args.quick,
    }
    narrow = "" if args.width == 1 else f", networks of width {args.width:g}"
    print(f"devices: {env['devices']}, data: {source}{narrow}")
    print(
        f"XLA_FLAGS={env['xla']['XLA_FLAGS']!r}; voc-jax compiler options "
        f"{env['xla']['voc_jax_compiler_options']} ({env['xla']['switch']})"
    )
    targets = check_targets(rows)
    if args.json:  # first: minutes of measurements are not lost to a formatting slip
        payload = {"env": env, "results": rows, "targets": targets}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(format_table(rows))
    for line in targets:
        print(line)
    return 0


def check_targets(rows: list[dict]) -> list[str]:
    """The performance targets of the CPU issue, met or missed, from this run's rows."""
    lines = []

    def find(**match):
        return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)

    v = "host" if find(section="train", variant="host") else "ours"  # the production default
    for label, row, goal in (
        ("full step vs PyTorch", find(section="train", step="full", variant=v), 1.25),
        ("frozen step vs PyTorch", find(section="train", step="frozen", variant=v), 1.25),
        ("eval step vs PyTorch", find(section="eval", variant=v), 1.25),
    ):
        if row:
            met = "met" if row["ratio_vs_baseline"] >= goal else "MISSED"
            lines.append(f"target {label} >= {goal}x: {row['ratio_vs_baseline']:.2f}x ({met})")
    for row in rows:  # the whole-image issue: each step at least PyTorch's speed
        if row["section"] == "image" and row["variant"] == "ours" and row["step"] != "crops":
            met = "met" if row["ratio_vs_baseline"] >= 1.0 else "MISSED"
            lines.append(f"target whole-image {row['arch']} {row['step']} vs PyTorch >= 1.0x: "
                         f"{row['ratio_vs_baseline']:.2f}x ({met})")  # fmt: skip
    # (what, the row's field, goal, at least (True) or at most, shown as a percentage)
    for label, field, goal, at_least, percent in (
        ("frozen >= 2.5x full", "ratio_vs_full", 2.5, True, False),
        ("crops <= 10% of the full step", "share_of_step", 0.10, False, True),
        ("cached frozen epoch >= 8x uncached", "cache_speedup", 8.0, True, False),
        ("cache build <= 1.3x an evaluation pass", "ratio_vs_eval_pass", 1.3, False, False),
        ("device waits <= 5%", "device_wait_fraction", 0.05, False, True),
    ):
        candidates_ = [r for r in rows if field in r]
        row = next((r for r in candidates_ if r.get("production")), None) or next(
            iter(candidates_), None
        )
        if row is None:
            continue
        value = row[field]
        ok = "met" if (value >= goal if at_least else value <= goal) else "MISSED"
        shown = f"{100 * value:.1f}%" if percent else f"{value:.2f}x"
        lines.append(f"target {label}: {shown} ({ok})")
    return lines


def main_cleaning_up() -> int:
    """main, its temporary datasets and caches removed on every exit path."""
    try:
        return main()
    finally:
        remove_temporary()


if __name__ == "__main__":
    from voc_jax.cli import run_guarded

    sys.exit(run_guarded(main_cleaning_up))
