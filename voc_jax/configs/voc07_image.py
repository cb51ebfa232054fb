"""The whole-image family (Oquab et al. 2015's successor to the patches, the baseline of
recent VOC 2007 papers): each photo whole through the backbone as a fully convolutional
network, a classifier at every position of its last feature map, the positions pooled into
one logit per class, a sigmoid loss per class on the image labels (difficult-only labels
ignored, as VOC's protocol ignores them). ``voc_jax.image`` explains each part.

    python -m voc_jax.train --config voc_jax/configs/voc07_image.py:resnet50,frozen \\
        --workdir runs/image_frozen --config.data.root=data/VOCdevkit/VOC2007 \\
        --config.init.weights=weights/resnet50
    python -m voc_jax.train --config voc_jax/configs/voc07_image.py:resnet50,finetune \\
        --workdir runs/image_finetune ... --config.init.head_from=runs/image_frozen

The argument is ``ARCH,VARIANT``: ARCH one of alexnet, vgg16, resnet50, resnet26, lite0 (or
efficientnet_lite0); VARIANT ``frozen`` (only the head trains, from a cache of the maps) or
``finetune`` (the backbone's upper blocks too, end to end, with random resized crops).
"""

import ml_collections

from voc_jax.configs import voc07_base

ARCHS = {
    "alexnet": "alexnet",
    "vgg16": "vgg16",
    "resnet50": "resnet50",
    "resnet26": "resnet26",
    "lite0": "efficientnet_lite0",
    "efficientnet_lite0": "efficientnet_lite0",
}
# What fine-tuning trains of each backbone (the patch family's choices: the upper blocks).
FINETUNE_TRAINABLE = {
    "alexnet": (r"conv[345]/.*", r"fc[67]/.*", r"head/.*"),
    "vgg16": (r"conv[45]_\d/.*", r"fc[67]/.*", r"head/.*"),
    "resnet50": (r"layer[34]_\d+/.*", r"head/.*"),
    "resnet26": (r"layer[34]_\d+/.*", r"head/.*"),
    "efficientnet_lite0": (r"blocks_([89]|1[0-5])/.*", r"conv_head/.*", r"bn1/.*", r"head/.*"),
}


def get_config(arg: str = "resnet50,frozen") -> ml_collections.ConfigDict:
    arch, _, variant = arg.partition(",")
    if arch not in ARCHS or variant not in ("frozen", "finetune"):
        raise ValueError(
            f"voc07_image.py:{arg}: expected ARCH,VARIANT with ARCH one of "
            f"{', '.join(ARCHS)} and VARIANT frozen or finetune"
        )
    arch = ARCHS[arch]
    c = ml_collections.ConfigDict()
    c.method = "image"  # the method family: image (this) | patches (voc07_base.py)
    c.seed = 0  # head init, shuffles, crops, flips, dropout
    c.num_epochs = 20
    c.batch_size = 16  # photos per update
    c.log_every_steps = 10  # updates between logged points

    c.data = voc07_base._data()
    c.data.max_train_images = 0  # every trainval photo

    c.model = ml_collections.ConfigDict()
    c.model.arch = arch
    c.model.options = ml_collections.ConfigDict()  # the backbone's own (from scratch only)
    c.model.num_classes = 0  # 0 = one logit per class of the dataset's list (no background)
    c.model.head_hidden = 0  # 0: a linear classifier (1x1 conv); > 0: two layers of this width
    c.model.dropout_rate = 0.5  # AlexNet/VGG-16 fc6 and fc7 (as convolutions)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    c.model.width = 1.0  # channel width multiplier (1.0: the real network)
    c.model.bn_update = False  # BatchNorm: True uses and updates batch statistics in training

    c.image = ml_collections.ConfigDict()
    c.image.size = 448  # the canvas side at scale 1 (the anchors' setting: 448 px)
    # longer: the longer side made image.size, aspect kept, padded and masked | square:
    # squashed | own: the photo's own size (scaled down only past image.size), on a canvas of
    # its sides rounded up to image.bucket (batches drawn within a bucket: few compiles)
    c.image.resize = "longer"
    c.image.bucket = 64  # own: canvas sides are multiples of this (a multiple of 32)
    c.image.scales = (1.0,)  # canvas sides size * s; every scale's positions pooled together
    # avg | max | lse (log-sum-exp) | topk (mean of the k best). avg: on frozen Lite0 maps
    # (the genuine photos, 448 px) the sharper poolings generalise far worse (docs/image.md)
    c.image.pooling = "avg"
    c.image.lse_r = 5.0  # lse's sharpness r > 0: average as r -> 0, maximum as r -> inf
    c.image.topk = 3  # topk's k >= 1
    c.image.fc_as_conv = True  # AlexNet, VGG-16: fc6 (6x6 / 7x7) and fc7 (1x1) as convolutions
    c.image.head_dropout = 0.0  # dropout on the head's input
    c.image.loss = "bce"  # bce (binary cross-entropy per class) | asl (asymmetric loss)
    c.image.asl_gamma_pos = 0.0  # asl: focusing of positives
    c.image.asl_gamma_neg = 4.0  # asl: focusing of negatives (Ridnik et al.'s default)
    c.image.asl_clip = 0.05  # asl: negatives' probability margin
    c.image.flip = True  # training: random horizontal flips (cached: the mirrored maps)
    c.image.crop_area = (1.0, 1.0)  # training: random resized crop's area range (fine-tuning)
    c.image.test_flip = False  # evaluation: the mirrored photo's positions pooled in too
    # Training from photos with random resized crops (image.crop_area): where the crops and
    # flips are resampled: device (inside the step) | host (PIL, on a thread beside the step) |
    # auto (device on an accelerator, host on a CPU, where PIL measured 3x faster:
    # docs/image.md). The same draws either way; without crops the canvases are PIL's
    c.image.crops_on = "auto"
    c.image.frame = 512  # device crops: each photo's frame side (larger photos scaled down once)
    c.image.eval_batch = 8  # photos per evaluation (and cache) forward pass
    # An update's gradient in this many sequential slices of its photos, summed: the same
    # update (to float rounding) with a smaller working set; must divide batch_size; not with
    # model.bn_update (batch statistics would be per slice)
    c.image.grad_chunks = 1
    c.image.ema = 0.0  # an exponential moving average of the weights, evaluated; 0 = off

    c.init = ml_collections.ConfigDict()
    c.init.weights = ""  # converter output directory; empty = from scratch
    c.init.keep_head = False  # (patch family only; kept for the shared checks)
    # A whole-image workdir of the same model whose newest head starts this run (LP-FT)
    c.init.head_from = ""
    c.init.channel_order = "RGB"  # normalisation when training from scratch
    c.init.scale = 1.0 / 255.0
    c.init.mean = (0.485, 0.456, 0.406)
    c.init.std = (0.229, 0.224, 0.225)

    c.optim = voc07_base._optim()
    c.optim.optimizer = "adamw"
    c.optim.schedule = "cosine"
    c.optim.lr_changes = ()
    c.optim.weight_decay = 1e-4
    c.optim.no_decay = (r".*/bias", r"(.*/)?bn\d?/.*", r".*_bn\d?/.*")

    c.feature_cache = ml_collections.ConfigDict()
    c.feature_cache.enabled = False  # frozen backbone: the maps computed once (voc_jax.image.cache)
    c.feature_cache.dtype = "float16"  # float16 | bfloat16 | float32 (rows on disk)
    c.feature_cache.dir = ""  # where caches go; empty = WORKDIR/feature_cache

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 200  # updates between checkpoints (and every epoch end)
    c.checkpoint.max_to_keep = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.protocols = ("voc07", "area", "reference")  # AP protocols reported
    c.eval.every_epochs = 0  # also evaluate every N epochs (0 = only at the end)
    c.eval.plots = True  # PR curves and per-class bar chart as PNG

    if variant == "frozen":
        # Only the classifier learns, from the cached maps: AdamW 1e-2, cosine, 20 epochs
        # (1e-3 and 3e-3 measured 0.1-0.2 points lower, docs/image.md).
        c.optim.trainable = (r"head/.*",)
        c.optim.learning_rate = 1e-2
        c.feature_cache.enabled = True
    else:
        # End to end from the frozen run's head (init.head_from), the upper blocks at 1e-4
        # with a warm-up; random resized crops (area 0.3-1) and flips on top.
        c.optim.trainable = FINETUNE_TRAINABLE[arch]
        c.optim.learning_rate = 1e-4
        c.optim.warmup_epochs = 1.0
        c.num_epochs = 10
        c.image.crop_area = (0.3, 1.0)
    return c
