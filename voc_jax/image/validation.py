"""The whole-image family's config checks, before anything is read or written: its own
fields, the shared ones (data, optimizer, outputs: voc_jax.validation's checks), the
patch family's fields refused by name, and the input size against the network (shapes only,
no compile). ConfigError lists every problem, each naming its field."""

from __future__ import annotations

import ml_collections

from voc_jax import metrics, model_validation, models, settings, validation
from voc_jax.errors import ConfigError
from voc_jax.image.inputs import RESIZES
from voc_jax.image.loss import LOSSES
from voc_jax.image.pooling import POOLINGS

# Fields only the patch family has: set in an image run, they would be ignored silently.
CROPS_ON = ("auto", "device", "host")
PATCH_ONLY = ("patches", "images_per_step", "grad_chunks")
PATCH_ONLY_EVAL = ("exponent", "images_per_step")
CACHE_DTYPES = ("float16", "bfloat16", "float32")


def validate(config: ml_collections.ConfigDict) -> None:
    p = validation.Problems(config)
    for key in PATCH_ONLY:
        if key in config:
            p.add(f"{key}: a patch-family field in a whole-image config (method=image); remove "
                  "it, or use a patch config (voc07_<arch>.py)")  # fmt: skip
    for key in PATCH_ONLY_EVAL:
        if key in config.get("eval", {}):
            p.add(f"eval.{key}: a patch-family field in a whole-image config; remove it")
    _check_shared(config, p)
    _check_image(config, p)
    if p.items:
        raise ConfigError("config: " + "; ".join(p.items))
    problems = model_validation.check_weights(config)
    if not problems:
        problems = _check_input_size(config)
    if problems:
        raise ConfigError("config: " + "; ".join(problems))


def _check_shared(config: ml_collections.ConfigDict, p: validation.Problems) -> None:
    p.check("seed", validation.at_least(0), "must be an integer >= 0")
    p.check("num_epochs", validation.at_least(0), "must be an integer >= 0 (0 only evaluates)")
    p.check("batch_size", validation.at_least(1), "must be an integer >= 1 (photos per update)")
    p.check("log_every_steps", validation.at_least(1), "must be an integer >= 1")
    p.check("data.max_train_images", validation.at_least(0), "must be >= 0 (0: all)")
    p.check("data.max_test_images", validation.at_least(0), "must be >= 0 (0: all)")
    p.check("data.workers", validation.at_least(0), "must be an integer >= 0")
    p.check("model.arch", lambda v: v in models.ARCHITECTURES,
            f"must be one of {models.ARCHITECTURES}")  # fmt: skip
    p.check("model.num_classes", validation.at_least(0),
            "must be 0 (one logit per class of the dataset) or the number of classes")  # fmt: skip
    validation.check_dataset(p, boxes_needed=False)
    p.check("model.head_hidden", validation.at_least(0), "must be >= 0 (0: a linear head)")
    p.check("model.dropout_rate", validation.number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("model.dtype", validation.one_of(("float32", "bfloat16")), "float32 or bfloat16")
    p.check("model.width", validation.number(0, 1, low_open=True), "must be in (0, 1]")
    p.check("optim.optimizer", validation.one_of(settings.OPTIMIZERS),
            f"must be one of {settings.OPTIMIZERS}")  # fmt: skip
    p.check("optim.schedule", validation.one_of(settings.SCHEDULES),
            f"must be one of {settings.SCHEDULES}")  # fmt: skip
    p.check("optim.learning_rate", validation.number(0), "must be a finite number >= 0")
    p.check("optim.warmup_epochs", validation.number(0), "must be >= 0")
    p.check("optim.weight_decay", validation.number(0), "must be >= 0")
    p.check("optim.trainable", validation.regexes, "must be a tuple of regular expressions")
    p.check("optim.no_decay", validation.regexes, "must be a tuple of regular expressions")
    p.check("checkpoint.every_steps", validation.at_least(0), "must be >= 0")
    p.check("checkpoint.max_to_keep", validation.at_least(1), "must be >= 1")
    p.check("eval.every_epochs", validation.at_least(0), "must be >= 0")
    p.check("eval.protocols", lambda v: len(v) > 0 and all(x in metrics.PROTOCOLS for x in v),
            f"must be a non-empty subset of {metrics.PROTOCOLS}")  # fmt: skip
    p.check("feature_cache.dtype", validation.one_of(CACHE_DTYPES), f"one of {CACHE_DTYPES}")


def _check_image(config: ml_collections.ConfigDict, p: validation.Problems) -> None:
    def pair(low, high):
        return lambda v: len(v) == 2 and low <= v[0] <= v[1] <= high

    p.check("image.size", validation.at_least(32), "must be an integer >= 32 (pixels)")
    p.check("image.resize", validation.one_of(RESIZES), f"must be one of {RESIZES}")
    p.check("image.scales", lambda v: len(v) > 0 and all(0 < s <= 4 for s in v),
            "must be a non-empty tuple of factors in (0, 4]")  # fmt: skip
    p.check("image.pooling", validation.one_of(POOLINGS), f"must be one of {POOLINGS}")
    p.check("image.lse_r", validation.number(0, low_open=True), "must be > 0 (lse's sharpness)")
    p.check("image.topk", validation.at_least(1), "must be an integer >= 1")
    p.check("image.fc_as_conv", lambda v: isinstance(v, bool), "must be True or False")
    p.check("image.head_dropout", validation.number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("image.loss", validation.one_of(LOSSES), f"must be one of {LOSSES}")
    p.check("image.asl_gamma_pos", validation.number(0), "must be >= 0")
    p.check("image.asl_gamma_neg", validation.number(0), "must be >= 0")
    p.check("image.asl_clip", validation.number(0, 1, high_open=True), "must be in [0, 1)")
    p.check("image.crop_area", pair(0.01, 1.0), "must be (low, high) with 0.01 <= low <= high <= 1")
    p.check("image.eval_batch", validation.at_least(1), "must be an integer >= 1")
    p.check("image.ema", validation.number(0, 1, high_open=True), "must be in [0, 1) (0: off)")
    p.check("image.grad_chunks", validation.at_least(1), "must be an integer >= 1")
    p.check("image.crops_on", validation.one_of(CROPS_ON), f"must be one of {CROPS_ON}")
    p.check("image.frame", validation.at_least(32), "must be an integer >= 32 (pixels)")
    p.check("image.bucket", lambda v: validation.at_least(32)(v) and v % 32 == 0,
            "must be a multiple of 32 (the map's stride), at least 32")  # fmt: skip
    if p.items:
        return
    if config.feature_cache.enabled and tuple(config.image.crop_area) != (1.0, 1.0):
        p.add(f"image.crop_area={tuple(config.image.crop_area)}: random crops cannot come from "
              "the cache of whole maps; set it to (1.0, 1.0) or feature_cache.enabled=False")  # fmt: skip
    chunks = config.image.grad_chunks
    if chunks > 1 and config.batch_size % chunks:
        p.add(f"image.grad_chunks={chunks}: must divide batch_size={config.batch_size}")
    if chunks > 1 and config.model.bn_update:
        p.add(f"image.grad_chunks={chunks} with model.bn_update=True: batch statistics would be "
              "per slice; use one or the other")  # fmt: skip
    if config.feature_cache.enabled and config.model.bn_update:
        p.add("model.bn_update=True: the cached maps come from a frozen backbone; set it to "
              "False or feature_cache.enabled=False")  # fmt: skip


def _check_input_size(config: ml_collections.ConfigDict) -> list[str]:
    """Every scale's canvas gives the network at least one map position."""
    from voc_jax.image.inputs import InputSettings
    from voc_jax.image.model import WholeImageNet, map_shape

    inputs = InputSettings(size=config.image.size, scales=tuple(config.image.scales))
    net = WholeImageNet(arch=config.model.arch, width=config.model.width,
                        fc_as_conv=config.image.fc_as_conv)  # fmt: skip
    problems = []
    for scale, side in zip(inputs.scales, inputs.sides, strict=True):
        if map_shape(net, side) is None:
            problems.append(
                f"image.size={config.image.size} at scale {scale:g} ({side} px): below "
                f"{models.backbone(config.model.arch).display}'s smallest input"
                + (" with fc6 as a convolution (image.fc_as_conv)" if net.uses_fc() else "")
                + "; raise image.size or the scale"
            )
    bucket = min(config.image.get("bucket", 64), min(inputs.sides))
    if config.image.resize == "own" and not problems and map_shape(net, bucket) is None:
        problems.append(
            f"image.bucket={config.image.bucket}: a photo's smallest canvas ({bucket} px) is "
            f"below {models.backbone(config.model.arch).display}'s smallest input; raise "
            "image.bucket"
        )
    return problems
