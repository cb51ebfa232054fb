"""A whole-image run assembled once: ``ImageExperiment.build(config)`` reads the (validated)
config into typed settings and builds the network, its initial variables (the converted
backbone, a fresh head), the preprocessing, and the jitted steps. Below it, no ConfigDict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from voc_jax import class_config, models, optim, settings, xla_options
from voc_jax import weights as weights_lib
from voc_jax.data.splits import DataSettings
from voc_jax.errors import ConfigError
from voc_jax.image.inputs import InputSettings
from voc_jax.image.loss import Loss
from voc_jax.image.model import WholeImageNet, map_shape
from voc_jax.image.pooling import Pooling
from voc_jax.preprocessing import Preprocessing


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    inputs: InputSettings
    pooling: Pooling
    loss: Loss
    head_dropout: float
    fc_as_conv: bool
    eval_batch: int
    ema: float  # 0: off
    grad_chunks: int = 1  # gradient slices of an update's photos


@dataclasses.dataclass(frozen=True)
class RunSettings:
    seed: int
    num_epochs: int
    batch_size: int  # photos per update
    log_every_steps: int
    data: DataSettings
    model: settings.ModelSettings
    init: settings.InitSettings
    optim: settings.OptimSettings
    checkpoint_every: int
    max_to_keep: int
    protocols: tuple[str, ...]
    eval_every: int
    plots: bool
    cache: settings.CacheSettings
    image: ImageSettings


def crops_on_device(where: str) -> bool:
    """image.crops_on: device | host | auto (the device unless it is the CPU)."""
    return where == "device" or (where == "auto" and jax.default_backend() != "cpu")


def read(config: ml_collections.ConfigDict) -> RunSettings:
    """Every field a whole-image run uses, typed (the config has passed validation)."""
    m, i, im = config.model, config.init, config.image
    plain = settings._plain
    inputs = InputSettings(
        size=im.size,
        resize=im.resize,
        scales=plain(im.scales),
        flip=bool(im.flip),
        crop_area=plain(im.crop_area),
        test_flip=bool(im.test_flip),
        device_crops=crops_on_device(str(im.get("crops_on", "auto"))),
        frame=int(im.get("frame", 512)),
        bucket=int(im.get("bucket", 64)),
    )
    image = ImageSettings(
        inputs=inputs,
        pooling=Pooling(im.pooling, float(im.lse_r), int(im.topk)),
        loss=Loss(im.loss, float(im.asl_gamma_pos), float(im.asl_gamma_neg), float(im.asl_clip)),
        head_dropout=float(im.head_dropout),
        fc_as_conv=bool(im.fc_as_conv),
        eval_batch=int(im.eval_batch),
        ema=float(im.ema),
        grad_chunks=int(im.get("grad_chunks", 1)),
    )
    d = config.data
    data = settings._fields(
        DataSettings, d, synthetic_generate=bool(d.synthetic.generate),
        synthetic=settings.synthetic_config(config),
    )  # fmt: skip
    model = settings._fields(
        settings.ModelSettings, m, patch_size=im.size,
        options=models.options_for(m.arch, dict(m.options))[0],
    )  # fmt: skip
    init = settings.InitSettings(
        weights=str(i.weights or ""),
        keep_head=False,
        head_from=str(i.get("head_from", "") or ""),
        scratch_preprocessing=Preprocessing(
            channel_order=i.channel_order, scale=i.scale, mean=tuple(i.mean), std=tuple(i.std)
        ),
    )
    return RunSettings(
        seed=config.seed,
        num_epochs=config.num_epochs,
        batch_size=config.batch_size,
        log_every_steps=config.log_every_steps,
        data=data,
        model=model,
        init=init,
        optim=settings.optim_settings(config.optim),
        checkpoint_every=config.checkpoint.every_steps,
        max_to_keep=config.checkpoint.max_to_keep,
        protocols=plain(config.eval.protocols),
        eval_every=config.eval.every_epochs,
        plots=bool(config.eval.plots),
        cache=settings._fields(settings.CacheSettings, config.feature_cache),
        image=image,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class ImageExperiment:
    settings: RunSettings
    module: WholeImageNet
    params: Any
    batch_stats: Any
    preprocessing: Preprocessing
    source: dict[str, Any]
    grids: tuple[tuple[int, int], ...]  # each scale's map positions
    map_width: int
    config: ml_collections.ConfigDict

    @classmethod
    def build(cls, config: ml_collections.ConfigDict) -> ImageExperiment:
        config = class_config.resolve(config)  # data.classes, model.num_classes settled
        s = read(config)
        module, variables, prep, source = build_model(s)
        shapes = [map_shape(module, side) for side in s.image.inputs.sides]
        return cls(
            settings=s,
            module=module,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            preprocessing=prep,
            source=source,
            grids=tuple(shape[:2] for shape in shapes),
            map_width=shapes[0][2],
            config=config,
        )

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params} | ({"batch_stats": self.batch_stats} if self.batch_stats
                                          else {})  # fmt: skip

    @property
    def frozen_backbone(self) -> bool:
        return self.module.frozen_backbone

    def grid_of(self, canvas: tuple[int, int]) -> tuple[int, int]:
        """The map positions of a (height, width) canvas (own sizes' buckets)."""
        shape = map_shape(self.module, canvas)
        if shape is None:
            raise ConfigError(f"a {canvas[0]}x{canvas[1]} canvas is too small for "
                              f"{self.settings.model.arch}; raise image.bucket or image.size")  # fmt: skip
        return shape[:2]

    def optimizer(self, steps_per_epoch: int) -> optim.Optimizer:
        return optim.make_optimizer(
            self.settings.optim, self.params, steps_per_epoch, self.settings.num_epochs
        )

    def forward_maps(self) -> Any:
        """(side, uint8 canvases) -> the backbone's maps in inference mode (the cache's rows)."""
        prep, module = self.preprocessing, self.module

        def maps(variables, pixels):
            return module.apply(variables, prep.normalize(pixels, module.dtype), stop="map")

        forward = xla_options.jit(maps)

        variables = jax.device_put(self.variables)
        return lambda side, pixels: forward(variables, pixels)


def build_model(s: RunSettings) -> tuple[WholeImageNet, dict[str, Any], Preprocessing, dict]:
    """The network and its initial variables: the converted backbone (every parameter the
    network has, by name) and a fresh head from the seed, or a fresh init from scratch."""
    m, init = s.model, s.init
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    converted, options, prep, source = None, m.options, init.scratch_preprocessing, None
    if init.weights:
        converted, metadata = weights_lib.load_converted(init.weights)
        block = metadata["architecture"]
        options = weights_lib.options_of(block)
        prep = weights_lib.preprocessing_of(metadata)
        source = {"weights": str(init.weights), **metadata["source"]}
    module = WholeImageNet(
        num_classes=m.num_classes,
        arch=m.arch,
        width=m.width,
        dtype=dtype,
        dropout_rate=m.dropout_rate,
        head_dropout=s.image.head_dropout,
        head_hidden=m.head_hidden,
        fc_as_conv=s.image.fc_as_conv,
        bn_update=m.bn_update,
        options=options,
    )
    side = s.image.inputs.sides[0]
    fresh = initial_variables(module, s.seed, side, head_only=converted is not None)
    if converted is not None:
        fresh = with_backbone(fresh, weights_lib.as_variables(converted), init.weights)
    labels = optim.trainable_labels(fresh["params"], s.optim.trainable)
    trains_backbone = any(
        label == optim.TRAINABLE and not path.startswith("head/")
        for path, label in traverse_util.flatten_dict(labels, sep="/").items()
    )
    module = module.clone(frozen_backbone=not trains_backbone)
    if s.cache.enabled and trains_backbone:
        raise ConfigError(
            f"feature_cache.enabled=True, but optim.trainable={s.optim.trainable} trains backbone "
            "layers: the cached maps would go stale; train only head/.* or disable the cache"
        )
    return module, fresh, prep, source or {"weights": None, "kind": "scratch"}


def initial_variables(
    module: WholeImageNet, seed: int, side: int, *, head_only: bool = False
) -> dict[str, Any]:
    """The network's initial variables from ``seed`` as float32 NumPy. ``head_only``: only the
    head's are computed (their values are the whole init's: each parameter's random stream
    follows from its name), the rest are zeros of their shapes for converted weights to
    replace (with_backbone replaces every one of them or refuses); XLA then compiles the head's
    initialisers only (ResNet-50: 0.5 s instead of 4.8)."""
    key, x = jax.random.PRNGKey(seed), jnp.zeros((1, side, side, 3))
    if not head_only:
        fresh = xla_options.jit_once(module.init)(key, x)
        return jax.tree.map(lambda a: np.asarray(a, np.float32), dict(fresh))

    def head(key: jax.Array, x: jax.Array) -> Any:
        return module.init(key, x)["params"]["head"]

    shapes = jax.eval_shape(module.init, key, x)
    fresh = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), dict(shapes))
    fresh["params"]["head"] = jax.tree.map(np.asarray, xla_options.jit_once(head)(key, x))
    return fresh


def with_backbone(fresh: dict[str, Any], converted: dict[str, Any], where: str) -> dict[str, Any]:
    """``fresh`` with every backbone leaf replaced by the converted one of the same path."""
    out = {}
    for collection, tree in fresh.items():
        flat = traverse_util.flatten_dict(tree, sep="/")
        source = traverse_util.flatten_dict(converted.get(collection, {}), sep="/")
        for path, leaf in flat.items():
            if path.startswith("head/"):
                continue
            if path not in source:
                raise ConfigError(f"init.weights={where}: has no {collection} {path}")
            value = np.asarray(source[path], np.float32)
            if value.shape != leaf.shape:
                raise ConfigError(
                    f"init.weights={where}: {collection} {path} is {value.shape}, the network "
                    f"wants {leaf.shape}"
                )
            flat[path] = value
        out[collection] = traverse_util.unflatten_dict(flat, sep="/")
    return out


def flatten_positions(maps: Sequence[jax.Array]) -> jax.Array:
    """[B, gh, gw, C] per view -> [B, P, C]."""
    return jnp.concatenate([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps], axis=1)
