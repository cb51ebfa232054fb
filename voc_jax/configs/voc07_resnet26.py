"""The method on ResNet-26: ResNet-50's recipe (voc07_resnet50.py) on the bottleneck ResNet
with two blocks a stage. torchvision has no ResNet-26 weights; timm's ``resnet26`` state dict
has this layout and converts with ``--pth``:

    python convert/alexnet_to_flax.py --arch resnet26 --pth resnet26.pth --out weights/resnet26
    python -m voc_jax.train --config voc_jax/configs/voc07_resnet26.py --workdir runs/r26 \
        --config.data.root=data/VOCdevkit/VOC2007 --config.init.weights=weights/resnet26
"""

import ml_collections

from voc_jax.configs import voc07_resnet50


def get_config(variant: str = "finetune") -> ml_collections.ConfigDict:
    c = voc07_resnet50.get_config(variant)
    c.model.arch = "resnet26"
    return c
