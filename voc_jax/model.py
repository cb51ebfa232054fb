"""AlexNet (single column, no LRN) and the VOC transfer model, in Flax Linen.

Parameter names are the layer names of docs/reference.md so that converted weights, optimizer labels and
checkpoints all speak the same language: ``conv1`` .. ``conv5``, ``fc6``, ``fc7`` form the
backbone, ``fc8`` is the ImageNet classifier and ``head/fc_a``, ``head/fc_b`` the new layers.

Layouts: activations NHWC, conv kernels HWIO, dense kernels (in, out). The 256x6x6 map is
flattened in (H, W, C) order; the converter permutes torch's (C, H, W) fc6 rows once.

Dropout sits after the ReLU of fc6 and fc7, as in the reference (neon). torchvision puts it
before fc6 and fc7 instead; in eval mode (``deterministic=True``) both are the same function.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from voc_jax.pooling import max_pool_3x3_s2

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Layer:
    """One AlexNet layer: our parameter name, torchvision's state-dict prefix, its width and,
    for convolutions, kernel side, stride and padding (None: conv1's, a model field)."""

    name: str
    torch_name: str
    features: int
    kernel: int = 0  # 0 for dense layers
    stride: int = 1
    padding: int | None = 0


# The one definition of AlexNet's layers (model, converter, neon import and tests use it).
CONV_LAYERS: tuple[Layer, ...] = (
    Layer("conv1", "features.0", 64, 11, 4, None),
    Layer("conv2", "features.3", 192, 5, 1, 2),
    Layer("conv3", "features.6", 384, 3, 1, 1),
    Layer("conv4", "features.8", 256, 3, 1, 1),
    Layer("conv5", "features.10", 256, 3, 1, 1),
)
FC_WIDTH = 4096
DENSE_LAYERS: tuple[Layer, ...] = (
    Layer("fc6", "classifier.1", FC_WIDTH),
    Layer("fc7", "classifier.4", FC_WIDTH),
    Layer("fc8", "classifier.6", 1000),  # the ImageNet classifier (its width: num_classes)
)
ALEXNET_LAYERS = CONV_LAYERS + DENSE_LAYERS
POOL_AFTER = frozenset({"conv1", "conv2", "conv5"})
POOLED_SIZE = 6  # torchvision's AdaptiveAvgPool2d((6, 6))
BACKBONE_LAYERS = tuple(layer.name for layer in CONV_LAYERS) + ("fc6", "fc7")
# The frozen prefix: the layers up to fc6's output, which the feature cache stores.
FC6_PREFIX = tuple(layer.name for layer in CONV_LAYERS) + ("fc6",)


def scaled(features: int, width: float) -> int:
    """A layer's width under the ``width`` multiplier (1.0: the real AlexNet)."""
    return max(1, round(features * width))


# He initialisation for training from scratch; pretrained runs overwrite it.
_backbone_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] averaging weights with torchvision's bins: [floor(i*L/o), ceil((i+1)*L/o))."""
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, out_size: int = POOLED_SIZE) -> jax.Array:
    """AdaptiveAvgPool2d for NHWC input; the identity when the map already has that size."""
    _, height, width, _ = x.shape
    if height == out_size and width == out_size:
        return x
    rows = jnp.asarray(adaptive_pool_matrix(height, out_size), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(width, out_size), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols)


def _to_fc6(x: jax.Array, *, conv1_padding: int, dtype: Dtype, width: float) -> jax.Array:
    """conv1..fc6 (after its ReLU, before its dropout): what a frozen backbone always computes
    the same way, and what the feature cache stores."""
    x = x.astype(dtype)
    for layer in CONV_LAYERS:
        pad = conv1_padding if layer.padding is None else layer.padding
        x = nn.Conv(
            scaled(layer.features, width),
            (layer.kernel, layer.kernel),
            strides=(layer.stride, layer.stride),
            padding=((pad, pad), (pad, pad)),
            dtype=dtype,
            kernel_init=_backbone_kernel_init,
            name=layer.name,
        )(x)
        x = nn.relu(x)
        if layer.name in POOL_AFTER:
            x = max_pool_3x3_s2(x)  # nn.max_pool's values, a cheaper gradient
    x = adaptive_avg_pool(x)
    x = x.reshape(x.shape[0], -1)
    return _dense_relu(x, DENSE_LAYERS[0], dtype=dtype, width=width)


def _dense_relu(x: jax.Array, layer: Layer, *, dtype: Dtype, width: float) -> jax.Array:
    x = nn.Dense(
        scaled(layer.features, width),
        dtype=dtype,
        kernel_init=_backbone_kernel_init,
        name=layer.name,
    )(x.astype(dtype))
    return nn.relu(x)


def _fc6_to_fc7(
    x: jax.Array, *, dropout_rate: float, dtype: Dtype, deterministic: bool, width: float
) -> jax.Array:
    """fc6's dropout, fc7 + ReLU, fc7's dropout (named, so that their random masks are the
    same whether the network starts from pixels or from cached fc6 activations)."""
    x = nn.Dropout(dropout_rate, deterministic=deterministic, name="fc6_dropout")(x)
    x = _dense_relu(x, DENSE_LAYERS[1], dtype=dtype, width=width)
    return nn.Dropout(dropout_rate, deterministic=deterministic, name="fc7_dropout")(x)


def _backbone(
    x: jax.Array,
    *,
    conv1_padding: int,
    dropout_rate: float,
    dtype: Dtype,
    deterministic: bool,
    width: float = 1.0,
) -> jax.Array:
    """conv1..fc7; called inside a compact method so the layers belong to the caller.
    ``width`` multiplies every channel and hidden width (tests use a narrow network)."""
    x = _to_fc6(x, conv1_padding=conv1_padding, dtype=dtype, width=width)
    return _fc6_to_fc7(
        x, dropout_rate=dropout_rate, dtype=dtype, deterministic=deterministic, width=width
    )


class AlexNet(nn.Module):
    """The ImageNet classifier: backbone + fc8. Used to check converted weights end to end."""

    num_classes: int = 1000
    conv1_padding: int = 2  # 2 for torchvision weights, 3 for neon weights
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    width: float = 1.0  # channel/hidden width multiplier; 1.0 = AlexNet

    @nn.compact
    def __call__(
        self, images: jax.Array, *, deterministic: bool = True, features_only: bool = False
    ) -> jax.Array:
        """Logits; with ``features_only`` the fc7 activations (after ReLU and dropout)."""
        x = _backbone(
            images,
            conv1_padding=self.conv1_padding,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            deterministic=deterministic,
            width=self.width,
        )
        if features_only:
            return x.astype(jnp.float32)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
        return x.astype(jnp.float32)


class TransferHead(nn.Module):
    """The new layers of docs/reference.md: Dense 4096 + ReLU + dropout + Dense num_classes."""

    num_classes: int = 21
    hidden: int = FC_WIDTH
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = nn.Dense(
            self.hidden,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.005),
            bias_init=nn.initializers.constant(0.1),
            name="fc_a",
        )(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
            name="fc_b",
        )(x)


class TransferNet(nn.Module):
    """AlexNet backbone + the transfer head; returns logits (background at index 0)."""

    num_classes: int = 21
    conv1_padding: int = 2
    dropout_rate: float = 0.5
    head_hidden: int = FC_WIDTH
    dtype: Dtype = jnp.float32
    width: float = 1.0  # channel/hidden width multiplier of the backbone; 1.0 = AlexNet

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool = True,
        start: str = "image",
        stop: str = "logits",
    ) -> jax.Array:
        """Logits of images. ``stop="fc6"`` returns the fc6 activations (after ReLU, before
        dropout) instead; ``start="fc6"`` takes such activations as input and runs the rest
        (dropout, fc7, head): the two halves compose to the whole network."""
        if start not in ("image", "fc6") or stop not in ("fc6", "logits"):
            raise ValueError(f"start must be image or fc6, stop fc6 or logits: {start}, {stop}")
        if start == "image":
            x = _to_fc6(x, conv1_padding=self.conv1_padding, dtype=self.dtype, width=self.width)
            if stop == "fc6":
                return x
        x = _fc6_to_fc7(
            x,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            deterministic=deterministic,
            width=self.width,
        )
        x = TransferHead(
            self.num_classes, self.head_hidden, self.dropout_rate, self.dtype, name="head"
        )(x, deterministic=deterministic)
        return x.astype(jnp.float32)
