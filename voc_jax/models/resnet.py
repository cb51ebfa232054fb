"""ResNet-50 v1.5, torchvision's layout: the stride of a downsampling bottleneck sits on its
3x3 convolution, every padding is explicit and symmetric, BatchNorm's running statistics live
in the ``batch_stats`` collection.

Module names follow torchvision's state dict with '.' as '_' between a stage and its block:
``conv1``, ``bn1``, ``layer1_0/conv1`` .. ``layer4_2/bn3``, ``layer1_0/downsample_0`` (the
1x1 projection) and ``downsample_1`` (its BatchNorm), the classifier ``fc``. The transfer head
reads the 2048 globally pooled features, which are also what the feature cache stores.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from voc_jax.models.backbone import Backbone, TorchvisionWeights, width_from
from voc_jax.models.common import Dtype, Options, Pointwise, batch_norm, conv, scaled
from voc_jax.pooling import max_pool_3x3_s2

# (blocks, bottleneck width) of layer1..layer4; a block's output is 4x its width.
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))
EXPANSION = 4
STEM = ("conv1", "bn1")
BLOCKS = tuple(
    f"layer{stage}_{block}"
    for stage, (count, _) in enumerate(STAGES, start=1)
    for block in range(count)
)
POOLED_FEATURES = STAGES[-1][1] * EXPANSION  # 2048


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here: v1.5) -> 1x1 with BatchNorm after each, plus the shortcut
    (a strided 1x1 projection and BatchNorm where the shape changes)."""

    width: int
    stride: int
    options: Options
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        o, out = self.options, self.width * EXPANSION
        y = Pointwise(self.width, dtype=o.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(o, self.train, "bn1")(y))
        y = conv(self.width, 3, self.stride, 1, dtype=o.dtype, bias=False, name="conv2")(y)
        y = nn.relu(batch_norm(o, self.train, "bn2")(y))
        y = Pointwise(out, dtype=o.dtype, name="conv3")(y)
        y = batch_norm(o, self.train, "bn3")(y)
        if self.stride != 1 or x.shape[-1] != out:
            x = Pointwise(out, self.stride, dtype=o.dtype, name="downsample_0")(x)
            x = batch_norm(o, self.train, "downsample_1")(x)
        return nn.relu(y + x)


def max_pool_3x3_s2_p1(x: jax.Array) -> jax.Array:
    """torch's MaxPool2d(3, 2, padding=1): -inf padding, then the valid 3x3/2 pool (its
    gradient without select_and_scatter, voc_jax.pooling)."""
    pad = jnp.array(-jnp.inf, x.dtype)
    return max_pool_3x3_s2(jax.lax.pad(x, pad, ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0))))


def to_map(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """The stem and the four stages: layer4's map (stride 32), [N, H/32, W/32, 2048 * width]."""
    x = x.astype(o.dtype)
    x = conv(scaled(64, o.width), 7, 2, 3, dtype=o.dtype, bias=False, name="conv1")(x)
    x = nn.relu(batch_norm(o, train, "bn1")(x))
    x = max_pool_3x3_s2_p1(x)
    for stage, (count, width) in enumerate(STAGES, start=1):
        for block in range(count):
            stride = 2 if stage > 1 and block == 0 else 1
            x = Bottleneck(scaled(width, o.width), stride, o, train, name=f"layer{stage}_{block}")(
                x
            )
    return x


def to_pool(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """The map globally average-pooled: [N, 2048 * width] features, what the transfer head
    reads and the feature cache stores."""
    return to_map(x, o, train).mean(axis=(1, 2))


def identity(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    return x


class ResNet50(nn.Module):
    """The ImageNet classifier: the pooled features + ``fc``."""

    num_classes: int = 1000
    dtype: Dtype = jnp.float32  # compute dtype; params and statistics stay float32
    width: float = 1.0  # channel width multiplier; 1.0 = ResNet-50
    bn_update: bool = False  # training mode uses and updates batch statistics

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        o = Options(self.width, self.dtype, bn_update=self.bn_update)
        x = to_pool(images, o, train)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


def torch_prefix(path: str) -> str:
    """'layer1_0/downsample_1' -> 'layer1.0.downsample.1'."""
    path = re.sub(r"^(layer\d)_(\d+)", r"\1.\2", path)
    return path.replace("downsample_", "downsample.").replace("/", ".")


# ----------------------------------------------------------------------------- torch side
# torch is imported inside these functions only: voc_jax never imports it at import time.


def torch_classifier(num_classes: int = 1000, width: float = 1.0, options=None):
    """torchvision's ResNet-50 (v1.5); narrower with ``width`` < 1: every width multiplied,
    built from torchvision's own Bottleneck (its constructor fixes 64..512)."""
    import torch
    import torchvision
    from torchvision.models.resnet import Bottleneck as TorchBottleneck

    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if width == 1.0:
        return model
    nn = torch.nn
    model.inplanes = scaled(64, width)
    model.conv1 = nn.Conv2d(3, model.inplanes, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(model.inplanes)
    for i, (count, planes) in enumerate(STAGES):
        stage = model._make_layer(
            TorchBottleneck, scaled(planes, width), count, stride=min(i, 1) + 1
        )
        setattr(model, f"layer{i + 1}", stage)
    model.fc = nn.Linear(model.inplanes, num_classes)
    return model


def torch_features(model) -> tuple:
    """torchvision's ResNet-50 up to its pooled features (the classifier replaced by the
    identity)."""
    import torch

    features = model.fc.in_features
    model.fc = torch.nn.Identity()
    return model, features


BACKBONE = Backbone(
    name="resnet50",
    display="ResNet-50",
    classifier=ResNet50,
    to_prefix=to_pool,
    from_prefix=identity,
    layers=STEM + BLOCKS,
    prefix_layers=STEM + BLOCKS,
    classifier_layer="fc",
    cached="pool",
    prefix_width=lambda width: scaled(STAGES[-1][1], width) * EXPANSION,
    head_width=lambda width: scaled(STAGES[-1][1], width) * EXPANSION,
    torch_prefix=torch_prefix,
    infer_width=width_from("conv1.weight", 64),
    min_patch=32,
    has_batch_norm=True,
    torchvision=TorchvisionWeights("ResNet50_Weights", "IMAGENET1K_V2"),
    torch_classifier=torch_classifier,
    torch_features=torch_features,
    cpu_grad_slice=16,  # 1.44x faster on the CPU in 16-patch slices (docs/performance.md)
    quick_width=0.25,
    to_map=to_map,
    map_width=lambda width: scaled(STAGES[-1][1], width) * EXPANSION,
)
