"""voc_jax.data.synthetic_source: the single-object source task of the transfer demo."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from voc_jax.data.synthetic import STYLES
from voc_jax.data.synthetic_source import SourceConfig, make_split, source_styles


def test_source_classes_are_never_target_patterns():
    styles = source_styles(300)
    assert len(set(styles)) == 300
    assert not set(styles) & set(STYLES)


def test_small_class_counts_cover_every_shape():
    shapes = collections.Counter(s.shape for s in source_styles(100))
    assert len(shapes) == 10 and set(shapes.values()) == {10}


def test_class_choice_is_seeded():
    assert source_styles(50, seed=0) == source_styles(50, seed=0)
    assert source_styles(50, seed=0) != source_styles(50, seed=1)


@pytest.mark.parametrize("n", [0, 301])
def test_bad_class_counts(n):
    with pytest.raises(ValueError, match="num_classes"):
        source_styles(n)


def test_split_is_deterministic_balanced_and_varied():
    config = SourceConfig(num_classes=5, size=48)
    a, labels = make_split("train", 20, config, seed=3)
    b, _ = make_split("train", 20, config, seed=3)
    val, _ = make_split("val", 20, config, seed=3)
    assert a.shape == (20, 48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, val)  # splits are different draws
    assert np.bincount(labels).tolist() == [4] * 5
    # Two images of the same class differ (position, scale, rotation, background).
    assert np.abs(a[0].astype(int) - a[5].astype(int)).mean() > 10


def test_object_colour_dominates_the_centre():
    """The class's colour is present: the mean centre colour of class-k images is closer to
    class k's colour than to the other classes' on average."""
    config = SourceConfig(num_classes=4, size=64, max_shift=0.0)
    images, labels = make_split("train", 40, config, seed=0)
    styles = source_styles(4)
    colours = np.array([s.colour for s in styles], float)
    centre = images[:, 24:40, 24:40].reshape(len(images), -1, 3).astype(float)
    hits = 0
    for img, label in zip(centre, labels, strict=True):
        # distance from each pixel to each class colour, best pixel per class
        d = np.linalg.norm(img[:, None, :] - colours[None], axis=-1).min(axis=0)
        hits += int(np.argmin(d) == label)
    assert hits >= 30


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        make_split("test", 1)
