"""The bottleneck ResNets, v1.5, torchvision's layout: the stride of a downsampling bottleneck
sits on its 3x3 convolution, every padding is explicit and symmetric, BatchNorm's running
statistics live in the ``batch_stats`` collection.

ResNet-50 (torchvision's ImageNet weights) and ResNet-26, the same network with two blocks a
stage (timm's ``resnet26`` layout, whose state dict has these names: converted with
``--pth``). ResNet-26 compiles in about half ResNet-50's time, so the tests' small whole-image
runs use it; it keeps every kind of block (projection and identity shortcuts in each stage).

Module names follow torchvision's state dict with '.' as '_' between a stage and its block:
``conv1``, ``bn1``, ``layer1_0/conv1`` .. ``layer4_2/bn3``, ``layer1_0/downsample_0`` (the
1x1 projection) and ``downsample_1`` (its BatchNorm), the classifier ``fc``. The transfer head
reads the 2048 globally pooled features, which are also what the feature cache stores.
"""

from __future__ import annotations

import functools
import re
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from voc_jax.models.backbone import Backbone, TorchvisionWeights, width_from
from voc_jax.models.common import Dtype, Options, Pointwise, batch_norm, conv, scaled
from voc_jax.pooling import max_pool_3x3_s2

# (blocks, bottleneck width) of layer1..layer4 at each depth; a block's output is 4x its width.
WIDTHS = (64, 128, 256, 512)
DEPTHS = {
    26: tuple(zip((2, 2, 2, 2), WIDTHS, strict=True)),
    50: tuple(zip((3, 4, 6, 3), WIDTHS, strict=True)),
}
STAGES = DEPTHS[50]  # ResNet-50's
EXPANSION = 4
STEM = ("conv1", "bn1")
POOLED_FEATURES = WIDTHS[-1] * EXPANSION  # 2048


def block_names(stages: tuple[tuple[int, int], ...]) -> tuple[str, ...]:
    """'layer1_0' .. 'layer4_2' (ResNet-50): the top-level names of the blocks."""
    return tuple(
        f"layer{stage}_{block}"
        for stage, (count, _) in enumerate(stages, start=1)
        for block in range(count)
    )


BLOCKS = block_names(STAGES)


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


def to_map(x: jax.Array, o: Options, train: bool = False, stages: tuple = STAGES) -> jax.Array:
    """The stem and the four stages: layer4's map (stride 32), [N, H/32, W/32, 2048 * width]."""
    x = x.astype(o.dtype)
    x = conv(scaled(64, o.width), 7, 2, 3, dtype=o.dtype, bias=False, name="conv1")(x)
    x = nn.relu(batch_norm(o, train, "bn1")(x))
    x = max_pool_3x3_s2_p1(x)
    for stage, (count, width) in enumerate(stages, start=1):
        for block in range(count):
            stride = 2 if stage > 1 and block == 0 else 1
            x = Bottleneck(scaled(width, o.width), stride, o, train, name=f"layer{stage}_{block}")(
                x
            )
    return x


def to_pool(x: jax.Array, o: Options, train: bool = False, stages: tuple = STAGES) -> jax.Array:
    """The map globally average-pooled: [N, 2048 * width] features, what the transfer head
    reads and the feature cache stores."""
    return to_map(x, o, train, stages).mean(axis=(1, 2))


def identity(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    return x


class ResNet50(nn.Module):
    """The ImageNet classifier: the pooled features + ``fc``."""

    stages: ClassVar[tuple] = STAGES  # a subclass per depth (not a field: not a constructor arg)
    num_classes: int = 1000
    dtype: Dtype = jnp.float32  # compute dtype; params and statistics stay float32
    width: float = 1.0  # channel width multiplier; 1.0 = ResNet-50
    bn_update: bool = False  # training mode uses and updates batch statistics

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        o = Options(self.width, self.dtype, bn_update=self.bn_update)
        x = to_pool(images, o, train, self.stages)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


class ResNet26(ResNet50):
    """ResNet-26: two bottlenecks a stage."""

    stages: ClassVar[tuple] = DEPTHS[26]


def torch_prefix(path: str) -> str:
    """'layer1_0/downsample_1' -> 'layer1.0.downsample.1'."""
    path = re.sub(r"^(layer\d)_(\d+)", r"\1.\2", path)
    return path.replace("downsample_", "downsample.").replace("/", ".")


# ----------------------------------------------------------------------------- torch side
# torch is imported inside these functions only: voc_jax never imports it at import time.


def torch_classifier(
    num_classes: int = 1000, width: float = 1.0, options=None, stages: tuple = STAGES
):
    """torchvision's bottleneck ResNet (v1.5: ``resnet50`` is ResNet(Bottleneck, [3, 4, 6,
    3])); narrower with ``width`` < 1: every width multiplied, built from torchvision's own
    Bottleneck (its constructor fixes 64..512)."""
    import torch
    from torchvision.models.resnet import Bottleneck as TorchBottleneck
    from torchvision.models.resnet import ResNet

    counts = [count for count, _ in stages]
    model = ResNet(TorchBottleneck, counts, num_classes=num_classes)
    if width == 1.0:
        return model
    nn = torch.nn
    model.inplanes = scaled(64, width)
    model.conv1 = nn.Conv2d(3, model.inplanes, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(model.inplanes)
    for i, (count, planes) in enumerate(stages):
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


def _backbone(depth: int, classifier: type[nn.Module], torchvision: TorchvisionWeights | None):
    stages = DEPTHS[depth]
    blocks = block_names(stages)
    return Backbone(
        name=f"resnet{depth}",
        display=f"ResNet-{depth}",
        classifier=classifier,
        to_prefix=functools.partial(to_pool, stages=stages),
        from_prefix=identity,
        layers=STEM + blocks,
        prefix_layers=STEM + blocks,
        classifier_layer="fc",
        cached="pool",
        prefix_width=lambda width: scaled(WIDTHS[-1], width) * EXPANSION,
        head_width=lambda width: scaled(WIDTHS[-1], width) * EXPANSION,
        torch_prefix=torch_prefix,
        infer_width=width_from("conv1.weight", 64),
        min_patch=32,
        has_batch_norm=True,
        torchvision=torchvision,
        torch_classifier=functools.partial(torch_classifier, stages=stages),
        torch_features=torch_features,
        cpu_grad_slice=16,  # 1.44x faster on the CPU in 16-patch slices (docs/performance.md)
        quick_width=0.25,
        to_map=functools.partial(to_map, stages=stages),
        map_width=lambda width: scaled(WIDTHS[-1], width) * EXPANSION,
    )


BACKBONE = _backbone(50, ResNet50, TorchvisionWeights("ResNet50_Weights", "IMAGENET1K_V2"))
# No torchvision weights: timm's resnet26 state dict converts with --pth.
BACKBONE_26 = _backbone(26, ResNet26, None)
