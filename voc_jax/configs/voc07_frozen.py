"""Oquab et al.'s variant: the pretrained backbone (conv1..fc7) frozen, only the new head
trained. With 2 of 8 weight layers learning from a random start, and no risk of wrecking
pretrained features, a 10x larger rate than the fine-tuning recipe (1e-3, dropped to 1e-4 at
epoch 8) converges in a few epochs; Oquab et al. also trained only the new layers, at a higher
rate than full fine-tuning would tolerate. Frozen layers hold no optimizer state and XLA
drops their backward pass, so each step is much cheaper. The same as voc07_alexnet.py:frozen.
"""

import ml_collections

from voc_jax.configs import voc07_alexnet, voc07_base

head_only = voc07_base.head_only  # its earlier home; the backbone configs use voc07_base's


def get_config() -> ml_collections.ConfigDict:
    return voc07_alexnet.get_config("frozen")
