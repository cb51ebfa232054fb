"""voc_jax/convert/layout.py: torch state dicts <-> our variables from one rule set: every
family's real-size layout equals its torch reference's, BatchNorm's statistics go to
batch_stats, a state dict of another architecture is refused naming every problem."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from tests.test_models import state_of, torch_classifier
from voc_jax import models
from voc_jax.convert import layout
from voc_jax.convert import torch_models as tm


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_layout_is_torchvisions_at_real_size(arch):
    """Every torchvision key and shape (a meta-device model: no memory), and nothing else."""
    with torch.device("meta"):
        model = tm.classifier(arch)
    want = {
        k: tuple(v.shape) for k, v in model.state_dict().items() if "num_batches_tracked" not in k
    }
    b = models.backbone(arch)
    assert layout.torch_shapes(b, layout.flax_shapes(b, 1000, 1.0)) == want


def test_batch_norm_statistics_go_to_batch_stats():
    tmodel = torch_classifier("resnet50")
    state = state_of(tmodel)
    variables, _, _ = layout.torch_to_flax(models.backbone("resnet50"), state, "mem")
    stats, params = variables["batch_stats"], variables["params"]
    np.testing.assert_array_equal(stats["bn1"]["mean"], state["bn1.running_mean"])
    np.testing.assert_array_equal(stats["layer2_0"]["downsample_1"]["var"],
                                  state["layer2.0.downsample.1.running_var"])  # fmt: skip
    np.testing.assert_array_equal(params["layer4_2"]["bn3"]["scale"], state["layer4.2.bn3.weight"])
    assert "bias" not in params["conv1"]  # torchvision's ResNet convolutions have none
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))


def test_a_state_dict_of_another_architecture_is_refused_with_every_problem():
    state = state_of(torch_classifier("vgg16"))
    with pytest.raises(layout.LayoutError) as error:
        layout.torch_to_flax(models.backbone("resnet50"), state, "vgg.pth")
    message, every = str(error.value), error.value.problems
    assert message.startswith("vgg.pth: not a state dict of ResNet-50 (")
    assert "\n" not in message and message.count(";") < 12  # one line, the first few keys
    assert f"{sum(p.startswith('missing') for p in every)} missing" in message
    assert any(p.startswith("missing layer1.0.bn1.running_var: expected shape") for p in every)
    assert any(p.startswith("unexpected features.0.weight: shape") for p in every)


def test_a_missing_statistic_is_named():
    state = state_of(torch_classifier("resnet50"))
    del state["layer3.1.bn2.running_mean"]
    with pytest.raises(layout.LayoutError, match=r"missing layer3\.1\.bn2\.running_mean"):
        layout.torch_to_flax(models.backbone("resnet50"), state, "r.pth")


def test_a_flattened_map_is_permuted_from_torchs_channel_first_order():
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 12)  # (out, C*H*W), C=3, G=2
    kernel = layout.kernel_to_flax(w, grid=2)
    for c in range(3):
        for h in range(2):
            for x in range(2):
                assert kernel[(h * 2 + x) * 3 + c, 1] == w[1, c * 4 + h * 2 + x]
    conv = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)  # OIHW
    assert layout.kernel_to_flax(conv)[1, 2, 0, 3] == conv[3, 0, 1, 2]


def test_problems_lists_missing_unexpected_and_misshaped_keys_and_drops_the_bn_counter():
    expected = {"a.weight": (2, 3), "b.weight": (4,)}
    state = {"a.weight": np.zeros((3, 2)), "c.bias": np.zeros(1), "bn.num_batches_tracked": 0}
    assert layout.problems(expected, state) == [
        "missing b.weight: expected shape (4,)",
        "unexpected c.bias: shape (1,)",
        "wrong shape a.weight: expected (2, 3), got (3, 2)",
    ]
