"""The quickstart's offline run: genuine ImageNet weights (EfficientNet-Lite0 from its pip
package), generated data, small patches, CPU-sized (about 2 minutes on 2 CPU cores).

    python convert/alexnet_to_flax.py --arch efficientnet_lite0 --package \
        --out runs/quickstart/efficientnet_lite0 --verify
    python -m voc_jax.train --config voc_jax/configs/smoke_lite0.py --workdir runs/smoke_lite0

Generates the synthetic VOC dataset into WORKDIR/data if absent, trains the new head on the
frozen backbone (Oquab et al.'s variant, from a feature cache of the pooled features) on
64-px patches at 4 scales and evaluates the synthetic test split. With real photos
(``--config.data.root=.../VOC2007``) it is the same run on them; ``python -m
voc_jax.compare --setting ci`` is its real-photo counterpart beside the linear probe.
"""

import ml_collections

from voc_jax.configs import smoke, voc07_lite0


def get_config() -> ml_collections.ConfigDict:
    c = voc07_lite0.get_config("frozen")
    s = smoke.get_config()  # the smoke run's data, patches and schedule
    for block in ("data", "patches", "checkpoint"):
        c[block] = s[block]
    for key in ("num_epochs", "batch_size", "images_per_step", "log_every_steps"):
        c[key] = s[key]
    c.eval.images_per_step = s.eval.images_per_step
    c.model.head_hidden = s.model.head_hidden
    c.optim.learning_rate = s.optim.learning_rate
    c.optim.lr_changes = s.optim.lr_changes
    # Written by scripts/quickstart.sh (relative to the working directory); empty = scratch.
    c.init.weights = "runs/quickstart/efficientnet_lite0"
    return c
