"""The benchmark's ``image`` section (scripts/benchmark.py --only image): the whole-image
family's three steps against the same network, size and batch in PyTorch, on the same
threads, interleaved in one run:

- frozen: the head's AdamW step from cached maps (what a frozen run repeats every epoch),
  timed over bursts of FROZEN_BURST calls in a row, as the run makes them;
- finetune: the AdamW step of the config's trainable blocks from the photos' canvases
  (``voc07_image.py:ARCH,finetune``'s ``optim.trainable``, the same layers trainable in torch);
- eval: the forward pass and the pooled probabilities;
- crops: fine-tuning's random resized crops and flips of a batch, resampled on the device
  (``device_crops``, inside the step) against PIL on the host (the host path); the same
  canvases to uint8 rounding.

Both sides: average pooling of a 1x1 convolution's position logits, a per-class BCE,
BatchNorm with its running statistics, float32 unless --dtype.
"""

from __future__ import annotations

import re

import jax
import numpy as np

IMAGE_ARCHS = ("resnet50", "efficientnet_lite0")
FROZEN_BURST = 10  # head steps per timed turn: a frozen run calls them back to back


def bench_image(records, config, args, helpers) -> list[dict]:
    rows = []
    for arch in [a for a in args.arch if a in IMAGE_ARCHS] or list(IMAGE_ARCHS):
        rows += image_rows(arch, records, args, helpers)
    return rows


def experiment(arch: str, args, variant: str, trainable: tuple[str, ...] | None = None):
    from voc_jax.configs import voc07_image
    from voc_jax.image.experiment import ImageExperiment

    c = voc07_image.get_config(f"{arch},{variant}")
    c.model.width, c.model.dtype = args.width, args.dtype
    c.image.size, c.batch_size, c.image.eval_batch = (
        args.image_size,
        args.image_batch,
        args.image_batch,
    )
    c.feature_cache.enabled = False
    if trainable is not None:
        c.optim.trainable = trainable
    return ImageExperiment.build(c)


def photo_batch(exp, records, args) -> dict:
    """A batch of real (or generated) photos on their canvases, with valid positions."""
    from voc_jax.image.data import Source
    from voc_jax.image.inputs import pad_value

    source = Source(records, exp.settings.image.inputs, exp.grids, pad_value(exp.preprocessing),
                    args.image_batch)  # fmt: skip
    batch = source.test_batch(0)
    batch.pop("count")
    batch.pop("indices")
    return batch


def image_rows(arch: str, records, args, helpers) -> list[dict]:
    import torch

    from voc_jax import xla_options
    from voc_jax.image import steps

    finetune = experiment(arch, args, "finetune")
    frozen = experiment(arch, args, "frozen")
    pixels = photo_batch(finetune, records, args)
    maps = finetune.forward_maps()(args.image_size, pixels["views"][0])
    cached = dict(pixels, views=(np.asarray(maps),))
    runners = {}
    for name, exp, start, batch in (("finetune", finetune, "image", pixels),
                                    ("frozen", frozen, "map", cached)):  # fmt: skip
        s = exp.settings
        optimizer = exp.optimizer(100)
        step = xla_options.jit(steps.make_train_step(exp.module, optimizer, s.image.pooling,
                                                     s.image.loss, exp.preprocessing,
                                                     start=start), donate_argnums=0)  # fmt: skip
        state = steps.create_state(exp.params, exp.batch_stats, optimizer, 0, ema=False)
        runners[name] = helpers.Stepper(jax.tree.map(jax.numpy.copy, state), step, [batch])
    score = xla_options.jit(
        lambda v, b: steps.image_logits(finetune.module, v, b, finetune.settings.image.pooling,
                                        finetune.preprocessing, start="image")[0]
    )  # fmt: skip
    variables = jax.device_put(finetune.variables)
    runners["eval"] = lambda: jax.block_until_ready(score(variables, pixels))
    device = helpers.torch_device(args)
    t_model, trainable = torch_whole_image(arch, args, finetune, device)
    x = torch.from_numpy(
        np.asarray(finetune.preprocessing.normalize(pixels["views"][0]))
    ).permute(0, 3, 1, 2).contiguous().to(device)  # fmt: skip
    t_maps = torch.from_numpy(np.asarray(maps, np.float32)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy((pixels["targets"] > 0).astype(np.float32)).to(device)
    runners["torch_finetune"] = torch_step(t_model, trainable, x, y, args, device, helpers)
    runners["torch_frozen"] = torch_step(t_model, list(t_model.head.parameters()),
                                         t_maps.to(device), y, args, device, helpers, maps=True)  # fmt: skip

    def torch_eval():
        with torch.no_grad(), helpers.torch_autocast(args, device):
            torch.sigmoid(t_model.eval()(x))
        helpers.torch_sync(device)

    runners["torch_eval"] = torch_eval
    runners["crops"], runners["host_crops"] = crop_runners(finetune, records, args)
    # A frozen run calls the head step back to back, thousands of times: time it so, a burst
    # per turn (both sides), not once between 4-second fine-tune steps, where one call of a few
    # milliseconds measured 7 ms in one run and 81 ms in another of the same code.
    for name in ("frozen", "torch_frozen"):
        runners[name] = burst(runners[name], FROZEN_BURST)
    t = helpers.interleaved_medians(runners, args.repeats)
    for name in ("frozen", "torch_frozen"):
        t[name] /= FROZEN_BURST
    threads = f"PyTorch ({torch.get_num_threads()} threads)"
    width = "" if args.width == 1 else f" (width {args.width:g})"
    what = {"frozen": "frozen head step from cached maps", "finetune": "fine-tune step",
            "eval": "evaluation"}  # fmt: skip
    rows = []
    for name in ("frozen", "finetune", "eval"):
        for variant, key, who in (("ours", name, "JAX"), ("torch", f"torch_{name}", threads)):
            row = {
                "section": "image",
                "what": f"{arch}{width}: {who} whole-image {what[name]}, {args.image_batch} "
                f"photos at {args.image_size}px",
                "arch": arch,
                "variant": variant,
                "step": name,
                "images_per_s": args.image_batch / t[key],
                "seconds": t[key],
            }
            if variant == "ours":
                row["ratio_vs_baseline"] = t[f"torch_{name}"] / t[key]
            rows.append(row)
    for variant, key, who in (("ours", "crops", "on the device (JAX)"),
                              ("host", "host_crops", "on the host (PIL, one thread)")):  # fmt: skip
        row = {
            "section": "image",
            "what": f"{arch}: random resized crops and flips {who}, {args.image_batch} photos "
            f"to {args.image_size}px",
            "arch": arch, "variant": variant, "step": "crops",
            "images_per_s": args.image_batch / t[key], "seconds": t[key],
        }  # fmt: skip
        if variant == "ours":
            row["ratio_vs_baseline"] = t["host_crops"] / t[key]
        rows.append(row)
    return rows


def burst(run, calls: int):
    """``run`` called ``calls`` times in a row, as one timed turn."""

    def repeated():
        for _ in range(calls):
            run()

    return repeated


def crop_runners(exp, records, args):
    """(device, host): a batch's crops (area 0.3-1, flips) made each way from decoded photos."""
    import dataclasses

    from voc_jax.image import device_crops
    from voc_jax.image.data import Source
    from voc_jax.image.inputs import pad_value, random_crop

    inputs = dataclasses.replace(exp.settings.image.inputs, crop_area=(0.3, 1.0), device_crops=True)
    pad = pad_value(exp.preprocessing)
    source = Source(records[: args.image_batch], inputs, exp.grids, pad, args.image_batch)
    framed = source.train_batch(0, 0, 0)
    framed = {k: framed[k] for k in ("frames", "sizes", "boxes", "flips", "extents", "canvases")}
    fitter = jax.jit(device_crops.make_fitter(pad))
    photos = [source._decode(i) for i in range(len(source.records))]

    def device():
        jax.block_until_ready(fitter(framed))

    def host():
        for i, rgb in enumerate(photos):
            crop = random_crop(rgb, np.random.default_rng([0, 0, i]), inputs)
            source._pixels(crop, i)

    return device, host


def torch_whole_image(arch: str, args, exp, device):
    """The torch network with the same layers trainable as ``exp``'s optim.trainable (each of
    our trainable parameter paths mapped to its torch prefix by the backbone)."""
    import torch

    from voc_jax import optim
    from voc_jax.convert import torch_models

    torch.manual_seed(0)
    model = torch_models.WholeImage(arch, args.width).to(device).train()
    b = exp.module.backbone
    labels = optim.trainable_labels(exp.params, exp.settings.optim.trainable)
    prefixes = {
        b.torch_prefix(path.rsplit("/", 1)[0])
        for path, label in optim.param_paths_and_leaves(labels)
        if label == optim.TRAINABLE and not path.startswith("head/")
    }
    trainable = []
    for name, p in model.backbone.named_parameters():
        name = re.sub(r"^net\.", "", name)  # Lite0's wrapper
        keep = any(name.startswith(prefix + ".") for prefix in prefixes)
        p.requires_grad_(keep)
        if keep:
            trainable.append(p)
    return model, trainable + list(model.head.parameters())


def torch_step(model, params, x, y, args, device, helpers, *, maps: bool = False):
    """One AdamW step of ``params`` on the batch (the same loss and pooling as ours)."""
    import torch

    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    def one():
        model.train()
        opt.zero_grad(set_to_none=True)
        with helpers.torch_autocast(args, device):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, maps=maps), y)
        loss.backward()
        opt.step()
        helpers.torch_sync(device)

    return one
