"""The image losses against NumPy: BCE, ASL (Ridnik et al.'s formula), difficult ignored."""

from __future__ import annotations

import numpy as np
import pytest

from voc_jax.image.loss import Loss, mean_loss, per_pair


def numpy_bce(x, t):
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    out = np.where(t > 0, -np.log(p), -np.log(1 - p))
    return np.where(t != 0, out, 0.0)


def numpy_asl(x, t, gp, gn, clip):
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    pm = np.maximum(p - clip, 0) if clip else p
    pos = -((1 - p) ** gp) * np.log(p)
    neg = -(pm**gn) * np.log(np.maximum(1 - pm, 1e-8))
    return np.where(t != 0, np.where(t > 0, pos, neg), 0.0)


@pytest.fixture
def example():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 20)).astype(np.float32) * 2
    t = rng.choice(np.array([-1, 0, 1], np.int8), size=(5, 20), p=[0.7, 0.1, 0.2])
    return x, t


def test_bce_equals_numpy_and_ignores_difficult(example):
    x, t = example
    np.testing.assert_allclose(np.asarray(per_pair(x, t, Loss("bce"))), numpy_bce(x, t), rtol=1e-5)
    want = numpy_bce(x, t).sum() / (t != 0).sum()
    np.testing.assert_allclose(float(mean_loss(x, t, Loss("bce"))), want, rtol=1e-5)


@pytest.mark.parametrize("gp,gn,clip", [(0.0, 4.0, 0.05), (1.0, 2.0, 0.0), (0.0, 0.0, 0.0)])
def test_asl_equals_its_formula(example, gp, gn, clip):
    x, t = example
    got = np.asarray(per_pair(x, t, Loss("asl", gp, gn, clip)))
    np.testing.assert_allclose(got, numpy_asl(x, t, gp, gn, clip), rtol=1e-5, atol=1e-7)
    if gp == gn == clip == 0:  # the cross-entropy
        np.testing.assert_allclose(got, numpy_bce(x, t), rtol=1e-5)


def test_bad_loss_is_refused():
    for bad in (dict(kind="focal"), dict(kind="asl", clip=1.0), dict(kind="asl", gamma_neg=-1)):
        with pytest.raises(ValueError):
            Loss(**bad)
