"""The method on any backbone (docs/reference.md): VOC 2007 trainval patches, 448 per image as
7 SGD updates of 64, the reference's labels, sampling, new head and exponent-5 scoring,
evaluated on VOC 2007 test, with the reference's fine-tuning recipe as the default optimizer.
Not a config to run: ``model.arch`` is unset. Each backbone's config (voc07_alexnet.py,
voc07_vgg16.py, voc07_resnet50.py, ...) builds on it and holds only what differs.
"""

import ml_collections
from ml_collections import config_dict

from voc_jax.data.patches import REFERENCE_SCALES


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "patches"  # the method family: patches (this) | image (voc07_image.py)
    c.seed = 0  # everything random derives from it: head init, shuffles, sampling, dropout
    c.num_epochs = 10  # the published run; the reference converged after ~15
    c.batch_size = 64  # patches per SGD update (per image micro-batch)
    c.images_per_step = 1  # images per jitted call; each adds batch_size patches per update
    c.log_every_steps = 50  # SGD updates between TensorBoard points
    # An update's gradient computed in this many sequential slices of its batch, summed: the
    # same update (to float rounding; dropout masks drawn per slice) with a smaller working
    # set. 0 = auto: on the CPU backend, slices of the backbone's measured size (VGG-16 and
    # ResNet-50: 16 patches; ResNet-50's full step measured 1.44x faster as 4 x 16 than as
    # 64; docs/performance.md), the whole batch elsewhere and with model.bn_update
    c.grad_chunks = 1

    c.data = _data()
    c.patches = _patches()

    c.model = ml_collections.ConfigDict()
    # The backbone: voc_jax.models.ARCHITECTURES (alexnet | vgg16 | resnet50 | ...), set by
    # each backbone's config; converted weights must be of this architecture (and width)
    c.model.arch = config_dict.placeholder(str)
    # The backbone's own options, checked by the backbone (AlexNet: conv1_padding); only for
    # training from scratch: converted weights carry their own
    c.model.options = ml_collections.ConfigDict()
    # Outputs: 0 = follow the dataset's class list (+1 background: 21 for VOC); settled when
    # the run starts and saved in config.json. A value set by hand must agree with the list.
    c.model.num_classes = 0
    c.model.head_hidden = 4096  # the new Dense layer's width
    c.model.dropout_rate = 0.5
    c.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (params stay float32)
    # Multiplier on every backbone channel and hidden width: 1.0 is the real network (and
    # what ImageNet weights are); the tests train a 1/16-wide network from scratch.
    c.model.width = 1.0
    # BatchNorm (backbones that have it): False keeps the pretrained statistics in training
    # too (an update sees 64 patches of ONE image, a poor sample for batch statistics); True
    # uses batch statistics when training and updates the running ones (torch's momentum
    # 0.1), which are then checkpointed. Scale and bias train as optim.trainable says.
    c.model.bn_update = False

    c.init = ml_collections.ConfigDict()
    c.init.weights = ""  # converter output directory; empty = train from scratch
    c.init.keep_head = False  # use the head stored in the weights (a converted VOC model)
    # A training workdir (same arch, width, num_classes, head_hidden) whose newest checkpoint's
    # head starts this run instead of a random one: fine-tuning from the frozen run's trained
    # head (LP-FT, Kumar et al. 2022). Read once, when the run starts; empty = a fresh head.
    c.init.head_from = ""
    # Normalisation when training from scratch (converted weights carry their own):
    c.init.channel_order = "RGB"
    c.init.scale = 1.0 / 255.0
    c.init.mean = (0.485, 0.456, 0.406)
    c.init.std = (0.229, 0.224, 0.225)

    c.optim = _optim()

    c.distributed = False  # True: jax.distributed.initialize(); also done automatically when a
    # cluster is detected (SLURM with > 1 task, Open MPI, JAX_COORDINATOR_ADDRESS set)
    c.cluster = ml_collections.ConfigDict()
    c.cluster.coordinator = ""  # host:port of process 0; empty = from the cluster environment
    c.cluster.num_processes = 0  # 0 = from the cluster environment
    c.cluster.process_id = -1  # -1 = from the cluster environment
    c.cluster.local_device_ids = ()  # this process's devices; empty = all local ones
    c.cluster.cpu_collectives = ""  # "gloo" for multi-process runs on CPUs; "" = JAX's default

    # Frozen backbone only (every trainable parameter above the backbone's frozen prefix:
    # AlexNet and VGG-16 fc6, ResNet-50 the pooled features): compute the prefix's activations
    # of every candidate patch once, then train from them (voc_jax.feature_cache).
    c.feature_cache = ml_collections.ConfigDict()
    c.feature_cache.enabled = False
    c.feature_cache.dtype = "float16"  # float16 | bfloat16 | float32 (rows on disk)
    c.feature_cache.dir = ""  # where caches go; empty = WORKDIR/feature_cache

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000  # SGD updates between checkpoints (and every epoch end)
    c.checkpoint.max_to_keep = 3
    # Resuming with another images_per_step than the checkpoint's is refused (it would skip
    # or repeat part of an epoch); True restarts the epoch at the nearest image boundary
    c.checkpoint.allow_batch_change = False

    c.eval = ml_collections.ConfigDict()
    c.eval.exponent = 5.0  # image score = sum over patches of p(c | patch) ** exponent
    c.eval.protocols = ("voc07", "area", "reference")  # AP protocols reported
    c.eval.every_epochs = 0  # also evaluate every N epochs (0 = only at the end)
    c.eval.images_per_step = 1  # test images per jitted call
    c.eval.plots = True  # PR curves and per-class bar chart as PNG
    return c


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.root = ""  # the dataset's directory (for voc: Annotations/, JPEGImages/, ImageSets/Main/)
    # The dataset's format: voc (VOC2007's layout) | coco (annotations/instances_<split>.json,
    # images in <split>/) | labels (<split>.csv or .jsonl: image-level labels, no boxes: the
    # whole-image family only). README "Your own data".
    d.format = "voc"
    # The class names in order; empty = ROOT/classes.txt if present, else the format's own
    # (voc: VOC 2007's 20; coco: the training file's categories). Settled when a run starts
    # and saved in config.json, so a workdir is evaluated and predicted with its own list.
    d.classes = ()
    d.train_split = "trainval"
    d.test_split = "test"
    d.max_train_images = 5000  # the reference uses the first 5000 of 5011; 0 = all
    d.max_test_images = 0  # 0 = all
    # Validation before training: none | exist | sizes (headers only, fast) | decode (every
    # image decoded once, ~30 s for VOC 2007, remembered in WORKDIR/image_check.json)
    d.check_images = "decode"
    d.strict = False  # annotation warnings (clipped / dropped boxes) become errors
    d.workers = 2  # host pipeline worker processes (0 = in the training process)
    # The most pixels an image may have, checked before it is decoded (VOC's: 0.25 MP; a
    # small PNG can hold 100 MP, 300 MB decoded): a larger one is refused, naming it
    d.max_image_pixels = 64_000_000
    # True: generate the synthetic VOC set at an explicit data.root that does not exist
    # (otherwise a missing data.root is an error: a typo must not train on generated data)
    d.generate = False
    d.synthetic = ml_collections.ConfigDict()
    # Generate the synthetic VOC set into WORKDIR/data/VOC2007 when data.root is empty and
    # that directory is absent (the smoke configs)
    d.synthetic.generate = False
    d.synthetic.num_trainval = 200
    d.synthetic.num_test = 100
    d.synthetic.seed = 0
    # The generated classes' names (empty: VOC's 20); up to 80, each its own pattern
    d.synthetic.classes = ()
    d.synthetic.min_side = 200  # image sides drawn from [min_side, max_side]
    d.synthetic.max_side = 500
    return d


def _patches() -> ml_collections.ConfigDict:
    p = ml_collections.ConfigDict()
    p.size = 224  # network input side (patches are resized to size x size)
    p.scales = REFERENCE_SCALES  # patch side = (min(W, H) - 1) / s
    p.per_image = 448  # K: patches sampled per image (train and test)
    p.min_patches = 448  # geometry: stop once this many patches ...
    p.min_scales = 11  # ... and this many scales were used
    p.min_patch_overlap = 0.2  # label rule: intersection >= 20% of the patch ...
    p.min_box_coverage = 0.6  # ... and >= 60% of the box
    p.difficult = "object"  # object (reference) | ignore | exclude
    p.shuffle = True  # mix positives over the 7 micro-batches
    p.test_sampling = "random"  # random (reference) | spread (deterministic)
    p.canvas = (500, 500)  # device image buffer; larger images are scaled down
    # exact: resample the fractional patch box (default, better); reference: truncate each
    # coordinate to a whole pixel first, as the reference's PIL crop did (its exact pixels)
    p.crop_boxes = "exact"
    # Where patches are cropped: device (the jitted step, from the image), host (PIL in the
    # pipeline workers), auto = host on the CPU backend (2.5x cheaper there), device elsewhere
    p.crops = "auto"
    p.max_rows = 0  # row intervals per image for the shared crop pass; 0 = what the
    # scales can need, 2 * sum(ceil(scale)) (86 for the reference's 13 scales)
    return p


def _optim() -> ml_collections.ConfigDict:
    """The reference's recipe (AlexNet fine-tuned end to end); backbone configs adapt it."""
    o = ml_collections.ConfigDict()
    o.optimizer = "sgd"  # sgd (the reference) | adamw
    o.trainable = (".*",)  # regexes over param paths; the reference trains everything
    o.learning_rate = 1e-4
    o.schedule = "step"  # step (set to value at epoch) | cosine
    o.lr_changes = ((15, 1e-5), (20, 1e-6))  # (epoch, new rate) for schedule=step
    o.warmup_epochs = 0.0  # linear warm-up from 0
    o.momentum = 0.9  # sgd only
    o.nesterov = False  # sgd only
    o.b1 = 0.9  # adamw only: first-moment decay
    o.b2 = 0.999  # adamw only: second-moment decay
    o.eps = 1e-8  # adamw only
    # sgd: coupled L2 added to the gradient, as neon; adamw: decoupled, multiplied by the rate
    o.weight_decay = 5e-4
    o.no_decay = ()  # regexes of params without decay; the reference decays biases too
    # An update averages images_per_step x batch_size patches (the reference: 1 x 64). True
    # multiplies every rate by images_per_step (the linear scaling rule) when that grows.
    o.scale_lr = False
    return o


def head_only(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Oquab et al.'s frozen recipe on any backbone's config: the new head alone, at a 10x
    rate (1e-3, then 1e-4 at epoch 8), 10 epochs (voc07_frozen.py explains the choice)."""
    c.optim.trainable = (r"head/.*",)
    c.optim.learning_rate = 1e-3
    c.optim.lr_changes = ((8, 1e-4),)
    c.num_epochs = 10
    return c
