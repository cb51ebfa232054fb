"""voc_jax/data/splits.py: the data root resolved (a typo never trains on generated data),
the splits loaded from the genuine VOC 2007 subset, limits applied, an empty split refused."""

from __future__ import annotations

import dataclasses

import pytest

from voc_jax.data.splits import DataSettings, load_splits, resolve_data_root
from voc_jax.data.synthetic import SyntheticConfig
from voc_jax.errors import DataError


def settings(root: str = "", **changes) -> DataSettings:
    base = DataSettings(
        root=root,
        generate=False,
        synthetic_generate=False,
        synthetic=SyntheticConfig(num_trainval=4, num_test=3, seed=0, min_side=80, max_side=100),
        train_split="trainval",
        test_split="test",
        max_train_images=0,
        max_test_images=0,
        check_images="sizes",
        strict=False,
        workers=0,
    )
    return dataclasses.replace(base, **changes)


def test_a_missing_explicit_root_is_named_and_never_generated(tmp_path):
    root = tmp_path / "typo" / "VOC2007"
    with pytest.raises(DataError, match=f"data.root {root} does not exist.*data.generate=True"):
        resolve_data_root(settings(str(root)), tmp_path)
    assert not root.exists()


def test_the_synthetic_set_is_generated_only_where_asked(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_root(settings(), tmp_path / "w")
    root = resolve_data_root(settings(synthetic_generate=True), tmp_path / "w")
    assert root == tmp_path / "w" / "data" / "VOC2007" and (root / "Annotations").is_dir()
    explicit = tmp_path / "here"
    assert resolve_data_root(settings(str(explicit), generate=True), tmp_path) == explicit


def test_real_splits_with_limits(shared_data, tmp_path):
    root = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    splits = load_splits(
        settings(str(root), max_train_images=5, max_test_images=3), tmp_path, train=True
    )
    assert (len(splits.train), len(splits.test)) == (5, 3)
    assert splits.root == root
    only_test = load_splits(settings(str(root), max_test_images=2), tmp_path, train=False)
    assert only_test.train is only_test.test


def test_an_empty_split_is_refused(tmp_path):
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main" / "test.txt").write_text("")
    with pytest.raises(DataError, match="split test has no images"):
        load_splits(settings(str(root)), tmp_path / "w", train=False)
