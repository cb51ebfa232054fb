"""The whole-image network: on an input of exactly the patch size, AlexNet's and VGG-16's
convolutional fc6/fc7 equal the dense ones; on larger inputs every position of the map is
the dense network on that window; the backbones' maps pool to the patch family's features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_variables
from voc_jax.image.model import WholeImageNet, map_shape
from voc_jax.models.transfer import TransferNet

WIDTH = 1 / 16


def transfer_and_image(arch: str, **fields):
    dense = TransferNet(arch=arch, width=WIDTH, head_hidden=8)
    image = WholeImageNet(arch=arch, width=WIDTH, **fields)
    return dense, image


def shared_params(dense_vars, image_vars):
    """The image network's backbone parameters taken from the dense network's (same names)."""
    out = jax.tree_util.tree_map(lambda x: x, image_vars)
    for name in out["params"]:
        if name != "head":
            out["params"][name] = dense_vars["params"][name]
    if "batch_stats" in out:
        out["batch_stats"] = dense_vars["batch_stats"]
    return out


def image_params_from(dense_vars, image, x):
    """The image network's variables for its map (``stop="map"`` reads no head): the dense
    network's backbone, of the shapes the image network's init gives (checked), and a head of
    zeros; no init of its own to compile."""
    shapes = jax.eval_shape(image.init, jax.random.PRNGKey(2), x)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    out = shared_params(dense_vars, zeros)
    assert jax.tree.map(np.shape, out) == jax.tree.map(lambda s: s.shape, shapes)
    return out


@pytest.mark.parametrize("arch,side", [("alexnet", 224), ("vgg16", 224)])
def test_fc_as_convolutions_equal_the_dense_layers_at_the_patch_size(arch, side, quick_compiles):
    dense, image = transfer_and_image(arch)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, side, side, 3))
    dv = random_variables(dense, x)  # any parameters do: no init to compile
    iv = image_params_from(dv, image, x)
    want = jax.jit(lambda v, x: dense.apply(v, x, stop="features"))(dv, x)
    got = jax.jit(lambda v, x: image.apply(v, x, stop="map"))(iv, x)
    assert got.shape == (2, 1, 1, want.shape[-1]) and np.abs(np.asarray(want)).max() > 1.0
    np.testing.assert_allclose(np.asarray(got[:, 0, 0]), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_each_position_of_the_alexnet_map_is_the_dense_network_on_its_window(quick_compiles):
    """pool5's stride is 32 px: position (i, j) of a larger input's fc7 map is the dense
    network's fc7 on the window starting at (32 i, 32 j), of the patch size, where the
    convolutions' padding does not reach inside (interior windows)."""
    dense, image = transfer_and_image("alexnet")
    x = jax.random.uniform(jax.random.PRNGKey(3), (1, 352, 352, 3))
    dv = random_variables(dense, x[:, :224, :224])
    iv = image_params_from(dv, image, x)
    fmap = np.asarray(jax.jit(lambda v, x: image.apply(v, x, stop="map"))(iv, x))
    assert fmap.shape[1:3] == (5, 5)
    # The trunk is not translation-exact at the border (padding), so compare the conv form's
    # fc6 input: pool5 of the whole image, window by window, through the dense fc6/fc7.
    o = image.clone(fc_as_conv=False)
    ov = image_params_from(dv, o, x)
    pool5 = jax.jit(lambda v, x: o.apply(v, x, stop="map"))(ov, x)
    fc = {k: dv["params"][k] for k in ("fc6", "fc7")}
    for i, j in [(0, 0), (2, 3), (4, 4)]:
        window = np.asarray(pool5[0, i : i + 6, j : j + 6]).reshape(-1)
        h = np.maximum(window @ np.asarray(fc["fc6"]["kernel"]) + np.asarray(fc["fc6"]["bias"]), 0)
        h = np.maximum(h @ np.asarray(fc["fc7"]["kernel"]) + np.asarray(fc["fc7"]["bias"]), 0)
        np.testing.assert_allclose(fmap[0, i, j], h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet26", "efficientnet_lite0"])  # ResNet-26: half the compile
def test_the_map_pools_to_the_patch_familys_features(arch, quick_compiles):
    dense, image = transfer_and_image(arch)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 96, 128, 3))
    dv = random_variables(dense, x)  # any parameters do: no init to compile
    iv = image_params_from(dv, image, x)
    want = jax.jit(lambda v, x: dense.apply(v, x, stop="features"))(dv, x)
    fmap = jax.jit(lambda v, x: image.apply(v, x, stop="map"))(iv, x)
    assert fmap.shape[1:3] == (3, 4) and np.abs(np.asarray(want)).max() > 1.0  # not near 0
    np.testing.assert_allclose(np.asarray(fmap.mean(axis=(1, 2))), np.asarray(want), rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def test_position_logits_and_the_two_layer_head():
    net = WholeImageNet(arch="resnet50", width=WIDTH, num_classes=20, head_hidden=16)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)  # shapes: nothing to run
    assert set(variables["params"]["head"]) == {"fc_a", "fc_b"}
    assert jax.eval_shape(net.apply, variables, x).shape == (1, 2, 2, 20)
    linear = jax.eval_shape(WholeImageNet(arch="resnet50", width=WIDTH).init,
                            jax.random.PRNGKey(0), x)  # fmt: skip
    assert set(linear["params"]["head"]) == {"fc"}


def test_map_shape_and_the_smallest_inputs():
    alex = WholeImageNet(arch="alexnet", width=WIDTH)
    assert map_shape(alex, 224) == (1, 1, 256)
    assert map_shape(alex, 448)[:2] == (8, 8)
    assert map_shape(alex, 160) is None  # pool5 smaller than fc6's 6x6
    assert map_shape(alex.clone(fc_as_conv=False), 160)[:2] == (4, 4)
    assert map_shape(WholeImageNet(arch="resnet50", width=WIDTH), 448)[:2] == (14, 14)


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_lite0"])
def test_the_map_equals_torchs(arch, quick_compiles):
    """Converted from a torch reference with non-default BatchNorm statistics, the map of a
    non-square photo equals the torch module's (voc_jax.convert.torch_models.torch_map)."""
    import torch

    from voc_jax import models
    from voc_jax.convert import layout, torch_models
    from voc_jax.image.experiment import with_backbone

    torch.manual_seed(0)
    tmodel = torch_models.randomize_batch_norm(torch_models.classifier(arch, 1000, WIDTH)).eval()
    state = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    converted, _, _ = layout.torch_to_flax(models.backbone(arch), state, "mem")
    image = WholeImageNet(arch=arch, width=WIDTH)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 160, 3)).astype(np.float32)
    shapes = jax.eval_shape(image.init, jax.random.PRNGKey(0), x)  # the map reads no head
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
    variables = with_backbone(fresh, converted, "mem")
    got = np.asarray(jax.jit(lambda v, x: image.apply(v, x, stop="map"))(variables, x))
    trunk = torch_models.torch_map(arch, WIDTH, tmodel)
    with torch.no_grad():
        want = trunk.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape == (2, 3, 5, got.shape[-1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_head_only_init_gives_the_whole_inits_head_and_zeros_for_the_weights_to_replace():
    """With converted weights only the head's initialisers are compiled and run: the head
    equals the whole init's bitwise, every other leaf is a zero array of its shape."""
    from voc_jax.image.experiment import initial_variables

    net = WholeImageNet(arch="alexnet", width=WIDTH, num_classes=20, head_hidden=16)
    whole = initial_variables(net, 3, 224)
    head_only = initial_variables(net, 3, 224, head_only=True)
    assert jax.tree.map(np.shape, head_only) == jax.tree.map(np.shape, whole)
    assert set(head_only["params"]["head"]) == {"fc_a", "fc_b"}
    for a, b in zip(jax.tree.leaves(head_only["params"]["head"]),
                    jax.tree.leaves(whole["params"]["head"]), strict=True):  # fmt: skip
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    rest = [v for k, v in head_only["params"].items() if k != "head"]
    assert rest and not any(np.any(leaf) for leaf in jax.tree.leaves(rest))
