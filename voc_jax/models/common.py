"""What every backbone shares: the options a model is built with, the width multiplier, the
adaptive average pool, the He initialiser, and the building blocks of torch's layouts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any

# BatchNorm as torchvision's: eps 1e-5, momentum 0.1 (Flax's momentum weighs the old value).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Options:
    """How a backbone is built. ``width`` multiplies the channel and hidden widths (tests run
    narrow instances); ``bn_update``: BatchNorm uses and updates batch statistics in training
    mode (torch's momentum 0.1) instead of keeping the pretrained ones (the default, see
    docs/converting.md); ``specific``: the backbone's own options (its ``Backbone.options``
    dataclass, e.g. AlexNet's conv1 padding), None for its defaults."""

    width: float = 1.0
    dtype: Dtype = jnp.float32  # compute dtype; params and BatchNorm statistics stay float32
    dropout_rate: float = 0.5
    bn_update: bool = False
    specific: Any = None


def option(default: Any, check: Callable[[Any], bool], want: str) -> Any:
    """A field of a backbone's own options dataclass: its default, the test a value must
    pass and what to say when it does not ("an integer in [0, 5]")."""
    return dataclasses.field(default=default, metadata={"check": check, "want": want})


def is_int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A backbone with no options of its own."""


def scaled(features: int, width: float) -> int:
    """A layer's width under the ``width`` multiplier (1.0: the real network)."""
    return max(1, round(features * width))


# He initialisation for training from scratch; pretrained runs overwrite it.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] averaging weights with torch's bins: [floor(i*L/o), ceil((i+1)*L/o))."""
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
    """AdaptiveAvgPool2d for NHWC input; the identity when the map already has that size."""
    _, height, width, _ = x.shape
    if height == out_size and width == out_size:
        return x
    rows = jnp.asarray(adaptive_pool_matrix(height, out_size), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(width, out_size), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols)


def conv(
    features: int,
    kernel: int,
    stride: int,
    padding: int,
    *,
    dtype: Dtype,
    name: str,
    bias: bool = True,
) -> nn.Conv:
    """A convolution with torch's symmetric, explicit padding (never "SAME": on a strided
    layer XLA would pad asymmetrically)."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=bias,
        dtype=dtype,
        kernel_init=he_normal,
        name=name,
    )


class Pointwise(nn.Module):
    """A 1x1 convolution (stride ``stride``, no padding) computed as a matrix product over the
    channels, with nn.Conv's parameter (``kernel`` [1, 1, in, out], the same initialiser): the
    same function and the same converted weights. Why: as a convolution, XLA's CPU backend
    computes its weight gradient by transposing the NHWC input to channels-first, and fuses
    that transpose with the recomputation of the residual chain feeding it (ResNet-50's
    layer3-4: over a second of a 448-px fine-tune step); as a dot the gradient is a GEMM."""

    features: int
    stride: int = 1
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", he_normal, (1, 1, x.shape[-1], self.features), jnp.float32)
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride]
        x, kernel = x.astype(self.dtype), kernel[0, 0].astype(self.dtype)
        # A 2-D product of the rows: the gradient of a 4-D dot_general transposes the output
        # gradient to [out, N*H*W] (a copy per layer); of a 2-D one it is a transposed GEMM.
        y = (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], self.features)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y


def batch_norm(
    options: Options,
    train: bool,
    name: str,
    *,
    epsilon: float = BN_EPSILON,
    momentum: float = BN_MOMENTUM,
) -> nn.BatchNorm:
    """torch's BatchNorm2d (torchvision's epsilon and momentum unless the weights were
    trained with others): statistics in float32 whatever the compute dtype; batch statistics
    only when training with ``bn_update``."""
    return nn.BatchNorm(
        use_running_average=not (train and options.bn_update),
        momentum=momentum,
        epsilon=epsilon,
        dtype=options.dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def dense_relu(x: jax.Array, features: int, *, dtype: Dtype, name: str) -> jax.Array:
    x = nn.Dense(features, dtype=dtype, kernel_init=he_normal, name=name)(x.astype(dtype))
    return nn.relu(x)


class DenseAsConv(nn.Module):
    """A dense layer that reads a flattened ``grid x grid x C`` map (in (H, W, C) order),
    applied as a ``grid x grid`` VALID convolution over a larger map (OverFeat): the same
    parameters as ``nn.Dense`` (kernel [grid*grid*C, features], bias), so converted weights,
    checkpoints and optimizer labels are shared. On a map of exactly ``grid`` it is the dense
    layer."""

    features: int
    grid: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        shape = (self.grid * self.grid * c, self.features)
        kernel = self.param("kernel", he_normal, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        k = kernel.reshape(self.grid, self.grid, c, self.features).astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + bias.astype(self.dtype)


def fc_on_map(x: jax.Array, o: Options, train: bool, grid: int, width: int) -> jax.Array:
    """AlexNet's and VGG-16's fc6 (a ``grid`` convolution) + ReLU, then fc6_to_fc7 (fc7 is a
    1x1 convolution: nn.Dense acts on the last axis): [N, H', W', fc7 width]."""
    x = nn.relu(DenseAsConv(width, grid, dtype=o.dtype, name="fc6")(x))
    return fc6_to_fc7(x, o, train, width)


def fc6_to_fc7(x: jax.Array, o: Options, train: bool, width: int) -> jax.Array:
    """AlexNet's and VGG-16's fc6 dropout, fc7 + ReLU, fc7 dropout (named, so that their
    random masks are the same whether the network starts from pixels or from cached fc6
    activations)."""
    x = nn.Dropout(o.dropout_rate, deterministic=not train, name="fc6_dropout")(x)
    x = dense_relu(x, width, dtype=o.dtype, name="fc7")
    return nn.Dropout(o.dropout_rate, deterministic=not train, name="fc7_dropout")(x)
