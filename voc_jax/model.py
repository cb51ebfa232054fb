"""AlexNet (single column, no LRN) and the VOC transfer model, in Flax Linen.

Parameter names are the layer names of seed.md so that converted weights, optimizer labels and
checkpoints all speak the same language: ``conv1`` .. ``conv5``, ``fc6``, ``fc7`` form the
backbone, ``fc8`` is the ImageNet classifier and ``head/fc_a``, ``head/fc_b`` the new layers.

Layouts: activations NHWC, conv kernels HWIO, dense kernels (in, out). The 256x6x6 map is
flattened in (H, W, C) order; the converter permutes torch's (C, H, W) fc6 rows once.

Dropout sits after the ReLU of fc6 and fc7, as in the reference (neon). torchvision puts it
before fc6 and fc7 instead; in eval mode (``deterministic=True``) both are the same function.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any

# (name, features, kernel, stride, padding) of the five convolutions; conv1 padding is a field.
CONV_LAYERS: tuple[tuple[str, int, int, int, int | None], ...] = (
    ("conv1", 64, 11, 4, None),
    ("conv2", 192, 5, 1, 2),
    ("conv3", 384, 3, 1, 1),
    ("conv4", 256, 3, 1, 1),
    ("conv5", 256, 3, 1, 1),
)
POOL_AFTER = frozenset({"conv1", "conv2", "conv5"})
POOLED_SIZE = 6  # torchvision's AdaptiveAvgPool2d((6, 6))
FC_WIDTH = 4096
BACKBONE_LAYERS = tuple(name for name, *_ in CONV_LAYERS) + ("fc6", "fc7")

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


def _backbone(
    x: jax.Array,
    *,
    conv1_padding: int,
    dropout_rate: float,
    dtype: Dtype,
    deterministic: bool,
) -> jax.Array:
    """conv1..fc7; called inside a compact method so the layers belong to the caller."""
    x = x.astype(dtype)
    for name, features, kernel, stride, padding in CONV_LAYERS:
        pad = conv1_padding if padding is None else padding
        x = nn.Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            dtype=dtype,
            kernel_init=_backbone_kernel_init,
            name=name,
        )(x)
        x = nn.relu(x)
        if name in POOL_AFTER:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    x = adaptive_avg_pool(x)
    x = x.reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
        x = nn.Dense(FC_WIDTH, dtype=dtype, kernel_init=_backbone_kernel_init, name=name)(x)
        x = nn.relu(x)
        x = nn.Dropout(dropout_rate, deterministic=deterministic)(x)
    return x


class AlexNet(nn.Module):
    """The ImageNet classifier: backbone + fc8. Used to check converted weights end to end."""

    num_classes: int = 1000
    conv1_padding: int = 2  # 2 for torchvision weights, 3 for neon weights
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32

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
        )
        if features_only:
            return x.astype(jnp.float32)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
        return x.astype(jnp.float32)


class TransferHead(nn.Module):
    """The new layers of seed.md: Dense 4096 + ReLU + dropout + Dense num_classes."""

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

    @nn.compact
    def __call__(self, images: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = _backbone(
            images,
            conv1_padding=self.conv1_padding,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            deterministic=deterministic,
        )
        x = TransferHead(
            self.num_classes, self.head_hidden, self.dropout_rate, self.dtype, name="head"
        )(x, deterministic=deterministic)
        return x.astype(jnp.float32)
