"""The embedded smoke run: generated data, small patches, synthetic-pretrained AlexNet, CPU-sized.

    scripts/quickstart.sh        # pretrains the source AlexNet, converts it, then runs this

or by hand, once the converted weights exist:

    python scripts/pretrain_synthetic.py --out runs/quickstart/source_alexnet.pth
    python convert/alexnet_to_flax.py --pth runs/quickstart/source_alexnet.pth \
        --out runs/quickstart/source_alexnet --verify --verify-size 64
    python -m voc_jax.train --config voc_jax/configs/smoke.py --workdir runs/smoke

Generates the synthetic VOC dataset into WORKDIR/data if absent, trains the new head on top
of the frozen pretrained backbone (Oquab et al.'s variant) on 64-px patches at 4 scales and
evaluates on the synthetic test split: generate + train + evaluate in about 2 minutes on 2 CPU
cores. The backbone comes from the synthetic single-object source task (the ImageNet role,
scripts/pretrain_synthetic.py): from random init the network stays at the background prior
for the few hundred updates such a budget allows (see "Does transfer work here?").
"""

import ml_collections

from voc_jax.configs import voc07_alexnet


def get_config() -> ml_collections.ConfigDict:
    c = voc07_alexnet.get_config()
    c.num_epochs = 6
    c.batch_size = 32
    c.images_per_step = 2  # one SGD update of 2 x 32 patches per pair of images
    c.log_every_steps = 10
    c.data.root = ""  # empty: WORKDIR/data/VOC2007, generated
    c.data.synthetic.generate = True
    c.data.synthetic.num_trainval = 96
    c.data.synthetic.num_test = 64
    c.data.synthetic.min_side = 160  # smaller images: a smaller device canvas
    c.data.synthetic.max_side = 320
    c.data.max_train_images = 0
    c.data.workers = 0
    c.patches.size = 64  # the source task's input size
    c.patches.scales = (1.0, 1.6, 2.3, 3.0)
    c.patches.per_image = 32
    c.patches.min_patches = 32
    c.patches.min_scales = 4
    c.patches.test_sampling = "spread"
    c.patches.canvas = (320, 320)
    c.model.head_hidden = 512
    # Written by scripts/quickstart.sh (relative to the working directory); empty = scratch.
    c.init.weights = "runs/quickstart/source_alexnet"
    c.optim.trainable = ("head/.*",)  # Oquab: the backbone frozen, the new head trained
    c.optim.learning_rate = 0.01
    c.optim.lr_changes = ((4, 0.001),)  # (epoch, new rate): a tenth for the last two epochs
    c.checkpoint.every_steps = 200
    c.eval.images_per_step = 4
    return c
