"""The torch side of the parity checks and benchmarks: torchvision's AlexNet, VGG-16 and
ResNet-50 (narrow instances too, from torchvision's own building blocks) and the transfer
network (backbone + the reference's head) as torch modules. The one place they are built;
torch is imported here, never in voc_jax at import time.

The transfer network mirrors voc_jax.model.TransferNet: dropout after the ReLUs of fc6 and fc7
and of the head's first layer (identity in eval mode). Its state dict uses the converter's
torch names: ``features.*``, ``classifier.1`` (fc6), ``classifier.4`` (fc7), ``head.fc_a``,
``head.fc_b``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torchvision

from voc_jax.models import alexnet as alexnet_layout
from voc_jax.models import resnet as resnet_layout
from voc_jax.models import vgg as vgg_layout
from voc_jax.models.common import scaled

DENSE_LAYERS, FC_WIDTH = alexnet_layout.DENSE_LAYERS, alexnet_layout.FC_WIDTH
POOLED_SIZE = alexnet_layout.POOLED_SIZE

FC6, FC7 = DENSE_LAYERS[0].torch_name, DENSE_LAYERS[1].torch_name


def alexnet(
    num_classes: int = 1000, conv1_padding: int = 2, width: float = 1.0
) -> torchvision.models.AlexNet:
    """torchvision's AlexNet; narrower with ``width`` < 1 (every layer of
    voc_jax.models.alexnet's table scaled, same module indices and state-dict names), so that
    the tiny plumbing runs (quick demo, dry GPU check) can use a small one."""
    model = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    if width != 1.0:
        nn, channels = torch.nn, 3
        for layer in alexnet_layout.CONV_LAYERS:
            index = int(layer.torch_name.rsplit(".", 1)[1])
            out = scaled(layer.features, width)
            model.features[index] = nn.Conv2d(
                channels, out, layer.kernel, layer.stride, layer.padding or 0
            )
            channels = out
        features = channels * POOLED_SIZE * POOLED_SIZE
        for layer in alexnet_layout.DENSE_LAYERS:
            index = int(layer.torch_name.rsplit(".", 1)[1])
            out = num_classes if layer.name == "fc8" else scaled(layer.features, width)
            model.classifier[index] = nn.Linear(features, out)
            features = out
    model.features[0].padding = (conv1_padding, conv1_padding)
    return model


def vgg16(num_classes: int = 1000, width: float = 1.0) -> torchvision.models.VGG:
    """torchvision's VGG-16 (configuration D); narrower with ``width`` < 1 (same module
    indices, so the same state-dict names)."""
    if width == 1.0:
        return torchvision.models.vgg16(weights=None, num_classes=num_classes)
    cfg: list = []
    for _, convs, channels in vgg_layout.STAGES:
        cfg += [scaled(channels, width)] * convs + ["M"]
    model = torchvision.models.VGG(torchvision.models.vgg.make_layers(cfg), num_classes)
    fc, pooled = scaled(vgg_layout.FC_WIDTH, width), vgg_layout.POOLED_SIZE
    model.classifier[0] = torch.nn.Linear(cfg[-2] * pooled * pooled, fc)
    model.classifier[3] = torch.nn.Linear(fc, fc)
    model.classifier[6] = torch.nn.Linear(fc, num_classes)
    return model


class _NarrowResNet(torchvision.models.ResNet):
    """torchvision's ResNet with every width multiplied (its constructor fixes 64..512)."""

    def __init__(self, layers: list[int], num_classes: int, width: float):
        torch.nn.Module.__init__(self)
        from torchvision.models.resnet import Bottleneck

        nn = torch.nn
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = scaled(64, width)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(self.inplanes), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (count, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            stage = self._make_layer(Bottleneck, scaled(planes, width), count, stride=min(i, 1) + 1)
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)


def resnet50(num_classes: int = 1000, width: float = 1.0) -> torchvision.models.ResNet:
    """torchvision's ResNet-50 (v1.5); narrower with ``width`` < 1."""
    if width == 1.0:
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    return _NarrowResNet([count for count, _ in resnet_layout.STAGES], num_classes, width)


def classifier(arch: str, num_classes: int = 1000, width: float = 1.0, conv1_padding: int = 2):
    """torchvision's ImageNet classifier of ``arch`` (randomly initialised)."""
    if arch == "alexnet":
        return alexnet(num_classes, conv1_padding, width)
    return {"vgg16": vgg16, "resnet50": resnet50}[arch](num_classes, width)


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
    """VGG-16 or ResNet-50 (torchvision) + the reference's head, as voc_jax.model.TransferNet
    builds them: VGG-16 up to fc7 (ReLU, dropout), ResNet-50 up to its pooled features;
    BatchNorm in inference mode even when training (the default, ``model.bn_update=False``)."""

    def __init__(self, arch: str, num_classes: int = 21, hidden: int = FC_WIDTH, width=1.0):
        super().__init__()
        nn = torch.nn
        base = classifier(arch, 1000, width)
        if arch == "vgg16":
            self.backbone = nn.Sequential(
                base.features, base.avgpool, nn.Flatten(1), *list(base.classifier)[:6]
            )
            features = base.classifier[3].out_features
        else:
            features = base.fc.in_features
            base.fc = nn.Identity()
            self.backbone = base
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
        hidden: int = FC_WIDTH,
        conv1_padding: int = 2,
        dropout: float = 0.5,
        backbone: torchvision.models.AlexNet | None = None,
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


def alexnet_from_state(
    state: Mapping[str, np.ndarray], *, num_classes: int, conv1_padding: int
) -> torchvision.models.AlexNet:
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
    "resnet50",
    "vgg16",
]
