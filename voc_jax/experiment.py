"""One experiment, assembled once: ``Experiment.build(config)`` reads the (already validated)
config into typed settings and builds what every command shares: the patch settings, the
model with its initial parameters and preprocessing, the device mesh and shardings, and the
jitted train, evaluation and prefix (feature cache) steps. ``train``, ``evaluate``, ``predict``, the feature
cache, the benchmark and the tests all start here; below it nothing sees a ``ConfigDict``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from voc_jax import (
    class_config,
    distributed,
    model_validation,
    models,
    optim,
    settings,
    steps,
    validation,
    xla_options,
)
from voc_jax import weights as weights_lib
from voc_jax.data.pipeline import PatchConfig, epoch_dataset
from voc_jax.data.voc import VocRecord
from voc_jax.errors import ConfigError
from voc_jax.models.transfer import TransferNet
from voc_jax.preprocessing import Preprocessing

EVAL_SEED_OFFSET = 1_000_003  # test sampling draws from seed + this, apart from training's


def validate(config: ml_collections.ConfigDict) -> None:
    """The whole config, before anything is read or written: its values
    (voc_jax.validation), then against the network and the weights it names
    (voc_jax.model_validation). ConfigError lists every problem."""
    validation.validate(config, jax.device_count(), jax.process_count())
    model_validation.validate(config)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """The transfer network, its initial parameters and BatchNorm statistics (converted
    weights with a fresh head, or a fresh init), the preprocessing those weights expect, and
    where they came from."""

    module: TransferNet
    params: Any
    preprocessing: Preprocessing
    source: dict[str, Any]
    batch_stats: Any = dataclasses.field(default_factory=dict)  # {} without BatchNorm

    @property
    def variables(self) -> dict[str, Any]:
        """What ``module.apply`` and the evaluation and prefix steps take."""
        return steps.variables(self.params, self.batch_stats)


def build_model(
    m: settings.ModelSettings,
    init: settings.InitSettings,
    seed: int,
    classes: Sequence[str] | None = None,
) -> Model:
    """TransferNet and its initial variables: from converted weights or from scratch (a kept
    converted head must be of ``classes``, the run's, where the weights name theirs)."""
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    if init.weights:
        converted, metadata = weights_lib.load_converted(init.weights)
        block = metadata["architecture"]
        arch, width = weights_lib.backbone_of(block).name, float(block.get("width", 1.0))
        if (arch, width) != (m.arch, m.width):
            raise ConfigError(
                f"init.weights={init.weights}: {arch} of width {width:g}, but the config says "
                f"model.arch={m.arch}, model.width={m.width:g}"
            )
        variables = weights_lib.transfer_variables(
            converted,
            metadata,
            num_classes=m.num_classes,
            head_hidden=m.head_hidden,
            seed=seed,
            keep_head=bool(init.keep_head and block["name"] == "transfer"),
            classes=classes,
        )
        options = weights_lib.options_of(block)  # the weights' own (AlexNet: neon pads 3)
        prep = weights_lib.preprocessing_of(metadata)
        source = {"weights": str(init.weights), **metadata["source"]}
    else:
        options, prep, variables = m.options, init.scratch_preprocessing, None
        source = {"weights": None, "kind": "scratch"}
    module = TransferNet(
        num_classes=m.num_classes,
        options=options,
        dropout_rate=m.dropout_rate,
        head_hidden=m.head_hidden,
        dtype=dtype,
        width=m.width,
        arch=m.arch,
        bn_update=m.bn_update,
    )
    if variables is None:
        size = m.patch_size
        # One compiled program (an eager init compiles every initialiser op on its own).
        init_fn = xla_options.jit_once(module.init)
        variables = init_fn(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)))
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(variables))
    stats = variables.get("batch_stats", {})
    return Model(module, variables["params"], prep, source, stats)


def patch_config(config: ml_collections.ConfigDict) -> PatchConfig:
    p = config.patches
    return PatchConfig(
        scales=tuple(float(s) for s in p.scales),
        patches_per_image=p.per_image,
        min_patches=p.min_patches,
        min_scales=p.min_scales,
        min_patch_overlap=p.min_patch_overlap,
        min_box_coverage=p.min_box_coverage,
        difficult=p.difficult,
        shuffle_patches=p.shuffle,
        test_sampling=p.test_sampling,
        canvas=tuple(p.canvas),
        crop_boxes=p.crop_boxes,
        crops=crop_site(p.crops),
        patch_size=p.size,
        max_rows=p.max_rows or grid_rows(p.scales),
    )


def crop_site(setting: str) -> str:
    """``patches.crops``: "auto" crops on the host (PIL, in the pipeline workers) on the CPU
    backend, where per-patch crops cost 2.5x less than the device's dense resampling, and
    on the device everywhere else."""
    if setting == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return setting


def grid_rows(scales: Sequence[float]) -> int:
    """Distinct row intervals the patch grid can need: ceil(s) * 2 positions per scale
    (voc_jax.data.crops.share_intervals), the cost-determining size of the shared crop pass."""
    return int(sum(2 * math.ceil(float(s)) for s in scales))


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D 'data' mesh over every device."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything a command needs that the config decides, built once (``build``)."""

    settings: settings.Settings
    patches: PatchConfig
    model: Model
    mesh: jax.sharding.Mesh
    config: ml_collections.ConfigDict  # as given; only saved (WORKDIR/config.json)

    @classmethod
    def build(
        cls, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
    ) -> Experiment:
        config = class_config.resolve(config)  # data.classes, model.num_classes settled
        s = settings.read(config)
        model = build_model(s.model, s.init, s.train.seed, s.data.classes)
        return cls(s, patch_config(config), model, mesh or make_mesh(), config)

    # ------------------------------------------------------------------ settings
    @property
    def train(self) -> settings.TrainSettings:
        return self.settings.train

    @property
    def data(self) -> settings.DataSettings:
        return self.settings.data

    @property
    def eval(self) -> settings.EvalSettings:
        return self.settings.eval

    @property
    def cache(self) -> settings.CacheSettings:
        return self.settings.cache

    @property
    def checkpoint(self) -> settings.CheckpointSettings:
        return self.settings.checkpoint

    # ------------------------------------------------------------------ devices
    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, Spec("data"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, Spec())

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's images -> global arrays sharded along the data axis."""
        return distributed.global_batch(batch, self.batch_sharding)

    def put_params(self, params: Any) -> Any:
        return jax.device_put(params, self.replicated)

    # ------------------------------------------------------------------ data
    def dataset(
        self,
        records: Sequence[VocRecord],
        *,
        train: bool,
        epoch: int = 0,
        features: Any = None,
    ) -> grain.MapDataset:
        """This process's batches of one epoch: training (``train.images_per_step`` images a
        call, reshuffled per epoch; ``features``: rows of a feature cache instead of pixels)
        or evaluation (``eval.images_per_step``, every record once, seeded apart)."""
        per_call = self.train.images_per_step if train else self.eval.images_per_step
        return epoch_dataset(
            records,
            self.patches,
            images_per_batch=per_call // jax.process_count(),
            train=train,
            seed=self.train.seed if train else self.train.seed + EVAL_SEED_OFFSET,
            epoch=epoch,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            features=features,
        )

    # ------------------------------------------------------------------ training
    def optimizer(self, steps_per_epoch: int) -> optim.Optimizer:
        """The optimizer for an epoch of ``steps_per_epoch`` SGD updates (the schedule is in
        epochs); rates scaled by ``images_per_step`` when ``optim.scale_lr``."""
        o, g = self.settings.optim, self.train.images_per_step
        if o.scale_lr and g > 1:
            o = o.scaled(g)
        return optim.make_optimizer(
            o, self.model.params, max(1, steps_per_epoch), self.train.num_epochs
        )

    def initial_state(self, optimizer: optim.Optimizer) -> steps.TrainState:
        """The fresh train state, replicated over the mesh (from host values, identical on
        every process, so device_put builds global arrays)."""
        m = self.model
        state = steps.create_state(m.params, optimizer, self.train.seed, m.batch_stats)
        return jax.device_put(jax.device_get(state), self.replicated)

    def train_step(
        self, optimizer: optim.Optimizer, *, inputs: str = "pixels", unroll: bool | None = None
    ) -> Callable:
        """The jitted train step, the state donated (``inputs="prefix"``: the feature
        cache's rows instead of pixels)."""
        m = self.model
        fn = steps.make_train_step(
            m.module,
            optimizer,
            m.preprocessing,
            patch_size=self.settings.model.patch_size,
            batch_size=self.train.batch_size,
            unroll=unroll,
            inputs=inputs,
            grad_chunks=self.grad_chunks(inputs),
        )
        return xla_options.jit(fn, donate_argnums=(0,))

    def forward_chunk(self) -> int:
        """Patches per forward pass in evaluation and the cache build: ``batch_size``, in
        the train step's slices when ``grad_chunks`` slices it (the same working-set reason)."""
        return self.train.batch_size // self.grad_chunks()

    def grad_chunks(self, inputs: str = "pixels") -> int:
        """``grad_chunks``, with 0 (auto) resolved: on the CPU backend, from pixels, slices of
        the backbone's ``cpu_grad_slice`` patches (VGG-16 and ResNet-50: 16, measured faster
        there, docs/performance.md); the whole batch elsewhere, from the feature cache and
        with BatchNorm updates."""
        chunks, batch = self.train.grad_chunks, self.train.batch_size
        if chunks:
            return chunks
        m = self.settings.model
        piece = models.backbone(m.arch).cpu_grad_slice
        auto = (
            jax.default_backend() == "cpu"
            and piece > 0
            and inputs == "pixels"
            and not m.bn_update
            and batch % piece == 0
        )
        return batch // piece if auto else 1

    # ------------------------------------------------------------------ inference
    def eval_step(self, *, probabilities: bool = False, unroll: bool | None = None) -> Callable:
        """The jitted evaluation step: image scores (and, with ``probabilities``, every
        patch's softmax: predictions and score maps use it)."""
        m = self.model
        fn = steps.make_eval_step(
            m.module,
            m.preprocessing,
            patch_size=self.settings.model.patch_size,
            batch_size=self.forward_chunk(),
            exponent=self.eval.exponent,
            unroll=unroll,
            probabilities=probabilities,
        )
        return xla_options.jit(fn)

    def prefix_step(self, dtype: Any) -> Callable:
        """The jitted prefix step: every patch's activations at the backbone's frozen prefix
        (AlexNet, VGG-16: fc6; ResNet-50: the pooled features) in ``dtype`` (the cache's)."""
        m = self.model
        fn = steps.make_prefix_step(
            m.module,
            m.preprocessing,
            patch_size=self.settings.model.patch_size,
            batch_size=self.forward_chunk(),
            dtype=dtype,
        )
        return xla_options.jit(fn)
