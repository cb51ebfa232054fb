"""The embedded smoke run: generated data, small patches, random init, CPU-sized.

    python -m voc_jax.train --config voc_jax/configs/smoke.py --workdir runs/smoke

Generates the synthetic VOC dataset into WORKDIR/data if absent, trains from scratch on
64-px patches at 4 scales and evaluates on the synthetic test split: generate + train +
evaluate in a few minutes on 2 CPU cores.
"""

import ml_collections

from voc_jax.configs import voc07_alexnet


def get_config() -> ml_collections.ConfigDict:
    c = voc07_alexnet.get_config()
    c.num_epochs = 3
    c.batch_size = 64
    c.log_every_steps = 10
    c.data.root = ""  # empty: WORKDIR/data/VOC2007, generated
    c.data.synthetic.generate = True
    c.data.synthetic.num_trainval = 160
    c.data.synthetic.num_test = 80
    c.data.synthetic.min_side = 160  # smaller images: a smaller device canvas
    c.data.synthetic.max_side = 320
    c.data.max_train_images = 0
    c.data.workers = 0
    c.patches.size = 64
    c.patches.scales = (1.0, 1.6, 2.3, 3.0)
    c.patches.per_image = 64
    c.patches.min_patches = 64
    c.patches.min_scales = 4
    c.patches.test_sampling = "spread"
    c.patches.canvas = (320, 320)
    c.model.head_hidden = 512
    c.optim.learning_rate = 0.01
    c.optim.lr_changes = ((2, 0.003),)
    c.checkpoint.every_steps = 200
    c.eval.images_per_step = 4
    return c
