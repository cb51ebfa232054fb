"""A seconds-sized whole-image config for tests: a 1/16-wide ResNet-26 (ResNet-50's blocks,
two a stage: half its compile time) on 64-px canvases, the tiny synthetic set (6 trainval,
4 test photos), 2 epochs of 2 updates."""

import ml_collections

from voc_jax.configs import voc07_image


def get_config(arg: str = "resnet26,frozen") -> ml_collections.ConfigDict:
    c = voc07_image.get_config(arg)
    c.num_epochs = 2
    c.batch_size = 4
    c.log_every_steps = 1
    c.model.width = 1 / 16
    c.image.size = 64
    c.image.eval_batch = 4
    c.feature_cache.dtype = "float32"
    c.data.synthetic.generate = True
    c.data.synthetic.num_trainval = 6
    c.data.synthetic.num_test = 4
    c.data.synthetic.min_side = 100
    c.data.synthetic.max_side = 150
    c.data.check_images = "sizes"
    c.data.workers = 0
    c.checkpoint.every_steps = 3  # one save mid-epoch (step 3), besides the epochs' ends
    c.checkpoint.max_to_keep = 10
    c.eval.plots = False
    return c
