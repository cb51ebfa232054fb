"""The config checked against the network it builds and the weights it names, before any data
is read or generated and before anything is written: the converted weights' metadata (their
architecture and width must be the config's), the patch size against the network's smallest
input, every ``optim`` regex against the real parameter paths (from ``jax.eval_shape``: no
weights read, no compute) and the feature cache's conditions. Every problem is reported at
once, each naming its config key. Runs after voc_jax.validation (the config's values).
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from voc_jax import config_compat, models, optim
from voc_jax import weights as weights_lib
from voc_jax.errors import ConfigError, WeightsError
from voc_jax.models.transfer import TransferNet


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError listing every problem (the config's values have passed
    voc_jax.validation.validate)."""
    problems = check_weights(config)
    if not problems:
        problems = check_network(config)
    if problems:
        raise ConfigError("config: " + "; ".join(problems))


def check_weights(config: ml_collections.ConfigDict) -> list[str]:
    """``init.weights``: converted weights of the config's architecture and width."""
    weights_dir = config.init.weights
    if not weights_dir:
        return []
    meta = Path(weights_dir) / weights_lib.METADATA_FILE
    if not meta.is_file():
        return [
            f"init.weights={weights_dir}: no converted weights there (metadata.json missing). "
            "Create them with convert/alexnet_to_flax.py (for the smoke config, "
            "scripts/quickstart.sh converts the weights it needs), or "
            "pass --config.init.weights='' to train from scratch"
        ]
    try:
        metadata = weights_lib.read_metadata(meta)
    except WeightsError as e:
        return [f"init.weights: {e}"]
    block = metadata["architecture"]
    arch, width = weights_lib.backbone_of(block).name, float(block.get("width", 1.0))
    problems = []
    if arch != config.model.arch:
        problems.append(
            f"init.weights={weights_dir}: {arch} weights, but model.arch={config.model.arch!r}; "
            f"pass --config.model.arch={arch} (or use {_config_of(arch)})"
        )
    if width != config.model.width:
        problems.append(
            f"init.weights={weights_dir}: weights of width {width:g}, but model.width="
            f"{config.model.width:g}; pass --config.model.width={width:g}"
        )
    return problems


def _config_of(arch: str) -> str:
    from voc_jax.configs import BY_ARCH

    name = BY_ARCH.get(arch)
    return f"--config voc_jax/configs/{name}" if name else f"a config with model.arch={arch!r}"


def check_network(config: ml_collections.ConfigDict) -> list[str]:
    """The network at this patch size, and every regex against its real parameter paths."""
    m = config.model
    b = models.backbone(m.arch)
    model = TransferNet(
        num_classes=m.num_classes,
        head_hidden=m.head_hidden,
        width=m.width,
        arch=m.arch,
        options=models.options_for(m.arch, config_compat.model_options(m))[0],
    )
    size = config.patches.size
    try:
        if size < b.min_patch:
            raise ValueError
        shapes = jax.eval_shape(
            model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        )
    except Exception:  # the conv stack leaves nothing of too small an input
        return [
            f"patches.size={size}: too small for {m.arch}'s conv and pooling layers "
            f"(>= {b.min_patch})"
        ]
    paths = optim.param_paths(shapes["params"])
    problems = []
    for key in ("optim.trainable", "optim.no_decay"):
        block, name = key.split(".")
        for pattern in config[block][name]:
            if not any(re.fullmatch(pattern, path) for path in paths):
                problems.append(
                    f"{key}: {pattern!r} matches no parameter (paths look like {paths[:3]})"
                )
    return problems + check_feature_cache(config, paths)


def check_feature_cache(config: ml_collections.ConfigDict, paths: list[str]) -> list[str]:
    """The cache holds the frozen prefix's output (AlexNet, VGG-16: fc6; ResNet-50: the
    pooled features): usable only when nothing in that prefix trains or changes."""
    if not config.feature_cache.enabled:
        return []
    b = models.backbone(config.model.arch)
    problems = []
    below = [
        path
        for path in paths
        if path.split("/")[0] in b.prefix_layers
        and any(re.fullmatch(pattern, path) for pattern in config.optim.trainable)
    ]
    if below:
        problems.append(
            f"feature_cache.enabled=True caches {config.model.arch}'s {b.cached} output, so "
            f"every trainable parameter must be above {b.cached}; optim.trainable makes these "
            f"trainable: {', '.join(below)}"
        )
    if b.has_batch_norm and config.model.bn_update:
        problems.append(
            "feature_cache.enabled=True with model.bn_update=True: updated BatchNorm statistics "
            "change the cached features; keep the pretrained statistics (bn_update=False)"
        )
    if jax.process_count() > 1:
        problems.append(
            "feature_cache.enabled=True: the cache is built and read by a single process"
        )
    return problems
