"""The reference recipe (docs/reference.md): ImageNet AlexNet fine-tuned end to end on VOC 2007
trainval patches, 448 per image as 7 SGD updates of 64, evaluated on VOC 2007 test (the
method, voc07_base.py, on AlexNet).

    python -m voc_jax.train --config voc_jax/configs/voc07_alexnet.py --workdir runs/ref \
        --config.data.root=data/VOCdevkit/VOC2007 --config.init.weights=weights/alexnet_tv

The frozen variant (Oquab et al.: only the new head trains; the same as voc07_frozen.py):

    python -m voc_jax.train --config voc_jax/configs/voc07_alexnet.py:frozen ...
"""

import ml_collections

from voc_jax.configs import voc07_base


def get_config(variant: str = "finetune") -> ml_collections.ConfigDict:
    c = voc07_base.get_config()
    c.model.arch = "alexnet"
    # conv1's padding: 2 for torchvision's AlexNet, 3 for neon's; only for training from
    # scratch (converted weights carry their own)
    c.model.options.conv1_padding = 2
    if variant == "frozen":
        voc07_base.head_only(c)
    elif variant != "finetune":
        raise ValueError(f"voc07_alexnet.py:{variant}: expected finetune or frozen")
    return c
