"""voc_jax/models/depthwise.py: the depthwise convolution with its written-out gradient, against
torch's grouped conv2d and its autograd (an independent reference), in float64 so that any
wrong tap, phase or crop shows, over kernels, strides, odd and tiny sizes and asymmetric
paddings; and against JAX's own differentiation of the same forward (the benchmark's
baseline). Every case compiles once: an exhaustive sweep of small geometries costs minutes
in compile time, so the cases are chosen for the edges (one row, a kernel wider than the
input, padding on one side, strides that skip rows, an even kernel)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from voc_jax.models import depthwise

torch = pytest.importorskip("torch")

CASES = [
    # (kernel, stride, (height, width), ((top, bottom), (left, right)))
    (3, 1, (7, 9), ((1, 1), (1, 1))),
    (3, 2, (8, 8), ((0, 1), (0, 1))),  # TensorFlow's "SAME" on an even size, stride 2
    (3, 2, (9, 7), ((1, 1), (1, 1))),
    (5, 1, (6, 5), ((2, 2), (2, 2))),
    (5, 2, (11, 10), ((2, 2), (1, 2))),
    (5, 2, (3, 3), ((2, 2), (2, 2))),  # the kernel wider than the input
    (3, 3, (10, 8), ((1, 2), (0, 1))),  # stride 3: nine phases
    (1, 1, (4, 3), ((0, 0), (0, 0))),
    (1, 2, (5, 6), ((0, 0), (0, 0))),  # strided 1x1: input rows the output never sees
    (3, 1, (1, 1), ((1, 1), (1, 1))),
    (3, 2, (6, 7), ((0, 0), (0, 0))),  # "VALID"
    (4, 2, (9, 9), ((1, 2), (2, 1))),  # an even kernel
    (3, 2, (1, 2), ((1, 1), (0, 1))),  # one row: a single output position per phase
    (5, 3, (4, 5), ((2, 0), (0, 2))),  # padding on one side only
    (1, 3, (7, 7), ((0, 0), (0, 0))),  # the stride skips two of every three rows
    (3, 1, (5, 4), ((0, 2), (2, 0))),
]


def _torch_reference(x: np.ndarray, kernel: np.ndarray, stride: int, padding, g: np.ndarray):
    """Value and gradients of sum(conv * g) by torch, NCHW with one group per channel."""
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    kt = torch.tensor(kernel.transpose(2, 0, 1)[:, None], requires_grad=True)  # [C, 1, k, k]
    (top, bottom), (left, right) = padding
    padded = torch.nn.functional.pad(xt, (left, right, top, bottom))
    out = torch.nn.functional.conv2d(padded, kt, stride=stride, groups=x.shape[-1])
    (out * torch.tensor(g.transpose(0, 3, 1, 2))).sum().backward()
    return (
        out.detach().numpy().transpose(0, 2, 3, 1),
        xt.grad.numpy().transpose(0, 2, 3, 1),
        kt.grad.numpy()[:, 0].transpose(1, 2, 0),
    )


@pytest.fixture(scope="module", autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize(("kernel", "stride", "size", "padding"), CASES)
def test_value_and_gradients_are_torchs(kernel, stride, size, padding):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + size[0])
    x = rng.standard_normal((2, *size, 3))
    w = rng.standard_normal((kernel, kernel, 3))
    out_size = [
        depthwise.output_size(n, kernel, stride, *p) for n, p in zip(size, padding, strict=True)
    ]
    g = rng.standard_normal((2, *out_size, 3))
    value, dx, dw = _value_and_vjp(x, w, stride, padding, g)
    want_value, want_dx, want_dw = _torch_reference(x, w, stride, padding, g)
    assert value.dtype == jnp.float64 and value.shape == want_value.shape
    np.testing.assert_allclose(value, want_value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-12, atol=1e-12)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _value_and_vjp(x, w, stride: int, padding, g):
    value, vjp = jax.vjp(lambda x, w: depthwise.depthwise_conv(x, w, stride, padding), x, w)
    return value, *vjp(g)


def test_the_autodiff_reference_agrees():
    """The benchmark's baseline (the same forward, differentiated by JAX) computes the same
    gradients, so its timings compare like with like."""
    rng = np.random.default_rng(2)
    x, w, padding = (
        rng.standard_normal((2, 9, 8, 4)),
        rng.standard_normal((3, 3, 4)),
        ((0, 1), (0, 1)),
    )

    def loss(conv):
        return jax.jit(jax.grad(lambda x, w: (conv(x, w, 2, padding) ** 2).sum(), (0, 1)))

    ours, auto = loss(depthwise.depthwise_conv)(x, w), loss(depthwise.depthwise_conv_autodiff)(x, w)
    for a, b in zip(ours, auto, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_float32_and_jit():
    """The model's dtype, under jit as training runs it: within float32 rounding of torch."""
    with jax.enable_x64(False):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((4, 16, 13, 8)).astype(np.float32)
        w = rng.standard_normal((5, 5, 8)).astype(np.float32)
        padding = ((1, 2), (2, 2))
        g = rng.standard_normal((4, 8, 7, 8)).astype(np.float32)
        got = _value_and_vjp(x, w, 2, padding, g)
        assert all(a.dtype == jnp.float32 for a in got)
        want = _torch_reference(
            *(a.astype(np.float64) for a in (x, w)), 2, padding, g.astype(np.float64)
        )
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
