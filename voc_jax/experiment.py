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
from voc_jax.data.voc import VocDataset, load_dataset
from voc_jax.model import TransferNet
from voc_jax.preprocessing import Preprocessing

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    pass


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
        max_rows=p.max_rows or grid_rows(p.scales),
    )


def grid_rows(scales) -> int:
    """Distinct row intervals the patch grid can need: ceil(s) * 2 positions per scale
    (voc_jax.data.crops.share_intervals), the cost-determining size of the shared crop pass."""
    return int(sum(2 * math.ceil(float(s)) for s in scales))


def validate(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Catch inconsistent settings before data is read or anything compiles."""
    problems = []
    weights_dir = config.init.weights
    if weights_dir and not (Path(weights_dir) / weights_lib.METADATA_FILE).is_file():
        problems.append(
            f"init.weights={weights_dir}: no converted weights there (metadata.json missing). "
            "Create them with convert/alexnet_to_flax.py (for the smoke config, "
            "scripts/quickstart.sh pretrains and converts the synthetic source network), or "
            "pass --config.init.weights='' to train from scratch"
        )
    if config.patches.per_image % config.batch_size:
        problems.append(
            f"patches.per_image={config.patches.per_image} must be a multiple of "
            f"batch_size={config.batch_size} (one image's patches form whole micro-batches)"
        )
    for name in ("images_per_step",):
        if config[name] % device_count:
            problems.append(f"{name}={config[name]} must be a multiple of {device_count} devices")
    if config.images_per_step % jax.process_count():
        problems.append(
            f"images_per_step={config.images_per_step} must be a multiple of the "
            f"{jax.process_count()} processes"
        )
    if config.eval.images_per_step % device_count:
        problems.append(
            f"eval.images_per_step={config.eval.images_per_step} must be a multiple of "
            f"{device_count} devices"
        )
    if config.model.dtype not in ("float32", "bfloat16"):
        problems.append(f"model.dtype must be float32 or bfloat16, got {config.model.dtype!r}")
    if problems:
        raise ConfigError("bad config:\n  " + "\n  ".join(problems))


def resolve_data_root(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """config.data.root, or WORKDIR/data/VOC2007 generated when data.synthetic.generate."""
    root = Path(config.data.root) if config.data.root else workdir / "data" / "VOC2007"
    if root.is_dir():
        return root
    if not config.data.synthetic.generate:
        raise ConfigError(
            f"data.root {root} does not exist; point --config.data.root at a VOC2007 directory "
            "(python -m voc_jax.data.download --out data/ fetches it)"
        )
    s = config.data.synthetic
    if not distributed.is_main():  # process 0 generates; the others wait for it
        distributed.barrier("synthetic data")
        return root
    log.info("generating the synthetic VOC dataset into %s", root)
    generate(
        root,
        SyntheticConfig(
            num_trainval=s.num_trainval,
            num_test=s.num_test,
            seed=s.seed,
            min_side=s.min_side,
            max_side=s.max_side,
        ),
        progress=lambda r: tqdm(r, desc="generating synthetic VOC", unit="img"),
    )
    distributed.barrier("synthetic data")
    return root


def load_split(config: ml_collections.ConfigDict, root: Path, split: str, limit: int) -> VocDataset:
    dataset = load_dataset(
        root,
        split,
        strict=config.data.strict,
        images=config.data.check_images,
        progress=lambda ids: tqdm(ids, desc=f"checking {split}", unit="img", leave=False),
    )
    for problem in dataset.warnings:
        log.warning("%s", problem)
    if limit:
        dataset.records = dataset.records[:limit]
    if not dataset.records:
        raise ConfigError(f"{root}: split {split} has no images")
    return dataset


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
    )
    if params is None:
        size = config.patches.size
        params = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, size, size, 3)))[
            "params"
        ]
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
) -> Any:
    """The jitted train step for this config, with the state donated."""
    from voc_jax import steps

    return jax.jit(
        steps.make_train_step(
            setup.model,
            optimizer,
            labels,
            schedule,
            setup.preprocessing,
            patch_size=config.patches.size,
            batch_size=config.batch_size,
            unroll=unroll,
        ),
        donate_argnums=(0,),
    )
