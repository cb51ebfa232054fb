"""The torch side of the parity checks and benchmarks, generic over the backbones: any
registered architecture's torch reference classifier (``classifier``: each backbone builds its
own, voc_jax.models.<arch>), BatchNorm statistics that are not the defaults, any backbone with
the reference's head (``BackboneTransfer``), and AlexNet's transfer network in the neon
reference's layout (``TransferNet``: the neon importer verifies the reference's trained VOC
model against it). torch is imported here, never in voc_jax at import time.

``TransferNet`` mirrors voc_jax.models.transfer.TransferNet on AlexNet: dropout after the ReLUs
of fc6 and fc7 and of the head's first layer (identity in eval mode). Its state dict uses the
converter's torch names: ``features.*``, ``classifier.1`` (fc6), ``classifier.4`` (fc7),
``head.fc_a``, ``head.fc_b``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from voc_jax import models
from voc_jax.models import alexnet as alexnet_layout
from voc_jax.models.transfer import HEAD_HIDDEN

FC6, FC7 = alexnet_layout.DENSE_LAYERS[0].torch_name, alexnet_layout.DENSE_LAYERS[1].torch_name
POOLED_SIZE = alexnet_layout.POOLED_SIZE


def classifier(arch: str, num_classes: int = 1000, width: float = 1.0, options: Any = None):
    """The torch reference ImageNet classifier of ``arch`` (randomly initialised), in the
    layout the converter reads."""
    b = models.backbone(arch)
    if b.torch_classifier is None:
        raise ValueError(f"{b.display} has no torch reference model")
    return b.torch_classifier(num_classes, width, options)


def alexnet(num_classes: int = 1000, conv1_padding: int = 2, width: float = 1.0):
    """torchvision's AlexNet (narrower with ``width``; voc_jax.models.alexnet)."""
    return alexnet_layout.torch_classifier(
        num_classes, width, alexnet_layout.AlexNetOptions(conv1_padding)
    )


def randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-default BatchNorm statistics and affine parameters (a fresh model's are 0/1, which
    would hide a swapped mean and variance or scale and bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                m.num_batches_tracked.fill_(1000)
    return model


class BackboneTransfer(torch.nn.Module):
    """Any backbone's torch reference + the reference's head, as
    voc_jax.models.transfer.TransferNet builds them: the backbone up to what the head reads
    (``Backbone.torch_features``: VGG-16 up to fc7, ResNet-50 up to its pooled features);
    BatchNorm in inference mode even when training (the default, ``model.bn_update=False``)."""

    def __init__(self, arch: str, num_classes: int = 21, hidden: int = HEAD_HIDDEN, width=1.0):
        super().__init__()
        nn = torch.nn
        self.backbone, features = models.backbone(arch).torch_features(
            classifier(arch, 1000, width)
        )
        self.head = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():  # the pretrained statistics, also in training
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TransferNet(torch.nn.Module):
    """AlexNet backbone + the transfer head; ``forward`` returns logits."""

    def __init__(
        self,
        num_classes: int = 21,
        hidden: int = HEAD_HIDDEN,
        conv1_padding: int = 2,
        dropout: float = 0.5,
        backbone: Any = None,
        width: float = 1.0,
    ):
        super().__init__()
        base = backbone if backbone is not None else alexnet(1000, conv1_padding, width)
        nn = torch.nn
        self.features, self.avgpool = base.features, base.avgpool
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("0", nn.Dropout(0.0)),  # keeps torchvision's indices: 1 fc6, 4 fc7
                    ("1", base.classifier[1]),
                    ("2", nn.ReLU(inplace=True)),
                    ("3", nn.Dropout(dropout)),
                    ("4", base.classifier[4]),
                    ("5", nn.ReLU(inplace=True)),
                    ("6", nn.Dropout(dropout)),
                ]
            )
        )
        self.head = nn.ModuleDict(
            {
                "fc_a": nn.Linear(base.classifier[4].out_features, hidden),
                "fc_b": nn.Linear(hidden, num_classes),
            }
        )
        self.head_dropout = nn.Dropout(dropout)

    def backbone_modules(self) -> list[torch.nn.Module]:
        """What a frozen-backbone run does not train."""
        return [self.features, self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        x = self.classifier(x)
        x = self.head_dropout(torch.relu(self.head["fc_a"](x)))
        return self.head["fc_b"](x)


def transfer_net_from_state(
    state: Mapping[str, np.ndarray], *, num_classes: int, hidden: int, conv1_padding: int
) -> TransferNet:
    """A TransferNet holding a converter-layout transfer state dict (eval mode)."""
    model = TransferNet(num_classes, hidden, conv1_padding)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model.eval()


def alexnet_from_state(state: Mapping[str, np.ndarray], *, num_classes: int, conv1_padding: int):
    model = alexnet(num_classes, conv1_padding)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model.eval()


__all__ = [
    "BackboneTransfer",
    "FC6",
    "FC7",
    "POOLED_SIZE",
    "TransferNet",
    "alexnet",
    "alexnet_from_state",
    "classifier",
    "randomize_batch_norm",
]


class _LiteMap(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x)


def torch_map(arch: str, width: float = 1.0, model: torch.nn.Module | None = None):
    """The torch reference up to the last feature map (stride 32, NCHW): what the whole-image
    family's network reads (voc_jax.image.model; ResNet-50's layer4, Lite0's head convolution,
    AlexNet's and VGG-16's pool5), sharing the layers of ``model`` (default: a fresh
    classifier)."""
    model = model if model is not None else classifier(arch, 1000, width)
    if arch.startswith("resnet"):
        return torch.nn.Sequential(OrderedDict(
            (name, getattr(model, name))
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        ))  # fmt: skip
    if arch == "efficientnet_lite0":
        return _LiteMap(model)
    return model.features


class WholeImage(torch.nn.Module):
    """The whole-image family in torch, for the benchmarks: the map, a 1x1 convolution per
    class, average pooling; BatchNorm in inference mode also when training (the default)."""

    def __init__(self, arch: str, width: float = 1.0, num_classes: int = 20):
        super().__init__()
        self.backbone = torch_map(arch, width)
        channels = models.backbone(arch).map_width(width)
        self.head = torch.nn.Conv2d(channels, num_classes, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: torch.Tensor, *, maps: bool = False) -> torch.Tensor:
        """Pooled logits of images, or of already computed maps (``maps``)."""
        features = x if maps else self.backbone(x)
        return self.head(features).mean(dim=(2, 3))
