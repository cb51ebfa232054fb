"""What training and evaluation share: config -> datasets, model, initial params,
preprocessing, patch settings, device mesh. Validation happens here, before any long work."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec
from tqdm import tqdm

from voc_jax import distributed
from voc_jax import weights as weights_lib
from voc_jax.data.pipeline import PatchConfig
from voc_jax.data.synthetic import SyntheticConfig, generate
from voc_jax.data.voc import DecodedCache, VocDataset, load_dataset
from voc_jax.errors import ConfigError, DataError
from voc_jax.model import TransferNet
from voc_jax.preprocessing import Preprocessing

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"


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


def grid_rows(scales) -> int:
    """Distinct row intervals the patch grid can need: ceil(s) * 2 positions per scale
    (voc_jax.data.crops.share_intervals), the cost-determining size of the shared crop pass."""
    return int(sum(2 * math.ceil(float(s)) for s in scales))


def resolve_data_root(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """Where the dataset is, generating the synthetic one only where that was asked for.

    ``data.root`` empty: ``WORKDIR/data/VOC2007``, generated when absent if
    ``data.synthetic.generate`` (the smoke configs). An explicit ``data.root`` that does not
    exist is an error naming it (a typo must not quietly train on generated data), unless
    ``data.generate=True`` asks for the synthetic set to be generated there.
    """
    explicit = bool(config.data.root)
    root = Path(config.data.root) if explicit else workdir / "data" / "VOC2007"
    if root.is_dir():
        return root
    wanted = config.data.generate if explicit else config.data.synthetic.generate
    if not wanted:
        hint = (
            "; to generate the synthetic dataset there instead, add --config.data.generate=True"
            if explicit
            else ""
        )
        raise DataError(
            f"data.root {root} does not exist; point --config.data.root at a VOC2007 directory "
            f"(python -m voc_jax.data.download --out data/ fetches it){hint}"
        )
    if not distributed.is_main():  # process 0 generates; the others wait for it
        distributed.barrier("synthetic data")
        return root
    log.info("generating the synthetic VOC dataset into %s", root)
    generate(
        root,
        synthetic_config(config),
        progress=lambda r: tqdm(r, desc="generating synthetic VOC", unit="img"),
    )
    distributed.barrier("synthetic data")
    return root


def synthetic_config(config: ml_collections.ConfigDict) -> SyntheticConfig:
    """The generator's settings from ``config.data.synthetic``."""
    s = config.data.synthetic
    return SyntheticConfig(
        num_trainval=s.num_trainval,
        num_test=s.num_test,
        seed=s.seed,
        min_side=s.min_side,
        max_side=s.max_side,
    )


def load_split(
    config: ml_collections.ConfigDict,
    root: Path,
    split: str,
    limit: int,
    *,
    decoded: DecodedCache | None = None,
    need_boxes: bool = False,
) -> VocDataset:
    """A validated split; ``need_boxes``: refuse a split in which no image has an object
    (training on it would only ever see background)."""
    dataset = load_dataset(
        root,
        split,
        strict=config.data.strict,
        images=config.data.check_images,
        decoded=decoded,
        progress=lambda ids: tqdm(ids, desc=f"checking {split}", unit="img", leave=False),
    )
    for problem in dataset.warnings:
        log.warning("%s", problem)
    if limit:
        dataset.records = dataset.records[:limit]
    if not dataset.records:
        raise DataError(f"{root}: split {split} has no images")
    if need_boxes and not any(r.num_objects for r in dataset.records):
        raise DataError(
            f"{root}: no image of split {split} has an object; every patch would be background"
        )
    return dataset


@dataclasses.dataclass
class Splits:
    """The validated training and test splits of a run, and its patch settings."""

    root: Path
    train: VocDataset
    test: VocDataset
    patch_config: PatchConfig


def load_splits(config: ml_collections.ConfigDict, workdir: Path, *, train: bool = True) -> Splits:
    """Resolve (or generate) the data root and load the splits a run needs, validated."""
    root = resolve_data_root(config, workdir)
    # Images decoded once are remembered in the workdir, saved only when every check passed
    # (a failed check leaves the workdir as it was).
    decoded = DecodedCache(workdir if distributed.is_main() else None)
    test = load_split(
        config, root, config.data.test_split, config.data.max_test_images, decoded=decoded
    )
    train_set = test
    if train and config.num_epochs > 0:
        train_set = load_split(
            config,
            root,
            config.data.train_split,
            config.data.max_train_images,
            decoded=decoded,
            need_boxes=True,
        )
    decoded.save()
    log.info(
        "data %s: %d %s images, %d %s images",
        root,
        len(train_set),
        config.data.train_split if train_set is not test else "(no training)",
        len(test),
        config.data.test_split,
    )
    return Splits(root, train_set, test, patch_config(config))


@dataclasses.dataclass
class ModelSetup:
    model: TransferNet
    params: Any
    preprocessing: Preprocessing
    source: dict[str, Any]


def build_model(config: ml_collections.ConfigDict) -> ModelSetup:
    """TransferNet and its initial params: from converted weights or from scratch."""
    m = config.model
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    if config.init.weights:
        if m.width != 1.0:
            raise ConfigError(
                f"model.width={m.width}: converted weights are the real AlexNet (width 1.0)"
            )
        converted, metadata = weights_lib.load_converted(config.init.weights)
        has_head = metadata["architecture"]["name"] == "transfer"
        params = weights_lib.transfer_params(
            converted,
            metadata,
            num_classes=m.num_classes,
            head_hidden=m.head_hidden,
            seed=config.seed,
            keep_head=bool(config.init.keep_head and has_head),
        )
        conv1_padding = int(metadata["architecture"]["conv1_padding"])
        prep = weights_lib.preprocessing_of(metadata)
        source = {"weights": str(config.init.weights), **metadata["source"]}
    else:
        conv1_padding = m.conv1_padding
        prep = Preprocessing(
            channel_order=config.init.channel_order,
            scale=config.init.scale,
            mean=tuple(config.init.mean),
            std=tuple(config.init.std),
        )
        params = None
        source = {"weights": None, "kind": "scratch"}
    model = TransferNet(
        num_classes=m.num_classes,
        conv1_padding=conv1_padding,
        dropout_rate=m.dropout_rate,
        head_hidden=m.head_hidden,
        dtype=dtype,
        width=m.width,
    )
    if params is None:
        size = config.patches.size
        # One compiled program (an eager init compiles every initialiser op on its own).
        init = jax.jit(model.init)
        params = init(jax.random.PRNGKey(config.seed), jnp.zeros((1, size, size, 3)))["params"]
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    return ModelSetup(model, params, prep, source)


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D 'data' mesh over every device."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, Spec("data"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, Spec())


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's images -> global arrays sharded along the data axis."""
    return distributed.global_batch(batch, sharding)


def local_images(global_images: int) -> int:
    """Images this process reads per call (the global count split over processes)."""
    return global_images // jax.process_count()


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    if not distributed.is_main():
        return
    path = workdir / CONFIG_FILE
    text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text() != text:
        log.warning("%s differs from this run's config; keeping the old one as %s.old", path, path)
        path.replace(path.with_suffix(".json.old"))
    path.write_text(text)


def load_config(workdir: Path) -> ml_collections.ConfigDict:
    path = workdir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path}: not found; is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def make_train_state(
    config: ml_collections.ConfigDict, setup: ModelSetup, steps_per_epoch: int
) -> tuple[Any, Any, Any, Any]:
    """(state, optimizer, labels, schedule) for these params and the optim config."""
    from voc_jax import optim, steps

    optim_config = config.optim
    if config.optim.get("scale_lr", False) and config.images_per_step > 1:
        optim_config = optim.scaled_rates(config.optim, config.images_per_step)
    optimizer, labels, schedule = optim.make_optimizer(
        optim_config, setup.params, max(1, steps_per_epoch), config.num_epochs
    )
    state = steps.create_state(setup.params, optimizer, config.seed)
    return state, optimizer, labels, schedule


def jit_train_step(
    config: ml_collections.ConfigDict,
    setup: ModelSetup,
    optimizer: Any,
    labels: Any,
    schedule: Any,
    unroll: bool | None = None,
    inputs: str = "pixels",
) -> Any:
    """The jitted train step for this config, with the state donated (``inputs="fc6"``: the
    feature cache's step)."""
    from voc_jax import steps, xla_options

    return xla_options.jit(
        steps.make_train_step(
            setup.model,
            optimizer,
            labels,
            schedule,
            setup.preprocessing,
            patch_size=config.patches.size,
            batch_size=config.batch_size,
            unroll=unroll,
            inputs=inputs,
        ),
        donate_argnums=(0,),
    )
