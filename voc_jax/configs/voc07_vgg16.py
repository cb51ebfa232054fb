"""The method on VGG-16: the reference's patches, labels, sampling, head and scoring, with an
ImageNet VGG-16 backbone (torchvision's IMAGENET1K_V1, converted with --arch vgg16).

    python convert/alexnet_to_flax.py --arch vgg16 --torchvision --out weights/vgg16 --verify
    python -m voc_jax.train --config voc_jax/configs/voc07_vgg16.py --workdir runs/vgg16 \
        --config.data.root=data/VOCdevkit/VOC2007 --config.init.weights=weights/vgg16

The frozen variant (only the new head trains, from a feature cache of fc6):

    python -m voc_jax.train --config voc_jax/configs/voc07_vgg16.py:frozen ...
"""

import ml_collections

from voc_jax.configs import voc07_base


def get_config(variant: str = "finetune") -> ml_collections.ConfigDict:
    c = voc07_base.get_config()
    c.model.arch = "vgg16"
    # Which layers learn: conv1_x and conv2_x stay as pretrained (generic edge and texture
    # filters; Fast R-CNN freezes them for VGG-16 too, and they cost half the backward pass
    # at 224 px), conv3_1 to fc7 and the new head fine-tune.
    c.optim.trainable = (r"conv[345]_\d/.*", r"fc[67]/.*", r"head/.*")
    # The reference's rates and decay (sgd, momentum 0.9, 1e-4 dropped tenfold at epochs 15
    # and 20, L2 5e-4 on everything): VGG-16 was itself trained with SGD, momentum 0.9 and
    # 5e-4 decay, and 1e-4 is a tenth of its own last rate, as for AlexNet.
    c.optim.learning_rate = 1e-4
    c.optim.lr_changes = ((15, 1e-5), (20, 1e-6))
    c.optim.weight_decay = 5e-4
    # Epochs: as AlexNet's published run. A VGG-16 update costs ~20x an AlexNet one (15.5
    # against 0.7 GFLOP per 224-px patch): a GPU run.
    c.num_epochs = 10
    if variant == "frozen":
        _frozen(c)
    elif variant != "finetune":
        raise ValueError(f"voc07_vgg16.py:{variant}: expected finetune or frozen")
    return c


def _frozen(c: ml_collections.ConfigDict) -> None:
    """Oquab et al.'s variant: the backbone frozen, the new head trained at a 10x rate for
    10 epochs (voc07_base.head_only), from cached fc6 activations (4096 per patch)."""
    voc07_base.head_only(c)
    c.feature_cache.enabled = True
