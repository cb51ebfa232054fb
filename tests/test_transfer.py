"""voc_jax/models/transfer.py (the transfer model) on the AlexNet backbone, and the Flax AlexNet
itself (voc_jax/models/alexnet.py): shapes, pooling, initialisers, dropout, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.helpers import random_variables
from voc_jax import xla_options
from voc_jax.models.alexnet import AlexNet
from voc_jax.models.common import adaptive_avg_pool
from voc_jax.models.transfer import TransferHead, TransferNet

SMALL = (1, 64, 64, 3)  # smallest convenient input: 64 -> 15 -> 7 -> 7 -> 3 -> 3 -> 1 -> 6x6
NARROW = 1 / 16  # structure tests need not pay for 60 M parameters


@pytest.mark.parametrize("size", [(6, 6), (13, 13), (5, 5), (1, 1), (7, 11), (15, 9), (13, 17)])
def test_adaptive_pool_matches_torch(size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *size, 4)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 6)
    got = adaptive_avg_pool(jnp.asarray(x), 6)
    np.testing.assert_allclose(
        np.asarray(got), want.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6
    )


def test_alexnet_shapes_and_param_names():
    model = AlexNet()
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    params = variables["params"]
    assert list(params) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert params["conv1"]["kernel"].shape == (11, 11, 3, 64)
    assert params["fc6"]["kernel"].shape == (256 * 6 * 6, 4096)
    assert params["fc8"]["kernel"].shape == (4096, 1000)
    out = jax.eval_shape(model.apply, variables, jnp.zeros((3, 227, 241, 3)))
    assert out.shape == (3, 1000)


def test_transfer_net_output_shape_and_head_init(quick_compiles):
    model = TransferNet(width=NARROW)
    params = xla_options.jit_once(model.init)(jax.random.key(0), jnp.zeros(SMALL))[
        "params"
    ]  # one compile
    assert set(params) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "head"}
    logits = jax.jit(model.apply)({"params": params}, jnp.ones((2, 64, 64, 3)))
    assert logits.shape == (2, 21) and logits.dtype == jnp.float32
    # The initialisers at 1024 wide: the same distributions, 1M samples instead of 16M.
    head = xla_options.jit_once(TransferHead(hidden=1024).init)(
        jax.random.key(0), jnp.zeros((1, 1024))
    )
    head = head["params"]
    fc_a, fc_b = head["fc_a"], head["fc_b"]
    assert fc_a["kernel"].shape == (1024, 1024) and fc_b["kernel"].shape == (1024, 21)
    # N(0, 0.005) with bias 0.1, and N(0, 0.01) with bias 0 (docs/reference.md), over 1M and 21k samples.
    assert abs(float(fc_a["kernel"].std()) - 0.005) < 0.005 * 0.01
    assert abs(float(fc_a["kernel"].mean())) < 3e-5
    np.testing.assert_array_equal(fc_a["bias"], np.full(1024, 0.1, np.float32))
    assert abs(float(fc_b["kernel"].std()) - 0.01) < 0.01 * 0.02
    np.testing.assert_array_equal(fc_b["bias"], np.zeros(21, np.float32))


def test_width_multiplies_every_backbone_width():
    shapes = jax.eval_shape(
        TransferNet(width=NARROW, head_hidden=32).init, jax.random.key(0), jnp.zeros(SMALL)
    )["params"]
    assert shapes["conv1"]["kernel"].shape == (11, 11, 3, 4)
    assert shapes["conv2"]["kernel"].shape == (5, 5, 4, 12)
    assert shapes["conv5"]["kernel"].shape == (3, 3, 16, 16)
    assert shapes["fc6"]["kernel"].shape == (16 * 36, 256)
    assert shapes["fc7"]["kernel"].shape == (256, 256)
    assert shapes["head"]["fc_a"]["kernel"].shape == (256, 32)
    full = jax.eval_shape(TransferNet().init, jax.random.key(0), jnp.zeros(SMALL))["params"]
    assert full["fc6"]["kernel"].shape == (9216, 4096)  # width 1.0 is AlexNet


def test_fc6_halves_compose_to_the_whole_network_dropout_included(quick_compiles):
    """stop="prefix" then start="prefix" (AlexNet: fc6) is the network: the cache relies on it, with
    the same dropout masks for the same rng."""
    model = TransferNet(width=NARROW, head_hidden=32)
    x = jax.random.normal(jax.random.key(1), (3, 64, 64, 3))
    params = random_variables(model, x)["params"]  # any parameters do: no init to compile
    apply = jax.jit(model.apply, static_argnames=("stop", "start", "train"))
    fc6 = apply({"params": params}, x, stop="prefix")
    assert fc6.shape == (3, 256) and bool((fc6 >= 0).all())  # after ReLU, before dropout
    for train in (False, True):
        rngs = {"dropout": jax.random.key(7)}
        whole = apply({"params": params}, x, train=train, rngs=rngs)
        halves = apply({"params": params}, fc6, start="prefix", train=train, rngs=rngs)
        np.testing.assert_array_equal(whole, halves)


def test_dropout_only_in_training_mode(quick_compiles):
    model = TransferNet(num_classes=5, head_hidden=32, width=NARROW)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    params = random_variables(model, x)["params"]  # any parameters do: no init to compile
    apply = jax.jit(model.apply, static_argnames="train")
    eval_a = apply({"params": params}, x)
    eval_b = apply({"params": params}, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = [
        apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(s)})
        for s in (1, 1, 2)
    ]
    np.testing.assert_array_equal(train[0], train[1])  # same rng, same mask
    assert not np.allclose(train[0], train[2])  # another rng, another mask
    assert not np.allclose(train[0], eval_a)
    with pytest.raises(Exception, match="dropout"):  # training needs an rng
        model.apply({"params": params}, x, train=True)


@pytest.mark.slow  # compiles a network per case
def test_dropout_is_inverted():
    """E[train output] = eval output for the linear layer after dropout: the 1/keep scaling."""
    head = TransferHead(num_classes=3, hidden=64)
    x = jax.random.normal(jax.random.key(0), (1, 4096))
    params = head.init(jax.random.key(1), x)["params"]
    want = head.apply({"params": params}, x)
    keys = jax.random.split(jax.random.key(2), 4000)
    samples = jax.vmap(
        lambda k: head.apply({"params": params}, x, train=True, rngs={"dropout": k})
    )(keys)
    spread = float(samples.std(0).max()) / np.sqrt(len(keys))
    np.testing.assert_allclose(samples.mean(0), want, atol=5 * spread)


def test_features_only_returns_fc7(quick_compiles):
    model = AlexNet(num_classes=10, width=NARROW)
    x = jnp.ones(SMALL)
    params = random_variables(model, x)["params"]  # any parameters do: no init to compile
    feats = jax.jit(model.apply, static_argnames="features_only")(
        {"params": params}, x, features_only=True
    )
    assert feats.shape == (1, 256) and bool((feats >= 0).all())  # after ReLU
    logits = jax.jit(model.apply)({"params": params}, x)
    np.testing.assert_allclose(
        logits, feats @ params["fc8"]["kernel"] + params["fc8"]["bias"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow  # compiles a network per case
def test_bf16_compute_keeps_float32_params(quick_compiles):
    x = jax.random.normal(jax.random.key(1), SMALL)
    f32 = TransferNet(num_classes=4, width=NARROW)
    params = random_variables(f32, x)["params"]  # any parameters do: no init to compile
    bf16 = TransferNet(num_classes=4, dtype=jnp.bfloat16, width=NARROW)
    params_bf16 = jax.eval_shape(bf16.init, jax.random.key(0), x)["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params_bf16))
    out32 = jax.jit(f32.apply)({"params": params}, x)
    out16 = jax.jit(bf16.apply)({"params": params}, x)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, rtol=0.05, atol=0.05 * float(jnp.abs(out32).max()))


def test_conv1_padding_changes_the_map():
    x = jnp.zeros((1, 224, 224, 3))
    for pad, side in ((2, 55), (3, 55), (0, 54)):
        model = AlexNet(conv1_padding=pad)
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        inter = jax.eval_shape(
            lambda p, m=model: m.apply(p, x, capture_intermediates=True, mutable=["intermediates"]),
            params,
        )
        assert inter[1]["intermediates"]["conv1"]["__call__"][0].shape == (1, side, side, 64)
