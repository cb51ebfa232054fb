"""A seconds-sized training config for tests: 6 synthetic images, 64-px patches, 8 per image."""

import ml_collections

from voc_jax.configs import smoke


def get_config() -> ml_collections.ConfigDict:
    c = smoke.get_config()
    c.num_epochs = 2
    c.batch_size = 4
    c.images_per_step = 1
    c.init.weights = ""  # random init: the tests need no pretrained files
    c.optim.trainable = (".*",)
    c.log_every_steps = 1
    c.data.synthetic.num_trainval = 6
    c.data.synthetic.num_test = 4
    c.data.synthetic.min_side = 100
    c.data.synthetic.max_side = 150
    c.patches.canvas = (160, 160)
    c.patches.scales = (1.0, 2.0)
    c.patches.per_image = 8
    c.patches.min_patches = 8
    c.patches.min_scales = 2
    c.model.head_hidden = 64
    c.model.width = 1 / 16  # a 242k-parameter AlexNet: the same code, seconds not minutes
    c.optim.learning_rate = 0.001
    c.optim.lr_changes = ((1, 0.0005),)
    c.checkpoint.every_steps = 4
    c.checkpoint.max_to_keep = 10
    c.eval.images_per_step = 2
    c.eval.plots = False
    return c
