"""AlexNet (single column, no LRN), torchvision's layout.

Parameter names are the layer names of docs/reference.md so that converted weights, optimizer
labels and checkpoints all speak the same language: ``conv1`` .. ``conv5``, ``fc6``, ``fc7``
form the backbone, ``fc8`` is the ImageNet classifier.

Layouts: activations NHWC, conv kernels HWIO, dense kernels (in, out). The 256x6x6 map is
flattened in (H, W, C) order; the converter permutes torch's (C, H, W) fc6 rows once.

Dropout sits after the ReLU of fc6 and fc7, as in the reference (neon). torchvision puts it
before fc6 and fc7 instead; in eval mode (``train=False``) both are the same function.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from voc_jax.models import common
from voc_jax.models.backbone import Backbone, TorchvisionWeights, width_from
from voc_jax.models.common import (
    Dtype,
    Options,
    adaptive_avg_pool,
    conv,
    dense_relu,
    is_int_in,
    option,
    scaled,
)
from voc_jax.pooling import max_pool_3x3_s2


@dataclasses.dataclass(frozen=True)
class Layer:
    """One AlexNet layer: our parameter name, torchvision's state-dict prefix, its width and,
    for convolutions, kernel side, stride and padding (None: conv1's, a model option)."""

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
_TORCH_NAMES = {layer.name: layer.torch_name for layer in ALEXNET_LAYERS}
MAX_CONV1_PADDING = 5  # torchvision uses 2, neon 3; a kernel of 11 makes more meaningless


@dataclasses.dataclass(frozen=True)
class AlexNetOptions:
    """AlexNet's own option: conv1's padding, 2 in torchvision, 3 in neon. Converted weights
    record theirs (``architecture.conv1_padding``); ``model.options.conv1_padding`` is used
    when training from scratch."""

    conv1_padding: int = option(
        2,
        is_int_in(0, MAX_CONV1_PADDING),
        f"an integer in [0, {MAX_CONV1_PADDING}] (torchvision pads 2, neon 3)",
    )


def to_pool5(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """conv1..conv5 and the last max-pool: the convolutional trunk's map (stride 32)."""
    del train  # no dropout or BatchNorm below fc6
    conv1_padding = (o.specific or AlexNetOptions()).conv1_padding
    x = x.astype(o.dtype)
    for layer in CONV_LAYERS:
        pad = conv1_padding if layer.padding is None else layer.padding
        x = conv(
            scaled(layer.features, o.width),
            layer.kernel,
            layer.stride,
            pad,
            dtype=o.dtype,
            name=layer.name,
        )(x)
        x = nn.relu(x)
        if layer.name in POOL_AFTER:
            x = max_pool_3x3_s2(x)  # nn.max_pool's values, a cheaper gradient
    return x


def to_fc6(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """conv1..fc6 (after its ReLU, before its dropout): what a frozen backbone always computes
    the same way, and what the feature cache stores."""
    x = adaptive_avg_pool(to_pool5(x, o, train), POOLED_SIZE)
    x = x.reshape(x.shape[0], -1)
    return dense_relu(x, scaled(FC_WIDTH, o.width), dtype=o.dtype, name="fc6")


def fc6_to_fc7(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """fc6's dropout, fc7 + ReLU, fc7's dropout: the features the transfer head reads."""
    return common.fc6_to_fc7(x, o, train, scaled(FC_WIDTH, o.width))


class AlexNet(nn.Module):
    """The ImageNet classifier: backbone + fc8."""

    num_classes: int = 1000
    conv1_padding: int = 2  # 2 for torchvision weights, 3 for neon weights
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    width: float = 1.0  # channel/hidden width multiplier; 1.0 = AlexNet

    @nn.compact
    def __call__(
        self, images: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Logits; with ``features_only`` the fc7 activations (after ReLU and dropout)."""
        o = Options(
            self.width, self.dtype, self.dropout_rate, specific=AlexNetOptions(self.conv1_padding)
        )
        x = fc6_to_fc7(to_fc6(images, o, train), o, train)
        if features_only:
            return x.astype(jnp.float32)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
        return x.astype(jnp.float32)


# ----------------------------------------------------------------------------- torch side
# torch is imported inside these functions only: voc_jax never imports it at import time.


def torch_classifier(num_classes: int = 1000, width: float = 1.0, options=None):
    """torchvision's AlexNet; narrower with ``width`` < 1 (every layer of the table above
    scaled, same module indices and state-dict names), so that the tiny plumbing runs (quick
    demo, dry GPU check) can use a small one."""
    import torch
    import torchvision

    conv1_padding = (options or AlexNetOptions()).conv1_padding
    model = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    if width != 1.0:
        channels = 3
        for layer in CONV_LAYERS:
            index = int(layer.torch_name.rsplit(".", 1)[1])
            out = scaled(layer.features, width)
            model.features[index] = torch.nn.Conv2d(
                channels, out, layer.kernel, layer.stride, layer.padding or 0
            )
            channels = out
        features = channels * POOLED_SIZE * POOLED_SIZE
        for layer in DENSE_LAYERS:
            index = int(layer.torch_name.rsplit(".", 1)[1])
            out = num_classes if layer.name == "fc8" else scaled(layer.features, width)
            model.classifier[index] = torch.nn.Linear(features, out)
            features = out
    model.features[0].padding = (conv1_padding, conv1_padding)
    return model


def torch_features(model) -> tuple:
    """torchvision's AlexNet up to fc7's ReLU (what the transfer head reads; its dropouts sit
    before fc6 and fc7, ours after: the same function in eval mode)."""
    import torch

    trunk = torch.nn.Sequential(
        model.features, model.avgpool, torch.nn.Flatten(1), *list(model.classifier)[:6]
    )
    return trunk, model.classifier[4].out_features


BACKBONE = Backbone(
    name="alexnet",
    display="AlexNet",
    classifier=AlexNet,
    options=AlexNetOptions,
    to_prefix=to_fc6,
    from_prefix=fc6_to_fc7,
    layers=BACKBONE_LAYERS,
    prefix_layers=FC6_PREFIX,
    classifier_layer="fc8",
    cached="fc6",
    prefix_width=lambda width: scaled(FC_WIDTH, width),
    head_width=lambda width: scaled(FC_WIDTH, width),
    torch_prefix=lambda path: _TORCH_NAMES[path],
    infer_width=width_from("features.0.weight", CONV_LAYERS[0].features),
    flatten_grid={"fc6": POOLED_SIZE},
    min_patch=63,
    has_batch_norm=False,
    torchvision=TorchvisionWeights("AlexNet_Weights", "IMAGENET1K_V1"),
    torch_classifier=torch_classifier,
    torch_features=torch_features,
    to_map=to_pool5,
    map_width=lambda width: scaled(CONV_LAYERS[-1].features, width),
    fc_map=lambda x, o, train: common.fc_on_map(
        x, o, train, POOLED_SIZE, scaled(FC_WIDTH, o.width)
    ),
)
