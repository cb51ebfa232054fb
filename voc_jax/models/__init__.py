"""The backbones voc-jax converts, fine-tunes and caches, in their torch layouts.

    model = voc_jax.models.build("resnet50")              # the ImageNet classifier
    variables, metadata = voc_jax.weights.load_converted("weights/resnet50")
    logits = model.apply(variables, images_nhwc_float32, train=False)

Every model takes the same mode keyword, ``train`` (dropout, and BatchNorm's batch statistics
when built with ``bn_update=True``). ``backbone(arch)`` is the interface everyone else uses
(voc_jax.models.backbone); a new architecture is one module and one line in ``BACKBONES``.
"""

from __future__ import annotations

from typing import Any

from flax import linen as nn

from voc_jax.models import alexnet, efficientnet_lite, resnet, vgg
from voc_jax.models.backbone import Backbone
from voc_jax.models.common import Options

# The registry: the one place that lists the architectures.
BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        alexnet.BACKBONE,
        vgg.BACKBONE,
        resnet.BACKBONE,
        resnet.BACKBONE_26,
        efficientnet_lite.BACKBONE,
    )
}
ARCHITECTURES = tuple(BACKBONES)


def backbone(arch: str) -> Backbone:
    try:
        return BACKBONES[arch]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}"
        ) from None


def options_for(arch: str, values: dict[str, Any], where: str = "model.options"):
    """(options, set aside) of ``arch`` from a config's ``model.options``: keys that are
    another architecture's options (AlexNet's conv1_padding in a config switched to VGG-16
    with --config.model.arch) are set aside and named, as those backbones ignored them
    before options were their own; a key no backbone has, or a bad value, is a ValueError."""
    b = backbone(arch)
    others = {n for o in BACKBONES.values() for n in o.option_names} - set(b.option_names)
    kept = {k: v for k, v in values.items() if k not in others}
    return b.parse_options(kept, where), sorted(set(values) - set(kept))


def build(arch: str, num_classes: int = 1000, **fields: Any) -> nn.Module:
    """The ImageNet classifier of ``arch`` (its fields: ``width``, ``dtype``, and those the
    architecture has: dropout_rate, bn_update, its own options such as AlexNet's
    ``conv1_padding``)."""
    return backbone(arch).classifier(num_classes=num_classes, **fields)


__all__ = ["ARCHITECTURES", "BACKBONES", "Backbone", "Options", "backbone", "build", "options_for"]
