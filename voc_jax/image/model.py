"""The whole-image network: a backbone as a fully convolutional net up to its last feature
map (stride 32), AlexNet's and VGG-16's fc6 and fc7 optionally as convolutions on it, and a
classifier at every position (a 1x1 convolution, or the patch head's two layers as 1x1
convolutions). It returns position logits [N, H', W', classes]; voc_jax.image.pooling makes
image logits of them.

Parameter names are the backbone's own (``conv1``, ``layer4_2``, ``blocks_15``, ``fc6``...)
plus ``head/fc`` (linear) or ``head/fc_a`` and ``head/fc_b`` (two layers), so converted
weights, optimizer regexes and checkpoints read as they do for the patch family.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from voc_jax import models
from voc_jax.models.common import Dtype, Options

STARTS = ("image", "map")
STOPS = ("map", "positions")


class PositionHead(nn.Module):
    """The classifier at every position: dropout on its input, then Dense ``num_classes``
    (``hidden`` = 0), or Dense ``hidden`` + ReLU + dropout + Dense ``num_classes``; nn.Dense
    acts on the last axis, so each is a 1x1 convolution."""

    num_classes: int = 20
    hidden: int = 0
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x.astype(self.dtype))
        if self.hidden:
            x = nn.Dense(
                self.hidden,
                dtype=self.dtype,
                kernel_init=nn.initializers.normal(0.005),
                bias_init=nn.initializers.constant(0.1),
                name="fc_a",
            )(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
            name = "fc_b"
        else:
            name = "fc"
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
            name=name,
        )(x)


class WholeImageNet(nn.Module):
    """A backbone's map + a classifier at every position; returns [N, H', W', classes]."""

    num_classes: int = 20
    arch: str = "resnet50"
    width: float = 1.0
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.5  # AlexNet/VGG-16 fc6 and fc7 (when fc_as_conv)
    head_dropout: float = 0.0  # on the head's input (and between its two layers)
    head_hidden: int = 0  # 0: a linear classifier; > 0: the patch head's two layers
    fc_as_conv: bool = True  # AlexNet, VGG-16: fc6 and fc7 as convolutions on pool5's map
    bn_update: bool = False
    frozen_backbone: bool = False  # the backbone always in inference mode (the cache's form)
    options: Any = None

    @property
    def backbone(self) -> models.Backbone:
        return models.backbone(self.arch)

    def uses_fc(self) -> bool:
        return self.fc_as_conv and self.backbone.fc_map is not None

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, start: str = "image", stop: str = "positions"
    ) -> jax.Array:
        """``stop="map"``: the backbone's map (what the frozen cache stores); ``start="map"``
        takes such maps and runs the head."""
        if start not in STARTS or stop not in STOPS:
            raise ValueError(f"start must be one of {STARTS}, stop one of {STOPS}: {start}, {stop}")
        b = self.backbone
        if start == "image":
            specific = self.options if self.options is not None else b.options()
            backbone_train = train and not self.frozen_backbone
            o = Options(self.width, self.dtype, self.dropout_rate, self.bn_update, specific)
            x = b.to_map(x, o, backbone_train)
            if self.uses_fc():
                x = b.fc_map(x, o, backbone_train)
            if stop == "map":
                return x
        x = PositionHead(
            self.num_classes, self.head_hidden, self.head_dropout, self.dtype, name="head"
        )(x, train=train)
        return x.astype(jnp.float32)


def map_shape(net: WholeImageNet, side: int | tuple[int, int]) -> tuple[int, int, int] | None:
    """The map's (H', W', C) for a ``side x side`` (or (height, width)) input, None where the
    input is too small for the network (no compile: shapes only; remembered, as validation
    and assembly ask)."""
    hw = (side, side) if isinstance(side, int) else tuple(side)
    return _map_shape(net.arch, net.width, net.uses_fc(), net.options, hw)


@functools.lru_cache(maxsize=256)
def _map_shape(arch: str, width: float, fc: bool, options: Any, hw: tuple[int, int]):
    net = WholeImageNet(arch=arch, width=width, fc_as_conv=fc, options=options)
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    try:
        out = jax.eval_shape(
            lambda: net.init_with_output(jax.random.PRNGKey(0), jnp.zeros(x.shape), stop="map")[0]
        )
    except (TypeError, ValueError):
        return None
    h, w, c = out.shape[1:]
    return (h, w, c) if h >= 1 and w >= 1 else None
