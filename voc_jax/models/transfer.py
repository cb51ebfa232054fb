"""The VOC transfer model: a backbone (voc_jax.models) and the reference's new head.

``TransferNet(arch=...)`` runs the backbone up to the features its transfer head reads
(AlexNet and VGG-16: fc7 after ReLU and dropout; ResNet-50: the 2048 pooled features), then
the head of docs/reference.md: Dense ``head_hidden`` + ReLU + dropout + Dense ``num_classes``.
Its parameters are the backbone's own names plus ``head/fc_a`` and ``head/fc_b``; a network
with BatchNorm also has ``batch_stats``.

The network splits at the backbone's frozen prefix (``stop="prefix"`` / ``start="prefix"``):
the activations there are what the feature cache stores (AlexNet, VGG-16: fc6 after its ReLU;
ResNet-50: the pooled features), and the two halves compose to the whole network.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from voc_jax import models
from voc_jax.models.common import Dtype, Options

STARTS = ("image", "prefix")
STOPS = ("prefix", "features", "logits")
HEAD_HIDDEN = 4096  # the reference's new Dense layer


class TransferHead(nn.Module):
    """The new layers of docs/reference.md: Dense 4096 + ReLU + dropout + Dense num_classes."""

    num_classes: int = 21
    hidden: int = HEAD_HIDDEN
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = nn.Dense(
            self.hidden,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.005),
            bias_init=nn.initializers.constant(0.1),
            name="fc_a",
        )(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
            name="fc_b",
        )(x)


class TransferNet(nn.Module):
    """A backbone + the transfer head; returns logits (background at index 0)."""

    num_classes: int = 21
    dropout_rate: float = 0.5
    head_hidden: int = HEAD_HIDDEN
    dtype: Dtype = jnp.float32
    width: float = 1.0  # channel/hidden width multiplier of the backbone; 1.0 = the real one
    arch: str = "alexnet"  # voc_jax.models.ARCHITECTURES
    bn_update: bool = False  # BatchNorm uses and updates batch statistics when training
    options: Any = None  # the backbone's own options (Backbone.options); None: its defaults

    @property
    def backbone(self) -> models.Backbone:
        return models.backbone(self.arch)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        start: str = "image",
        stop: str = "logits",
    ) -> jax.Array:
        """Logits of images. ``stop="prefix"`` returns the frozen prefix's activations (what
        the feature cache stores) instead, ``stop="features"`` what the head reads (the
        linear probe's features: AlexNet's fc7, ResNet-50's pooled features); ``start=
        "prefix"`` takes prefix activations as input and runs the rest (the backbone's
        remaining layers, the head)."""
        if start not in STARTS or stop not in STOPS:
            raise ValueError(f"start must be one of {STARTS}, stop one of {STOPS}: {start}, {stop}")
        b = self.backbone
        specific = self.options if self.options is not None else b.options()
        o = Options(self.width, self.dtype, self.dropout_rate, self.bn_update, specific)
        if start == "image":
            x = b.to_prefix(x, o, train)
            if stop == "prefix":
                return x
        x = b.from_prefix(x, o, train)
        if stop == "features":
            return x.astype(jnp.float32)
        x = TransferHead(
            self.num_classes, self.head_hidden, self.dropout_rate, self.dtype, name="head"
        )(x, train=train)
        return x.astype(jnp.float32)
