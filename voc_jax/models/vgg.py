"""VGG-16 (configuration D, no BatchNorm), torchvision's layout.

Our names are the paper's: ``conv1_1`` .. ``conv5_3``, ``fc6``, ``fc7`` and the ImageNet
classifier ``fc8`` (torchvision: ``features.0`` .. ``features.28``, ``classifier.0/3/6``).
Dropout follows the ReLUs of fc6 and fc7, as in torchvision; the 512x7x7 map is flattened in
(H, W, C) order (the converter permutes fc6's rows), and torchvision's adaptive average pool
to 7x7 makes any input of at least 32 pixels a side work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from voc_jax.models import common
from voc_jax.models.backbone import Backbone, TorchvisionWeights, width_from
from voc_jax.models.common import Dtype, Options, adaptive_avg_pool, conv, dense_relu, scaled

# (stage, number of 3x3 convolutions, channels); a 2x2 max-pool ends every stage.
STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
FC_WIDTH = 4096
POOLED_SIZE = 7


def _torch_names() -> dict[str, str]:
    names, index = {}, 0
    for stage, convs, _ in STAGES:
        for k in range(1, convs + 1):
            names[f"conv{stage}_{k}"] = f"features.{index}"
            index += 2  # conv, ReLU
        index += 1  # the stage's max-pool
    return names | {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}


TORCH_NAMES = _torch_names()
CONV_NAMES = tuple(name for name in TORCH_NAMES if name.startswith("conv"))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """torch's MaxPool2d(2, 2): odd rows and columns dropped, then the maximum of each 2x2
    block, as a reshape (its gradient is element-wise work, not select_and_scatter)."""
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def to_pool5(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """conv1_1..conv5_3 and the last max-pool: the convolutional trunk's map (stride 32)."""
    del train  # no dropout or BatchNorm below fc6
    x = x.astype(o.dtype)
    for stage, convs, channels in STAGES:
        for k in range(1, convs + 1):
            layer = conv(scaled(channels, o.width), 3, 1, 1, dtype=o.dtype, name=f"conv{stage}_{k}")
            x = nn.relu(layer(x))
        x = max_pool_2x2(x)
    return x


def to_fc6(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """conv1_1..fc6 (after its ReLU, before its dropout): the feature cache's prefix."""
    x = adaptive_avg_pool(to_pool5(x, o, train), POOLED_SIZE)
    x = x.reshape(x.shape[0], -1)
    return dense_relu(x, scaled(FC_WIDTH, o.width), dtype=o.dtype, name="fc6")


def fc6_to_fc7(x: jax.Array, o: Options, train: bool = False) -> jax.Array:
    """fc6's dropout, fc7 + ReLU, fc7's dropout: the features the transfer head reads."""
    return common.fc6_to_fc7(x, o, train, scaled(FC_WIDTH, o.width))


class VGG16(nn.Module):
    """The ImageNet classifier: conv1_1..fc7 + fc8."""

    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    width: float = 1.0  # channel/hidden width multiplier; 1.0 = VGG-16

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        o = Options(self.width, self.dtype, self.dropout_rate)
        x = fc6_to_fc7(to_fc6(images, o, train), o, train)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
        return x.astype(jnp.float32)


# ----------------------------------------------------------------------------- torch side
# torch is imported inside these functions only: voc_jax never imports it at import time.


def torch_classifier(num_classes: int = 1000, width: float = 1.0, options=None):
    """torchvision's VGG-16 (configuration D); narrower with ``width`` < 1 (same module
    indices, so the same state-dict names)."""
    import torch
    import torchvision

    if width == 1.0:
        return torchvision.models.vgg16(weights=None, num_classes=num_classes)
    cfg: list = []
    for _, convs, channels in STAGES:
        cfg += [scaled(channels, width)] * convs + ["M"]
    model = torchvision.models.VGG(torchvision.models.vgg.make_layers(cfg), num_classes)
    fc = scaled(FC_WIDTH, width)
    model.classifier[0] = torch.nn.Linear(cfg[-2] * POOLED_SIZE * POOLED_SIZE, fc)
    model.classifier[3] = torch.nn.Linear(fc, fc)
    model.classifier[6] = torch.nn.Linear(fc, num_classes)
    return model


def torch_features(model) -> tuple:
    """torchvision's VGG-16 up to fc7's ReLU and dropout (what the transfer head reads)."""
    import torch

    trunk = torch.nn.Sequential(
        model.features, model.avgpool, torch.nn.Flatten(1), *list(model.classifier)[:6]
    )
    return trunk, model.classifier[3].out_features


BACKBONE = Backbone(
    name="vgg16",
    display="VGG-16",
    classifier=VGG16,
    to_prefix=to_fc6,
    from_prefix=fc6_to_fc7,
    layers=CONV_NAMES + ("fc6", "fc7"),
    prefix_layers=CONV_NAMES + ("fc6",),
    classifier_layer="fc8",
    cached="fc6",
    prefix_width=lambda width: scaled(FC_WIDTH, width),
    head_width=lambda width: scaled(FC_WIDTH, width),
    torch_prefix=lambda path: TORCH_NAMES[path],
    infer_width=width_from("features.0.weight", STAGES[0][2]),
    flatten_grid={"fc6": POOLED_SIZE},
    min_patch=32,
    has_batch_norm=False,
    torchvision=TorchvisionWeights("VGG16_Weights", "IMAGENET1K_V1"),
    torch_classifier=torch_classifier,
    torch_features=torch_features,
    cpu_grad_slice=16,  # measured faster on the CPU in 16-patch slices (docs/performance.md)
    quick_width=0.25,
    to_map=to_pool5,
    map_width=lambda width: scaled(STAGES[-1][2], width),
    fc_map=lambda x, o, train: common.fc_on_map(
        x, o, train, POOLED_SIZE, scaled(FC_WIDTH, o.width)
    ),
)
