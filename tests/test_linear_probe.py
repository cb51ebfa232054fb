"""voc_jax/linear_probe.py: the whole-image linear baseline: photos as the probe shows them,
per-class C chosen on val, difficult-only images left out, the VOC protocols' APs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from voc_jax import linear_probe as lp
from voc_jax.classes import VOC_CLASSES


def test_photos_at_the_input_size_or_their_own_rounded(tmp_path):
    path = tmp_path / "p.jpg"
    Image.fromarray(np.zeros((333, 500, 3), np.uint8)).save(path)
    assert lp.photo(path, lp.ProbeSettings(size=224)).shape == (224, 224, 3)
    assert lp.photo(path, lp.ProbeSettings(size=None, round_to=16)).shape == (336, 496, 3)
    assert lp.photo(path, lp.ProbeSettings(size=None)).shape == (320, 512, 3)  # 64, the default
    Image.fromarray(np.zeros((320, 480, 3), np.uint8)).save(path)
    assert lp.photo(path, lp.ProbeSettings(size=None, round_to=16)).shape == (320, 480, 3)


def separable(n: int, seed: int, noise: float = 0.1):
    """Features that encode the targets linearly (plus noise) and their targets."""
    rng = np.random.default_rng(seed)
    targets = np.where(rng.random((n, len(VOC_CLASSES))) < 0.3, 1, -1).astype(np.int8)
    x = np.concatenate([targets.astype(np.float32), rng.standard_normal((n, 12))], 1)
    return x + noise * rng.standard_normal(x.shape).astype(np.float32), targets


def test_separable_features_give_perfect_ap_and_difficult_only_images_are_left_out():
    train_x, train_t = separable(120, 0)
    val_x, val_t = separable(60, 1)
    test_x, test_t = separable(80, 2)
    train_t[:5, 3] = 0  # difficult-only for class 3: neither positive nor negative
    train_x[:5, 3] = 50.0  # ... so their (misleading) feature values must not matter
    cs = lp.choose_c(train_x, train_t, val_x, val_t, lp.C_GRID, widen=False).cs
    assert len(cs) == len(VOC_CLASSES) and set(cs) <= set(lp.C_GRID)
    trainval_x, trainval_t = np.concatenate([train_x, val_x]), np.concatenate([train_t, val_t])
    scores = lp.fit_and_score(trainval_x, trainval_t, test_x, cs)
    from voc_jax import metrics

    assert metrics.mean_average_precision(scores, test_t, "area")["map"] == pytest.approx(1.0)


def test_c_is_chosen_on_val():
    """Pure-noise features: whatever C wins on val, the choice is made per class from the grid
    the settings give (a grid of one is that one)."""
    x, t = separable(60, 3, noise=5.0)
    assert lp.choose_c(x, t, x, t, (0.5,)).cs == [0.5] * len(VOC_CLASSES)


def test_the_grid_widens_past_an_edge_while_val_ap_improves():
    """A val AP that peaks at C=1e-7, below the grid: the choice walks down to it and stops
    there (interior: no edge); one that keeps rising to C_LIMITS is reported on the edge;
    a flat one stays at the grid's smallest C without walking (ties: no improvement)."""
    peak = lambda v: -abs(np.log10(v) + 7)  # noqa: E731
    assert lp._widened(peak, lp.C_GRID) == (pytest.approx(1e-7), False)
    rising = lambda v: np.log10(v)  # noqa: E731
    assert lp._widened(rising, lp.C_GRID) == (pytest.approx(lp.C_LIMITS[1]), True)
    calls = []
    flat = lambda v: calls.append(v) or 0.5  # noqa: E731
    assert lp._widened(flat, lp.C_GRID) == (1e-5, False)
    assert len(calls) == len(lp.C_GRID) + 1  # one look past the edge, no walk


def test_widening_choose_c_reports_classes_on_the_edge():
    """Separable features: the val AP is 1 at every C (ties), nothing walks, nothing is on
    the edge; every chosen C is on the grid or one decade past it."""
    train_x, train_t = separable(80, 5)
    val_x, val_t = separable(40, 6)
    choice = lp.choose_c(train_x, train_t, val_x, val_t, lp.C_GRID)
    assert choice.at_edge == {} and len(choice.cs) == len(VOC_CLASSES)
    assert all(1e-6 <= c <= 1e3 for c in choice.cs)


def test_a_class_without_training_positives_scores_every_image_alike():
    x, t = separable(40, 4)
    t[:, 5] = -1  # no positive of class 5 in training
    scores = lp.fit_and_score(x, t, x[:7], [1.0] * len(VOC_CLASSES))
    assert np.unique(scores[:, 5]).size == 1 and np.unique(scores[:, 4]).size > 1


def test_extract_batches_by_shape_and_keeps_record_order(tmp_path):
    """Photos of several sizes through a stand-in extractor (each photo's mean colour): the
    rows come back in record order, equal to a plain loop over the photos, with each shape
    compiled for one batch size (fitted: a power of two holding its photos, at most 16)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    sizes = [(40, 30), (40, 30), (30, 40), (40, 30), (56, 33)]
    records = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(path)
        records.append(SimpleNamespace(image_path=path))
    seen = []

    def extractor(pixels):
        seen.append(pixels.shape)
        return pixels.reshape(len(pixels), -1, 3).mean(1)

    for fit in (True, False):
        settings = lp.ProbeSettings(size=None, round_to=8, fit_batch=fit)
        seen.clear()
        got = lp.extract(extractor, records, settings, progress=False)
        want = np.stack([lp.photo(r.image_path, settings).reshape(-1, 3).mean(0) for r in records])
        np.testing.assert_allclose(got, want, rtol=1e-6)
        batches = {shape[1:]: shape[0] for shape in seen}
        assert len(seen) == len(batches) == 3  # one call per shape here
        assert sorted(batches.values()) == ([1, 1, 4] if fit else [16, 16, 16])
    assert [lp.shape_batch(n, lp.ProbeSettings()) for n in (1, 2, 3, 9, 17)] == [1, 2, 4, 16, 16]


def test_kfolds_hold_every_image_out_once_and_cv_chooses_from_the_grid():
    folds = lp.kfolds(23, 3)
    held = np.concatenate([b for _, b in folds])
    assert sorted(held.tolist()) == list(range(23))
    for a, b in folds:
        assert not set(a) & set(b) and len(a) + len(b) == 23
    x, t = separable(90, 7)
    grid = (1e-3, 1.0)
    settings = lp.ProbeSettings(c_folds=3, widen_c=False, c_grid=grid)
    choice = lp.select_c(settings, x, t, [], [])
    assert len(choice.cs) == len(VOC_CLASSES) and set(choice.cs) <= set(grid)
    # One fold made of train -> val is the official split's choice.
    one = lp.choose_c_folds(x, t, [(np.arange(60), np.arange(60, 90))], grid, False)
    assert one.cs == lp.choose_c(x[:60], t[:60], x[60:], t[60:], grid, False).cs


def test_unit_rows_scale_each_photo_to_length_one():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]], np.float32)
    np.testing.assert_allclose(lp.unit_rows(x), [[0.6, 0.8], [0.0, 0.0], [0.0, 1.0]])
    assert lp.ProbeSettings().l2_rows  # the default (docs/real_voc.md: measured)
