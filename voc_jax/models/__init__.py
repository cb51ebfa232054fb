"""The backbones voc-jax converts, fine-tunes and caches, in torchvision's layouts.

    model = voc_jax.models.build("resnet50")              # the ImageNet classifier
    variables, metadata = voc_jax.weights.load_converted("weights/resnet50")
    logits = model.apply(variables, images_nhwc_float32, train=False)

Every model takes the same mode keyword, ``train`` (dropout, and BatchNorm's batch statistics
when built with ``bn_update=True``). ``backbone(arch)`` is the interface the transfer model,
the converter and the feature cache use (voc_jax.models.backbone).
"""

from __future__ import annotations

from typing import Any

from flax import linen as nn

from voc_jax.models import alexnet, resnet, vgg
from voc_jax.models.backbone import Backbone
from voc_jax.models.common import Options

BACKBONES: dict[str, Backbone] = {
    b.name: b for b in (alexnet.BACKBONE, vgg.BACKBONE, resnet.BACKBONE)
}
ARCHITECTURES = tuple(BACKBONES)
CLASSIFIERS: dict[str, type[nn.Module]] = {
    "alexnet": alexnet.AlexNet,
    "vgg16": vgg.VGG16,
    "resnet50": resnet.ResNet50,
}


def backbone(arch: str) -> Backbone:
    try:
        return BACKBONES[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}"
        ) from None


def build(arch: str, num_classes: int = 1000, **options: Any) -> nn.Module:
    """The ImageNet classifier of ``arch`` (its fields: ``width``, ``dtype``; AlexNet's
    ``conv1_padding`` and ``dropout_rate``, VGG's ``dropout_rate``, ResNet's ``bn_update``)."""
    backbone(arch)  # the one error for an unknown name
    return CLASSIFIERS[arch](num_classes=num_classes, **options)


__all__ = ["ARCHITECTURES", "BACKBONES", "Backbone", "Options", "backbone", "build"]
