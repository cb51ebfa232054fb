"""Pooling of position logits against straightforward NumPy loops over valid positions."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from voc_jax.image.pooling import Pooling, pool


def loop_pool(x: np.ndarray, valid: np.ndarray, p: Pooling) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[2]))
    for b in range(x.shape[0]):
        for c in range(x.shape[2]):
            v = [float(x[b, i, c]) for i in range(x.shape[1]) if valid[b, i]]
            if p.kind == "avg":
                out[b, c] = sum(v) / len(v)
            elif p.kind == "max":
                out[b, c] = max(v)
            elif p.kind == "lse":
                out[b, c] = math.log(sum(math.exp(p.r * t) for t in v) / len(v)) / p.r
            else:
                top = sorted(v, reverse=True)[: p.k]
                out[b, c] = sum(top) / len(top)
    return out


@pytest.fixture
def example():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 12, 4)).astype(np.float32) * 3
    valid = rng.random((3, 12)) < 0.6
    valid[:, 0] = True
    valid[2] = False
    valid[2, 5] = True  # one valid position only
    return x, valid


@pytest.mark.parametrize(
    "p", [Pooling("avg"), Pooling("max"), Pooling("lse", r=0.5), Pooling("lse", r=8.0),
          Pooling("topk", k=1), Pooling("topk", k=3), Pooling("topk", k=40)],
    ids=str,
)  # fmt: skip
def test_pooling_equals_a_loop_over_valid_positions(example, p):
    x, valid = example
    np.testing.assert_allclose(np.asarray(pool(x, valid, p)), loop_pool(x, valid, p), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_lse_spans_average_and_maximum(example):
    x, valid = example
    avg = loop_pool(x, valid, Pooling("avg"))
    top = loop_pool(x, valid, Pooling("max"))
    np.testing.assert_allclose(np.asarray(pool(x, valid, Pooling("lse", r=1e-4))), avg, atol=1e-2)
    np.testing.assert_allclose(np.asarray(pool(x, valid, Pooling("lse", r=1e4))), top, atol=1e-3)
    # Large logits: no overflow (the maximum is taken out first).
    big = np.asarray(pool(x * 1000, valid, Pooling("lse", r=50.0)))
    assert np.isfinite(big).all()


def test_padded_positions_get_no_gradient(example):
    x, valid = example
    x = np.where(valid[..., None], x, 300.0).astype(np.float32)  # padding far above: no overflow
    for p in (Pooling("avg"), Pooling("max"), Pooling("lse"), Pooling("topk", k=3)):
        g = jax.grad(lambda t, p=p: pool(t, valid, p).sum())(x)
        assert np.isfinite(np.asarray(g)).all() and np.all(np.asarray(g)[~valid] == 0), p


@pytest.mark.parametrize("bad", [dict(kind="mean"), dict(kind="lse", r=0.0),
                                 dict(kind="lse", r=-1.0), dict(kind="topk", k=0)])  # fmt: skip
def test_bad_pooling_is_refused(bad):
    with pytest.raises(ValueError):
        Pooling(**bad)
