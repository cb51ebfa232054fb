"""The whole config checked before any data is read or generated and before anything is
written: names, ranges, divisibility, regexes against the real parameter paths (from
``jax.eval_shape``, so no weights and no compute are needed) and the converted weights'
metadata. Every problem is collected and reported at once, each naming its config key.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from voc_jax import metrics, models, optim
from voc_jax import weights as weights_lib
from voc_jax.data.patches import CROP_MODES, DIFFICULT_MODES, TEST_SAMPLINGS
from voc_jax.data.voc import IMAGE_CHECKS
from voc_jax.errors import ConfigError, WeightsError
from voc_jax.model import TransferNet

DTYPES = ("float32", "bfloat16")
CROP_SITES = ("auto", "device", "host")
CACHE_DTYPES = ("float16", "bfloat16", "float32")  # voc_jax.feature_cache.DTYPES
MAX_HEAD_HIDDEN = 65536


class _Problems:
    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.items: list[str] = []

    def get(self, key: str) -> Any:
        node: Any = self.config
        for part in key.split("."):
            node = node[part]
        return node

    def check(self, key: str, ok: Callable[[Any], bool], want: str) -> None:
        try:
            value = self.get(key)
        except (KeyError, AttributeError):
            self.items.append(f"{key}: missing from the config")
            return
        try:
            good = ok(value)
        except (TypeError, ValueError, re.error):
            good = False
        if not good:
            self.items.append(f"{key}={value!r}: {want}")

    def add(self, text: str) -> None:
        self.items.append(text)


def _int(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _int_in(minimum: int, maximum: int) -> Callable[[Any], bool]:
    return lambda v: _int(minimum)(v) and v <= maximum


def _number(low: float, high: float = math.inf, *, low_open=False, high_open=False):
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return ok


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _regexes(value: Any) -> bool:
    if isinstance(value, str):
        return False  # a bare string would be read as a tuple of characters
    for pattern in value:
        re.compile(pattern)
    return True


def validate(config: ml_collections.ConfigDict, device_count: int, process_count: int) -> None:
    """Raise ConfigError listing every problem of ``config`` (nothing read, nothing written)."""
    p = _Problems(config)
    _check_run_and_data(config, p)
    _check_patches_and_model(p)
    _check_optim_and_outputs(p)
    if p.items:  # the checks below need sane values
        raise ConfigError("config: " + "; ".join(p.items))
    _check_divisibility(config, p, device_count, process_count)
    _check_call_size(config, p)
    _check_weights(config, p)
    if not p.items:
        _check_model_and_regexes(config, p)
    if p.items:
        raise ConfigError("config: " + "; ".join(p.items))


def _check_run_and_data(config: ml_collections.ConfigDict, p: _Problems) -> None:
    p.check("seed", _int(0), "must be an integer >= 0")
    p.check("num_epochs", _int(0), "must be an integer >= 0 (0 only evaluates)")
    p.check("batch_size", _int(1), "must be an integer >= 1")
    p.check("images_per_step", _int(1), "must be an integer >= 1")
    p.check("log_every_steps", _int(1), "must be an integer >= 1")
    p.check("grad_chunks", _int(0), "must be an integer >= 0 (0: auto)")
    p.check("data.max_train_images", _int(0), "must be >= 0 (0: all)")
    p.check("data.max_test_images", _int(0), "must be >= 0 (0: all)")
    p.check("data.check_images", _one_of(IMAGE_CHECKS), f"must be one of {IMAGE_CHECKS}")
    p.check("data.workers", _int(0), "must be an integer >= 0")
    p.check("data.train_split", lambda v: isinstance(v, str) and v, "must name a split")
    p.check("data.test_split", lambda v: isinstance(v, str) and v, "must name a split")
    p.check("data.synthetic.num_trainval", _int(1), "must be >= 1")
    p.check("data.synthetic.num_test", _int(1), "must be >= 1")
    p.check("data.synthetic.min_side", _int(16), "must be >= 16 pixels")
    p.check(
        "data.synthetic.max_side",
        lambda v: _int(16)(v) and v >= config.data.synthetic.min_side,
        "must be >= data.synthetic.min_side",
    )


def _check_patches_and_model(p: _Problems) -> None:
    p.check("patches.size", _int(1), "must be an integer >= 1 (pixels)")
    p.check(
        "patches.scales",
        lambda v: len(v) > 0 and all(_number(0, low_open=True)(s) for s in v),
        "must be a non-empty list of positive numbers",
    )
    p.check("patches.per_image", _int(1), "must be an integer >= 1")
    p.check("patches.min_patches", _int(0), "must be an integer >= 0")
    p.check("patches.min_scales", _int(1), "must be an integer >= 1")
    p.check("patches.min_patch_overlap", _number(0, 1), "must be in [0, 1]")
    p.check("patches.min_box_coverage", _number(0, 1, low_open=True), "must be in (0, 1]")
    p.check("patches.difficult", _one_of(DIFFICULT_MODES), f"must be one of {DIFFICULT_MODES}")
    p.check("patches.test_sampling", _one_of(TEST_SAMPLINGS), f"must be one of {TEST_SAMPLINGS}")
    p.check("patches.crop_boxes", _one_of(CROP_MODES), f"must be one of {CROP_MODES}")
    p.check("patches.crops", _one_of(CROP_SITES), f"must be one of {CROP_SITES}")
    p.check(
        "patches.canvas",
        lambda v: len(v) == 2 and all(_int(2)(x) for x in v),
        "must be (height, width), each >= 2",
    )
    p.check("patches.max_rows", _int(0), "must be >= 0 (0: derived from the scales)")
    p.check("model.num_classes", lambda v: v == 21, "must be 21 (background + the 20 classes)")
    p.check("model.head_hidden", _int_in(1, MAX_HEAD_HIDDEN), f"must be in [1, {MAX_HEAD_HIDDEN}]")
    p.check("model.dropout_rate", _number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("model.dtype", _one_of(DTYPES), f"must be one of {DTYPES}")
    p.check(
        "model.conv1_padding",
        _int_in(0, weights_lib.MAX_CONV1_PADDING),
        f"must be in [0, {weights_lib.MAX_CONV1_PADDING}] (torchvision pads 2, neon 3)",
    )
    p.check("model.width", _number(0, 1, low_open=True), "must be in (0, 1]")
    p.check("model.arch", _one_of(models.ARCHITECTURES), f"must be one of {models.ARCHITECTURES}")
    p.check("model.bn_update", lambda v: isinstance(v, bool), "must be True or False")


def _check_optim_and_outputs(p: _Problems) -> None:
    p.check("optim.optimizer", _one_of(optim.OPTIMIZERS), f"must be one of {optim.OPTIMIZERS}")
    p.check("optim.schedule", _one_of(optim.SCHEDULES), f"must be one of {optim.SCHEDULES}")
    p.check("optim.learning_rate", _number(0), "must be a finite number >= 0")
    p.check(
        "optim.lr_changes",
        lambda v: all(_int(0)(e) and _number(0)(r) for e, r in v),
        "must be ((epoch >= 0, rate >= 0), ...)",
    )
    p.check("optim.warmup_epochs", _number(0), "must be >= 0")
    p.check("optim.momentum", _number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("optim.weight_decay", _number(0), "must be >= 0")
    p.check("optim.b1", _number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("optim.b2", _number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("optim.eps", _number(0, low_open=True), "must be > 0")
    p.check("optim.trainable", _regexes, "must be a tuple of valid regular expressions")
    p.check("optim.no_decay", _regexes, "must be a tuple of valid regular expressions")
    p.check("checkpoint.every_steps", _int(0), "must be >= 0 (0: only at epoch ends)")
    p.check("checkpoint.max_to_keep", _int(1), "must be >= 1")
    p.check("eval.exponent", _number(0, low_open=True), "must be > 0")
    p.check(
        "eval.protocols",
        lambda v: len(v) > 0 and all(x in metrics.PROTOCOLS for x in v),
        f"must be a non-empty subset of {metrics.PROTOCOLS}",
    )
    p.check("eval.every_epochs", _int(0), "must be >= 0")
    p.check("eval.images_per_step", _int(1), "must be an integer >= 1")
    p.check("feature_cache.dtype", _one_of(CACHE_DTYPES), f"must be one of {CACHE_DTYPES}")


def _check_divisibility(
    config: ml_collections.ConfigDict, p: _Problems, device_count: int, process_count: int
) -> None:
    chunks = config.get("grad_chunks", 1)
    if isinstance(chunks, int) and chunks > 1:
        if config.batch_size % chunks:
            p.add(f"grad_chunks={chunks} must divide batch_size={config.batch_size}")
        if config.model.get("bn_update", False):
            p.add(
                f"grad_chunks={chunks} with model.bn_update=True: the batch statistics would be "
                "per chunk; use grad_chunks=1 (or 0, auto)"
            )
    if config.patches.per_image % config.batch_size:
        p.add(
            f"patches.per_image={config.patches.per_image} must be a multiple of "
            f"batch_size={config.batch_size} (one image's patches form whole micro-batches)"
        )
    for key in ("images_per_step", "eval.images_per_step"):
        value = p.get(key)
        if value % device_count:
            p.add(f"{key}={value} must be a multiple of the {device_count} devices")
        if value % process_count:
            p.add(f"{key}={value} must be a multiple of the {process_count} processes")


def _check_call_size(config: ml_collections.ConfigDict, p: _Problems) -> None:
    """One call's patches must fit in this machine's memory: they are materialised at once
    (host crops, or the device's normalised float input)."""
    images = max(config.images_per_step, config.eval.images_per_step)
    per_image, size = config.patches.per_image, config.patches.size
    needed = images * per_image * size * size * 3 * 4  # float32 network input
    memory = physical_memory()
    if memory and needed > memory:
        p.add(
            f"patches.per_image={per_image} at patches.size={size} with {images} image(s) per "
            f"call: one call's patches need {format_bytes(needed)}, more than this machine's "
            f"{format_bytes(memory)} of memory"
        )


def physical_memory() -> int:
    """Bytes of RAM (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def format_bytes(n: float) -> str:
    """1.5 KiB, 23.7 GiB, 1.1 TiB: the unit that fits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _check_weights(config: ml_collections.ConfigDict, p: _Problems) -> None:
    weights_dir = config.init.weights
    if not weights_dir:
        return
    meta = Path(weights_dir) / weights_lib.METADATA_FILE
    if not meta.is_file():
        p.add(
            f"init.weights={weights_dir}: no converted weights there (metadata.json missing). "
            "Create them with convert/alexnet_to_flax.py (for the smoke config, "
            "scripts/quickstart.sh pretrains and converts the synthetic source network), or "
            "pass --config.init.weights='' to train from scratch"
        )
        return
    try:
        metadata = weights_lib.read_metadata(meta)
    except WeightsError as e:
        p.add(f"init.weights: {e}")
        return
    block = metadata["architecture"]
    arch, width = weights_lib.backbone_of(block), float(block.get("width", 1.0))
    if arch != config.model.arch:
        p.add(
            f"init.weights={weights_dir}: {arch} weights, but model.arch={config.model.arch!r}; "
            f"pass --config.model.arch={arch} (or use a voc07_{arch} config)"
        )
    if width != config.model.width:
        p.add(
            f"init.weights={weights_dir}: weights of width {width:g}, but model.width="
            f"{config.model.width:g}; pass --config.model.width={width:g}"
        )


def _check_model_and_regexes(config: ml_collections.ConfigDict, p: _Problems) -> None:
    """The network at this patch size, and every regex against its real parameter paths."""
    m = config.model
    model = TransferNet(
        num_classes=m.num_classes,
        conv1_padding=m.conv1_padding,
        head_hidden=m.head_hidden,
        width=m.width,
        arch=m.arch,
    )
    size, b = config.patches.size, models.backbone(m.arch)
    try:
        if size < b.min_patch:
            raise ValueError
        shapes = jax.eval_shape(
            model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        )
    except Exception:  # the conv stack leaves nothing of too small an input
        p.add(
            f"patches.size={size}: too small for {m.arch}'s conv and pooling layers (>= {b.min_patch})"
        )
        return
    paths = optim.param_paths(shapes["params"])
    for key in ("optim.trainable", "optim.no_decay"):
        for pattern in p.get(key):
            if not any(re.fullmatch(pattern, path) for path in paths):
                p.add(f"{key}: {pattern!r} matches no parameter (paths look like {paths[:3]})")
    _check_feature_cache(config, paths, p)


def _check_feature_cache(config: ml_collections.ConfigDict, paths: list[str], p: _Problems):
    """The cache holds the frozen prefix's output (AlexNet, VGG-16: fc6; ResNet-50: the
    pooled features): usable only when nothing in that prefix trains or changes."""
    if not config.feature_cache.enabled:
        return
    b = models.backbone(config.model.arch)
    below = [
        path
        for path in paths
        if path.split("/")[0] in b.prefix_layers
        and any(re.fullmatch(pattern, path) for pattern in config.optim.trainable)
    ]
    if below:
        p.add(
            f"feature_cache.enabled=True caches {config.model.arch}'s {b.cached} output, so "
            f"every trainable parameter must be above {b.cached}; optim.trainable makes these "
            f"trainable: {', '.join(below)}"
        )
    if b.has_batch_norm and config.model.bn_update:
        p.add(
            "feature_cache.enabled=True with model.bn_update=True: updated BatchNorm statistics "
            "change the cached features; keep the pretrained statistics (bn_update=False)"
        )
    if jax.process_count() > 1:
        p.add("feature_cache.enabled=True: the cache is built and read by a single process")
