"""A depthwise convolution (one kxk filter per channel, no bias) as element-wise work, with its
own gradient.

XLA's CPU backend runs a grouped convolution with one group per channel 5-30x slower than
PyTorch (forward and gradients; ``scripts/benchmark.py --only depthwise``), and an autodiffed
sum of shifted slices spends its backward in k*k full-size padded copies. Here the forward is
the sum of the k*k shifted, strided slices of the padded input times one weight per channel,
and the backward is written out:

- the input's gradient is a correlation of the output's gradient with the flipped kernel, as
  shifted slices again; on strided layers, one such sum per output phase (the input rows and
  columns ``r mod stride``), interleaved, so no zeros are multiplied;
- the kernel's gradient is one multiply-reduce per tap of the padded input's window and the
  output's gradient.

Everything is a slice, a multiply and an add or a reduction, which XLA fuses and vectorises.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]


def output_size(size: int, kernel: int, stride: int, before: int, after: int) -> int:
    return (size + before + after - kernel) // stride + 1


def _windows(xp: jax.Array, kernel: int, stride: int, ho: int, wo: int):
    """The k*k strided windows of the padded input that tap (i, j) of the kernel meets."""
    for i in range(kernel):
        for j in range(kernel):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            yield i, j, xp[:, rows, cols, :]


def _pad(x: jax.Array, padding: Padding) -> jax.Array:
    return jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))


def _forward(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    k = kernel.shape[0]
    _, h, w, _ = x.shape
    ho = output_size(h, k, stride, *padding[0])
    wo = output_size(w, k, stride, *padding[1])
    out = None
    for i, j, window in _windows(_pad(x, padding), k, stride, ho, wo):
        term = window * kernel[i, j]
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """``x`` [N, H, W, C] (NHWC), ``kernel`` [k, k, C]; ``padding`` ((top, bottom), (left,
    right)) explicit, as TensorFlow's "SAME" needs on strided layers."""
    return _forward(x, kernel, stride, padding)


def _vjp_forward(x, kernel, stride, padding):
    return _forward(x, kernel, stride, padding), (x, kernel)


def _phases(xp: jax.Array, stride: int) -> jax.Array:
    """The padded input split into its stride*stride phases (rows and columns ``r mod
    stride``), stacked: [stride*stride, N, ceil(H/stride), ceil(W/stride), C]; so a strided
    window is a contiguous block of one phase."""
    if stride == 1:
        return xp[None]
    n, hp, wp, c = xp.shape
    hq, wq = -(-hp // stride), -(-wp // stride)
    xp = jnp.pad(xp, ((0, 0), (0, hq * stride - hp), (0, wq * stride - wp), (0, 0)))
    xp = xp.reshape(n, hq, stride, wq, stride, c).transpose(2, 4, 0, 1, 3, 5)
    return xp.reshape(stride * stride, n, hq, wq, c)


def _kernel_gradient(xp: jax.Array, g: jax.Array, k: int, stride: int) -> jax.Array:
    """One multiply-reduce per tap, in a loop: unrolled, XLA's CPU scheduler runs all k*k
    window copies before any reduction (its default, concurrency-first order), which leaves
    none of them in cache and costs 2-4x; the loop keeps one window live at a time."""
    n, ho, wo, c = g.shape
    phases = _phases(xp, stride)
    taps = jnp.array(
        [((i % stride) * stride + j % stride, i // stride, j // stride) for i in range(k) for j in range(k)],
        jnp.int32,
    )  # fmt: skip

    zero = jnp.zeros((), jnp.int32)

    def tap(_, t):
        window = jax.lax.dynamic_slice(phases, (t[0], zero, t[1], t[2], zero), (1, n, ho, wo, c))
        return None, (window[0] * g).sum(axis=(0, 1, 2))

    return jax.lax.scan(tap, None, taps)[1].reshape(k, k, c)


def _phase(g: jax.Array, kernel: jax.Array, stride: int, phase, rows, cols) -> jax.Array:
    """The padded input's gradient at rows ``stride*q + ri`` and columns ``stride*p + rj``
    for q in ``rows`` = (first, count) and p in ``cols``, (ri, rj) = ``phase``: the taps
    i = ri + stride*m (j likewise) each meet the output's gradient shifted by m, so it is
    their sum of shifted slices of ``g``, zero-padded where the shift leaves it."""
    n, ho, wo, c = g.shape
    k, (ri, rj), (q0, hq), (p0, wq) = kernel.shape[0], phase, rows, cols
    reach = (k - 1) // stride
    gp = jnp.pad(g, ((0, 0), (reach, max(0, q0 + hq - ho)), (reach, max(0, p0 + wq - wo)), (0, 0)))
    acc = None
    for i in range(ri, k, stride):
        for j in range(rj, k, stride):
            top = reach - (i - ri) // stride + q0
            left = reach - (j - rj) // stride + p0
            term = gp[:, top : top + hq, left : left + wq, :] * kernel[i, j]
            acc = term if acc is None else acc + term
    return jnp.zeros((n, hq, wq, c), g.dtype) if acc is None else acc


def _input_gradient(g, kernel, stride: int, padding: Padding, h: int, w: int) -> jax.Array:
    (top, bottom), (left, right) = padding
    if stride == 1:  # one phase: only the rows and columns inside the padding
        return _phase(g, kernel, 1, (0, 0), (top, h), (left, w))
    n, _, _, c = g.shape
    hq, wq = -(-(h + top + bottom) // stride), -(-(w + left + right) // stride)
    rows = [
        jnp.stack(
            [_phase(g, kernel, stride, (ri, rj), (0, hq), (0, wq)) for rj in range(stride)], 3
        )
        for ri in range(stride)
    ]  # each [N, hq, wq, stride, C]: the phases interleaved by the reshape
    dxp = jnp.stack(rows, 2).reshape(n, hq * stride, wq * stride, c)
    return dxp[:, top : top + h, left : left + w, :]


def _vjp_backward(stride, padding, residuals, g):
    x, kernel = residuals
    _, h, w, _ = x.shape
    k = kernel.shape[0]
    dx = _input_gradient(g, kernel.astype(g.dtype), stride, padding, h, w)
    dkernel = _kernel_gradient(_pad(x, padding).astype(g.dtype), g, k, stride)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


depthwise_conv.defvjp(_vjp_forward, _vjp_backward)


def depthwise_conv_autodiff(
    x: jax.Array, kernel: jax.Array, stride: int, padding: Padding
) -> jax.Array:
    """The same forward, differentiated by JAX: the reference the written-out gradient is
    tested and benchmarked against."""
    return _forward(x, kernel, stride, padding)
