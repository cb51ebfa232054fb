"""The splits a run reads: the data root resolved (or the synthetic set generated where that
was asked for), each split loaded and validated, decoded images remembered in the workdir."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tqdm import tqdm

from voc_jax import distributed
from voc_jax.classes import VOC_CLASSES
from voc_jax.data.formats import load_dataset
from voc_jax.data.synthetic import SyntheticConfig, generate
from voc_jax.data.voc import DEFAULT_MAX_PIXELS, DecodedCache, VocDataset, set_max_pixels
from voc_jax.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where a run's images come from and how they are checked (``config.data``)."""

    root: str  # "" = WORKDIR/data/VOC2007
    generate: bool  # generate the synthetic set at an explicit root that does not exist
    synthetic_generate: bool  # ... or at WORKDIR/data/VOC2007 when root is empty
    synthetic: SyntheticConfig
    train_split: str
    test_split: str
    max_train_images: int
    max_test_images: int
    check_images: str
    strict: bool
    workers: int
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    format: str = "voc"  # voc | coco | labels (voc_jax.data.formats)
    classes: tuple[str, ...] = VOC_CLASSES  # settled by voc_jax.class_config


@dataclasses.dataclass(frozen=True)
class Splits:
    """The validated training and test splits of a run (``train is test`` when the run does
    not train), and the images decoded while checking them."""

    root: Path
    train: VocDataset
    test: VocDataset
    decoded: DecodedCache

    def remember_decoded(self) -> None:
        """Save the decode checks into the workdir (``image_check.json``), once the run is
        known to proceed: a run that is then refused leaves the workdir as it was."""
        self.decoded.save()


def resolve_data_root(data: DataSettings, workdir: Path) -> Path:
    """Where the dataset is, generating the synthetic one only where that was asked for.

    ``data.root`` empty: ``WORKDIR/data/VOC2007``, generated when absent if
    ``data.synthetic.generate`` (the smoke configs). An explicit ``data.root`` that does not
    exist is an error naming it (a typo must not quietly train on generated data), unless
    ``data.generate=True`` asks for the synthetic set to be generated there.
    """
    explicit = bool(data.root)
    root = Path(data.root) if explicit else workdir / "data" / "VOC2007"
    if root.is_dir():
        return root
    wanted = data.generate if explicit else data.synthetic_generate
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
        data.synthetic,
        progress=lambda r: tqdm(r, desc="generating synthetic VOC", unit="img"),
    )
    distributed.barrier("synthetic data")
    return root


def load_split(
    data: DataSettings,
    root: Path,
    split: str,
    limit: int,
    *,
    decoded: DecodedCache | None = None,
    need_labels: bool = False,
) -> VocDataset:
    """A validated split; ``need_labels``: refuse a split in which no image has an object or
    a label (training on it would only ever see background)."""
    dataset = load_dataset(
        data.format,
        root,
        split,
        classes=data.classes,
        strict=data.strict,
        images=data.check_images,
        decoded=decoded,
        progress=lambda ids: tqdm(ids, desc=f"checking {split}", unit="img", leave=False),
    )
    for problem in dataset.warnings:
        log.warning("%s", problem)
    if limit:
        dataset.records = dataset.records[:limit]
    if not dataset.records:
        raise DataError(f"{root}: split {split} has no images")
    if need_labels and not any(r.num_objects or (r.targets() == 1).any() for r in dataset.records):
        raise DataError(
            f"{root}: no image of split {split} has an object or a label; there is nothing to "
            "learn (every patch would be background)"
        )
    return dataset


def check_disjoint(train: VocDataset, test: VocDataset, data: DataSettings) -> None:
    """Refuse a test split that shares images with the training split: its AP would measure
    memory, not transfer."""
    trained = {r.image_path.resolve() for r in train.records}
    shared = [r.image_path for r in test.records if r.image_path.resolve() in trained]
    if shared:
        raise DataError(
            f"{test.root}: {len(shared)} images of the test split {data.test_split!r} are also "
            f"in the training split {data.train_split!r} (first: {shared[0]}); set "
            "--config.data.test_split to a split without them"
        )


def load_splits(data: DataSettings, workdir: Path, *, train: bool) -> Splits:
    """Resolve (or generate) the data root and load the splits a run needs, validated: the
    test split always, the training split when ``train``."""
    set_max_pixels(data.max_image_pixels)  # every image read from here on, workers too
    root = resolve_data_root(data, workdir)
    # Images decoded once are remembered in the workdir (Splits.remember_decoded), saved only
    # when every check passed and the run proceeds.
    decoded = DecodedCache(workdir if distributed.is_main() else None)
    test = load_split(data, root, data.test_split, data.max_test_images, decoded=decoded)
    train_set = test
    if train:
        train_set = load_split(
            data, root, data.train_split, data.max_train_images, decoded=decoded, need_labels=True
        )
    if train:
        check_disjoint(train_set, test, data)
        log.info("data %s: %d %s images, %d %s images", root, len(train_set),
                 data.train_split, len(test), data.test_split)  # fmt: skip
    else:
        log.info("data %s: %d %s images (evaluation only)", root, len(test), data.test_split)
    return Splits(root, train_set, test, decoded)
