"""voc_jax/models (the registry, the Backbone interface in models/backbone.py, and every
backbone module: alexnet, vgg, resnet) against each one's torch reference (narrow instances;
scripts/parity.py checks the real sizes), through the converter's layout rules, with
non-default BatchNorm statistics. The transfer model (models/transfer.py) and AlexNet's own
details are in tests/test_transfer.py; the layout rules in tests/test_layout.py."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from voc_jax import models, xla_options
from voc_jax.convert import layout
from voc_jax.convert import torch_models as tm
from voc_jax.models.common import Options, batch_norm

NARROW = 1 / 16


def torch_classifier(arch: str, width: float = NARROW, num_classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    return tm.randomize_batch_norm(tm.classifier(arch, num_classes, width), seed).eval()


def state_of(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_build_gives_each_classifier_and_refuses_unknown_names():
    for arch in models.ARCHITECTURES:
        model = models.build(arch, num_classes=7, width=NARROW)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
        out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 64, 64, 3)))
        assert out.shape == (2, 7)
        assert ("batch_stats" in variables) == models.backbone(arch).has_batch_norm
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'"):
        models.build("vgg19")


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
@pytest.mark.parametrize("size", [(224, 224), (239, 263)], ids=["224", "239x263"])
def test_logits_match_torchvision(arch, size):
    """Narrow instances (AlexNet's too: the tiny plumbing runs convert one) through the
    converter's layout rules against torchvision's modules at the same width."""
    tmodel = torch_classifier(arch)
    variables, num_classes, width = layout.torch_to_flax(
        models.backbone(arch), state_of(tmodel), "mem"
    )
    assert (num_classes, width) == (10, NARROW)
    x = np.random.default_rng(1).standard_normal((2, *size, 3)).astype(np.float32)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = models.build(arch, num_classes, width=width)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(model.apply)(variables, x))
    assert np.abs(want).max() > 0.05  # not a comparison between near-zeros
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_every_backbone_fills_the_interface():
    """What the rest of voc-jax reads off a backbone, for every registered one."""
    for name, b in models.BACKBONES.items():
        assert b.name == name and b.display and b.min_patch >= 1
        assert set(b.prefix_layers) <= set(b.layers)
        assert b.classifier_layer not in b.layers
        shapes = jax.eval_shape(
            b.build(5, width=NARROW).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))
        )
        assert set(shapes["params"]) == set(b.layers) | {b.classifier_layer}
        assert b.parse_options({}) == b.options()


def test_options_are_the_backbones_own_and_checked_by_it():
    alexnet = models.backbone("alexnet")
    assert alexnet.parse_options({"conv1_padding": 3}).conv1_padding == 3
    with pytest.raises(ValueError, match=r"model\.options\.conv1_padding=6: must be an integer"):
        alexnet.parse_options({"conv1_padding": 6})
    with pytest.raises(ValueError, match="vgg16 has no such option .its options: none"):
        models.backbone("vgg16").parse_options({"depth": 3})
    options, aside = models.options_for("vgg16", {"conv1_padding": 3})
    assert aside == ["conv1_padding"] and options == models.backbone("vgg16").options()
    with pytest.raises(ValueError, match="architecture: missing conv1_padding"):
        alexnet.options_of({"name": "alexnet"})


def test_resnet_names_map_to_torch():
    assert models.resnet.torch_prefix("layer1_0/downsample_1") == "layer1.0.downsample.1"
    assert models.resnet.torch_prefix("layer3_5/conv2") == "layer3.5.conv2"
    assert models.resnet.torch_prefix("bn1") == "bn1"


def test_statistics_stay_float32_and_frozen_unless_updated():
    """bfloat16 compute keeps float32 statistics; training mode uses the running statistics
    unless built with bn_update."""
    x = jax.ShapeDtypeStruct((4, 64, 64, 3), jnp.float32)
    half = models.build("resnet50", 5, width=NARROW, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(half.init, jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
    # Inference-mode BatchNorm in training too, unless bn_update:
    for options, train, running in [
        (Options(), True, True),
        (Options(bn_update=True), True, False),
        (Options(bn_update=True), False, True),
    ]:
        assert batch_norm(options, train, "bn").use_running_average is running


def test_updated_statistics_follow_torch_momentum():
    """bn_update in training mode: batch statistics, and running means updated as torch's
    momentum 0.1 does. (The running variance takes the biased batch variance, torch the
    unbiased one: a factor n/(n-1), n = patches x H x W; compared where n is 4096.)"""
    tmodel = torch_classifier("resnet50")
    variables, _, _ = layout.torch_to_flax(models.backbone("resnet50"), state_of(tmodel), "mem")
    x = np.random.default_rng(2).standard_normal((4, 64, 64, 3)).astype(np.float32)
    tmodel.train()
    with torch.no_grad():
        want_logits = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = models.build("resnet50", 10, width=NARROW, bn_update=True)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    with jax.default_matmul_precision("highest"):
        logits, changed = apply(variables, x)
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)
    new = state_of(tmodel)
    stats = changed["batch_stats"]
    for module, prefix in (("bn1", "bn1"), ("layer3_2/bn2", "layer3.2.bn2")):
        path = module.split("/")
        node = stats
        for part in path:
            node = node[part]
        np.testing.assert_allclose(
            node["mean"], new[f"{prefix}.running_mean"], rtol=1e-4, atol=1e-5
        )
    np.testing.assert_allclose(stats["bn1"]["var"], new["bn1.running_var"], rtol=1e-3)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_pointwise_layer_is_a_1x1_convolution_with_its_parameter(stride):
    """ResNet-50's 1x1 convolutions as matrix products (models.common.Pointwise): nn.Conv's
    parameter (name, shape, initial values) and its outputs, on odd sizes too."""
    from flax import linen as nn

    from voc_jax.models.common import Pointwise, conv

    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 12))
    ours = Pointwise(20, stride)
    theirs = conv(20, 1, stride, 0, dtype=jnp.float32, bias=False, name="c")
    params = xla_options.jit_once(ours.init)(jax.random.key(1), x)
    reference = xla_options.jit_once(theirs.init)(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference)
    np.testing.assert_array_equal(params["params"]["kernel"], reference["params"]["kernel"])
    got = jax.jit(ours.apply)(params, x)
    with jax.default_matmul_precision("highest"):
        want = jax.jit(theirs.apply)(params, x)
    assert got.shape == want.shape == (2, -(-7 // stride), -(-9 // stride), 20)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert isinstance(theirs, nn.Conv)


def test_a_pointwise_layers_gradients_copy_no_activation():
    """Pointwise multiplies 2-D rows: its weight gradient is one transposed GEMM. Written as a
    4-D dot_general, the gradient's transpose rule copied the output gradient to
    [out, N*H*W] once per layer (a transpose in the optimised HLO; ResNet-50's fine-tune step
    was below PyTorch's on a CPU until it went)."""
    from voc_jax import xla_options
    from voc_jax.models.common import Pointwise

    x = jnp.ones((2, 14, 14, 64))
    layer = Pointwise(32)
    params = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)

    def loss(p, x):
        return jnp.sin(layer.apply({"params": p}, x)).sum()

    hlo = xla_options.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    assert "dot(" in hlo or "__ynn_fusion" in hlo
    transposes = [line for line in hlo.splitlines() if re.search(r"\btranspose\(%", line)]
    assert not transposes, transposes
