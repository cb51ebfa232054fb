"""Oquab et al.'s variant: the pretrained backbone (conv1..fc7) frozen, only the new head
trained. With 2 of 8 weight layers learning from a random start, and no risk of wrecking
pretrained features, a 10x larger rate than the fine-tuning recipe (1e-3, dropped to 1e-4 at
epoch 8) converges in a few epochs; Oquab et al. also trained only the new layers, at a higher
rate than full fine-tuning would tolerate. Frozen layers hold no optimizer state and XLA
drops their backward pass, so each step is much cheaper.
"""

import ml_collections

from voc_jax.configs import voc07_alexnet


def get_config() -> ml_collections.ConfigDict:
    return head_only(voc07_alexnet.get_config())


def head_only(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The frozen recipe on any backbone's config: the new head alone, 1e-3 then 1e-4 at
    epoch 8, 10 epochs (voc07_vgg16.py:frozen and voc07_resnet50.py:frozen use it too)."""
    c.optim.trainable = (r"head/.*",)
    c.optim.learning_rate = 1e-3
    c.optim.lr_changes = ((8, 1e-4),)
    c.num_epochs = 10
    return c
