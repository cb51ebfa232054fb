"""The config, read once: typed, frozen settings for every part of a run.

``read(config)`` is the only place that walks a ``ConfigDict`` field by field (besides the
checks in ``validation`` that run before it and ``distributed.initialize``, which must run
before any device exists). Everything below ``voc_jax.experiment`` takes these dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from voc_jax import config_compat, models
from voc_jax.data.splits import DataSettings
from voc_jax.data.synthetic import SyntheticConfig
from voc_jax.preprocessing import Preprocessing

OPTIMIZERS = ("sgd", "adamw")  # optim.optimizer (voc_jax.optim)
SCHEDULES = ("step", "cosine")  # optim.schedule


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    seed: int
    num_epochs: int
    batch_size: int  # patches per SGD update and per forward chunk
    images_per_step: int  # images per jitted call (global)
    log_every_steps: int
    grad_chunks: int = 1  # slices an update's gradient is computed in; 0 = auto


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    num_classes: int
    head_hidden: int
    dropout_rate: float
    dtype: str  # "float32" | "bfloat16"
    width: float
    patch_size: int  # the network's input side
    arch: str = "alexnet"  # voc_jax.models.ARCHITECTURES
    bn_update: bool = False  # BatchNorm: batch statistics in training, updated and saved
    # The backbone's own options (Backbone.options: AlexNet's conv1_padding), from
    # model.options; from scratch only: converted weights carry their own. None: defaults.
    options: Any = None


@dataclasses.dataclass(frozen=True)
class InitSettings:
    weights: str  # converter output directory; "" = from scratch
    keep_head: bool
    scratch_preprocessing: Preprocessing  # the normalisation when training from scratch
    head_from: str = ""  # a training workdir whose newest head starts a fresh run; "" = none


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    optimizer: str
    trainable: tuple[str, ...]
    learning_rate: float
    schedule: str
    lr_changes: tuple[tuple[int, float], ...]
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    no_decay: tuple[str, ...] = ()
    scale_lr: bool = False

    def scaled(self, factor: float) -> OptimSettings:
        """Every learning rate multiplied by ``factor`` (the linear scaling rule)."""
        return dataclasses.replace(
            self,
            learning_rate=self.learning_rate * factor,
            lr_changes=tuple((epoch, rate * factor) for epoch, rate in self.lr_changes),
        )


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    every_steps: int
    max_to_keep: int
    allow_batch_change: bool


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    exponent: float
    protocols: tuple[str, ...]
    every_epochs: int
    images_per_step: int
    plots: bool


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    enabled: bool
    dtype: str  # rows on disk: float16 | bfloat16 | float32
    dir: str  # "" = WORKDIR/feature_cache


@dataclasses.dataclass(frozen=True)
class Settings:
    train: TrainSettings
    data: DataSettings
    model: ModelSettings
    init: InitSettings
    optim: OptimSettings
    checkpoint: CheckpointSettings
    eval: EvalSettings
    cache: CacheSettings


def _fields(cls: type, block: ml_collections.ConfigDict, **extra: Any) -> Any:
    names = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    return cls(**{name: _plain(block[name]) for name in names if name in block}, **extra)


def _plain(value: Any) -> Any:
    """Lists (as a config file or JSON gives them) -> tuples, recursively: hashable, frozen."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def optim_settings(block: ml_collections.ConfigDict) -> OptimSettings:
    return _fields(OptimSettings, block)


def read(config: ml_collections.ConfigDict) -> Settings:
    """Every field a run uses, typed (the config has passed ``validation.validate``)."""
    d, m, i = config.data, config.model, config.init
    return Settings(
        train=_fields(TrainSettings, config),
        data=_fields(
            DataSettings,
            d,
            synthetic_generate=bool(d.synthetic.generate),
            synthetic=synthetic_config(config),
        ),
        model=_fields(
            ModelSettings,
            m,
            patch_size=config.patches.size,
            options=models.options_for(m.arch, config_compat.model_options(m))[0],
        ),
        init=InitSettings(
            weights=str(i.weights or ""),
            keep_head=bool(i.keep_head),
            head_from=str(i.get("head_from", "") or ""),
            scratch_preprocessing=Preprocessing(
                channel_order=i.channel_order, scale=i.scale, mean=tuple(i.mean), std=tuple(i.std)
            ),
        ),
        optim=optim_settings(config.optim),
        checkpoint=_fields(CheckpointSettings, config.checkpoint),
        eval=_fields(EvalSettings, config.eval),
        cache=_fields(CacheSettings, config.feature_cache),
    )


def synthetic_config(config: ml_collections.ConfigDict) -> SyntheticConfig:
    """The generator's settings from ``config.data.synthetic``."""
    s = config.data.synthetic
    return SyntheticConfig(
        num_trainval=s.num_trainval,
        num_test=s.num_test,
        seed=s.seed,
        min_side=s.min_side,
        max_side=s.max_side,
        classes=tuple(s.get("classes", ()) or ()),
    )
