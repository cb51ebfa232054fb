"""The config's values checked before any data is read or generated and before anything is
written: names, ranges, divisibility, the memory one call needs, the backbone's name and its
own options. Every problem is collected and reported at once, each naming its config key.

A low floor: this module knows the registry of backbones (to check ``model.arch`` and to let
the backbone check ``model.options``), not the transfer network or the optimizer. The checks
that need the network itself (its parameter paths, its smallest input) and the converted
weights' metadata are voc_jax.model_validation's; ``voc_jax.experiment.validate`` runs both.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import ml_collections

from voc_jax import config_compat, metrics, models, settings
from voc_jax.data.formats import FORMATS, HAS_BOXES
from voc_jax.data.patches import CROP_MODES, DIFFICULT_MODES, TEST_SAMPLINGS
from voc_jax.data.synthetic import MAX_CLASSES
from voc_jax.data.voc import IMAGE_CHECKS
from voc_jax.errors import ConfigError
from voc_jax.memory import format_bytes, physical_memory

DTYPES = ("float32", "bfloat16")
CROP_SITES = ("auto", "device", "host")
CACHE_DTYPES = ("float16", "bfloat16", "float32")  # voc_jax.feature_cache.DTYPES
MAX_HEAD_HIDDEN = 65536
log = logging.getLogger(__name__)


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


def check_dataset(p: _Problems, *, boxes_needed: bool) -> None:
    """``data.format`` and ``data.classes`` (both families); a format without boxes where the
    method needs them (the patch family labels patches by their overlap with boxes)."""
    p.check("data.format", _one_of(FORMATS), f"must be one of {FORMATS}")
    p.check("data.classes", _names, "must be a list of class names (empty: the dataset's own)")
    p.check("data.synthetic.classes", lambda v: _names(v) and len(v) <= MAX_CLASSES,
            f"must be a list of at most {MAX_CLASSES} class names (empty: VOC's 20)")  # fmt: skip
    fmt = p.config.data.get("format")
    if boxes_needed and fmt in FORMATS and not HAS_BOXES[fmt]:
        p.add(f"data.format={fmt!r}: a label list has no boxes, and the patch family labels "
              "each patch by its overlap with the boxes; train the whole-image family "
              "(voc_jax/configs/voc07_image.py) or the linear probe on it")  # fmt: skip


def _names(value: Any) -> bool:
    return not isinstance(value, str) and all(isinstance(n, str) for n in value)


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
    if p.items:
        raise ConfigError("config: " + "; ".join(p.items))


def _check_run_and_data(config: ml_collections.ConfigDict, p: _Problems) -> None:
    if config.get("method", "patches") != "patches":
        p.add(f"method={config.method!r}: must be patches here, or image with a whole-image "
              "config (voc_jax/configs/voc07_image.py)")  # fmt: skip
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
    p.check("data.max_image_pixels", _int(1), "must be an integer >= 1 (pixels)")
    p.check("data.train_split", lambda v: isinstance(v, str) and v, "must name a split")
    p.check("data.test_split", lambda v: isinstance(v, str) and v, "must name a split")
    check_dataset(p, boxes_needed=True)
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
    p.check("model.num_classes", lambda v: v == 0 or _int(2)(v),
            "must be 0 (from the dataset's classes, + background) or >= 2")  # fmt: skip
    p.check("model.head_hidden", _int_in(1, MAX_HEAD_HIDDEN), f"must be in [1, {MAX_HEAD_HIDDEN}]")
    p.check("model.dropout_rate", _number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("model.dtype", _one_of(DTYPES), f"must be one of {DTYPES}")
    p.check("model.width", _number(0, 1, low_open=True), "must be in (0, 1]")
    p.check("model.arch", _one_of(models.ARCHITECTURES), f"must be one of {models.ARCHITECTURES}")
    p.check("model.bn_update", lambda v: isinstance(v, bool), "must be True or False")
    _check_model_options(p)


def _check_model_options(p: _Problems) -> None:
    """``model.options``: the backbone's own, checked by the backbone (AlexNet's
    conv1_padding; a key another architecture has is refused, naming its options)."""
    model = p.config.model
    if model.get("arch") not in models.ARCHITECTURES:
        return
    try:
        _, aside = models.options_for(model.arch, config_compat.model_options(model))
    except ValueError as e:
        p.add(str(e))
        return
    for key in aside:
        log.warning("model.options.%s is not an option of %s: ignored", key, model.arch)


def _check_optim_and_outputs(p: _Problems) -> None:
    p.check(
        "optim.optimizer", _one_of(settings.OPTIMIZERS), f"must be one of {settings.OPTIMIZERS}"
    )
    p.check("optim.schedule", _one_of(settings.SCHEDULES), f"must be one of {settings.SCHEDULES}")
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


# The building blocks, for the whole-image family's checks (voc_jax.image.validation).
Problems = _Problems
at_least = _int
number = _number
one_of = _one_of
regexes = _regexes
check_run_and_data = _check_run_and_data
check_optim_and_outputs = _check_optim_and_outputs
