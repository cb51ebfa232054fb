"""AlexNet's 3x3 / stride 2 max-pool with a cheaper gradient.

XLA lowers a max-pool's gradient to select_and_scatter, which on CPU cost an AlexNet step
about as much as PyTorch's whole backward pass through the pools (364 ms against 38 ms). Here
the pool is the maximum of its nine strided windows, and its gradient routes each output's
cotangent to the first window (in row-major window order) that holds the maximum, exactly
select_and_scatter's rule, ties included, as nine masked, interior-padded adds: dense
element-wise work that every backend does fast. Values are bitwise those of
``flax.linen.max_pool(x, (3, 3), (2, 2), "VALID")`` and so is the routing of the gradient;
where windows overlap, an input's cotangents are added in another order (equal to float
rounding). Both are tested.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

WINDOW, STRIDE = 3, 2


def _out(size: int) -> int:
    return (size - WINDOW) // STRIDE + 1


def _window(x: jax.Array, i: int, j: int, ho: int, wo: int) -> jax.Array:
    """The input values that window offset (i, j) contributes to each output, [N, Ho, Wo, C]."""
    return x[:, i : i + STRIDE * (ho - 1) + 1 : STRIDE, j : j + STRIDE * (wo - 1) + 1 : STRIDE, :]


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, (H-3)//2+1, (W-3)//2+1, C], VALID padding."""
    ho, wo = _out(x.shape[1]), _out(x.shape[2])
    offsets = [(i, j) for i in range(WINDOW) for j in range(WINDOW)]
    return functools.reduce(jnp.maximum, [_window(x, i, j, ho, wo) for i, j in offsets])


def _forward(x: jax.Array):
    y = max_pool_3x3_s2(x)
    return y, (x, y)


def _backward(residuals, g):
    x, y = residuals
    ho, wo = y.shape[1:3]
    taken = jnp.zeros(y.shape, bool)
    dx = jnp.zeros_like(x)
    zero = jnp.zeros((), x.dtype)
    for i in range(WINDOW):
        for j in range(WINDOW):
            hit = (_window(x, i, j, ho, wo) == y) & ~taken  # the first maximum wins
            taken = taken | hit
            span_h, span_w = STRIDE * (ho - 1) + 1, STRIDE * (wo - 1) + 1
            placement = [
                (0, 0, 0),
                (i, x.shape[1] - i - span_h, STRIDE - 1),
                (j, x.shape[2] - j - span_w, STRIDE - 1),
                (0, 0, 0),
            ]
            dx = dx + jax.lax.pad(jnp.where(hit, g, zero).astype(x.dtype), zero, placement)
    return (dx,)


max_pool_3x3_s2.defvjp(_forward, _backward)
