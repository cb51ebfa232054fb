"""voc_jax/pooling.py: the 3x3/2 max-pool's values and gradient routing are Flax's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from voc_jax.pooling import max_pool_3x3_s2


@pytest.mark.parametrize("shape", [(2, 55, 55, 8), (1, 13, 17, 3), (3, 27, 27, 4)])
def test_max_pool_and_its_gradient_are_flax_s(shape):
    rng = np.random.default_rng(0)
    # Coarse values: many ties inside windows, where the first maximum must get the gradient.
    x = jnp.asarray(rng.integers(0, 4, shape), jnp.float32)
    ref = lambda v: nn.max_pool(v, (3, 3), strides=(2, 2), padding="VALID")  # noqa: E731
    # Jitted, as in a step (op by op, each window's slice compiled a program of its own).
    pool, ref = jax.jit(max_pool_3x3_s2), jax.jit(ref)
    np.testing.assert_array_equal(pool(x), ref(x))

    @jax.jit
    def gradients(cotangent):
        return (jax.grad(lambda v: (max_pool_3x3_s2(v) * cotangent).sum())(x),
                jax.grad(lambda v: (ref(v) * cotangent).sum())(x))  # fmt: skip

    # Integer cotangents: sums are exact in any order, so the routing must match bitwise.
    exact = jnp.asarray(rng.integers(-50, 50, ref(x).shape), jnp.float32)
    ours, theirs = gradients(exact)
    np.testing.assert_array_equal(ours, theirs)
    # Real cotangents: overlapping windows add in another order, equal to float rounding.
    weights = jnp.asarray(rng.standard_normal(ref(x).shape), jnp.float32)
    ours, theirs = gradients(weights)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
