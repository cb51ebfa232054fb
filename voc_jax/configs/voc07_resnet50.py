"""The method on ResNet-50 (v1.5): the reference's patches, labels, sampling, head and scoring,
with an ImageNet ResNet-50 backbone (torchvision's IMAGENET1K_V2, converted with --arch
resnet50). The head reads the 2048 globally pooled features.

    python convert/alexnet_to_flax.py --arch resnet50 --torchvision --out weights/resnet50 --verify
    python -m voc_jax.train --config voc_jax/configs/voc07_resnet50.py --workdir runs/r50 \
        --config.data.root=data/VOCdevkit/VOC2007 --config.init.weights=weights/resnet50

The frozen variant (only the new head trains, from a feature cache of the pooled features):

    python -m voc_jax.train --config voc_jax/configs/voc07_resnet50.py:frozen ...
"""

import ml_collections

from voc_jax.configs import voc07_base


def get_config(variant: str = "finetune") -> ml_collections.ConfigDict:
    c = voc07_base.get_config()
    c.model.arch = "resnet50"
    # BatchNorm keeps the pretrained statistics (an update sees 64 patches of one image, a
    # poor sample); scale and bias train with their layers. docs/converting.md: the trade-off.
    c.model.bn_update = False
    # Which layers learn: layer2 to layer4 and the head; the stem and layer1 stay pretrained,
    # as torchvision's detection models fine-tune ResNet-50 (trainable_backbone_layers=3).
    c.optim.trainable = (r"layer[234]_\d+/.*", r"head/.*")
    # Rates: ResNet-50 was trained at 0.1 for 256 images a step; for 64 patches of one image
    # a step, 1e-3 (the fine-tuning rate of detection recipes for such batches), dropped
    # tenfold at epochs 6 and 8. Decay: ResNet's own 1e-4, not on BatchNorm's scale and bias
    # (torchvision's reference recipes exclude them; decaying them shrinks the features).
    c.optim.learning_rate = 1e-3
    c.optim.lr_changes = ((6, 1e-4), (8, 1e-5))
    c.optim.weight_decay = 1e-4
    c.optim.no_decay = (r"(.*/)?(bn\d|downsample_1)/.*",)
    # Epochs: 10, as AlexNet's published run (a ResNet-50 update costs ~6x an AlexNet one).
    c.num_epochs = 10
    # Auto: on a CPU each update's gradient in 4 slices of 16 patches (1.44x faster there,
    # the same update); on a GPU the whole batch at once.
    c.grad_chunks = 0
    if variant == "frozen":
        _frozen(c)
    elif variant != "finetune":
        raise ValueError(f"voc07_resnet50.py:{variant}: expected finetune or frozen")
    return c


def _frozen(c: ml_collections.ConfigDict) -> None:
    """The backbone frozen (BatchNorm included), the new head trained at 1e-3 for 10 epochs
    (voc07_base.head_only), from cached pooled features (2048 per patch)."""
    voc07_base.head_only(c)
    c.optim.no_decay = ()  # no BatchNorm parameter trains
    c.feature_cache.enabled = True
