"""voc_jax/convert/torch_models.py: the generic torch side of parity and benchmarks (each
backbone's own torch reference is tested against its Flax model in tests/test_models.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voc_jax import models
from voc_jax.convert import torch_models as tm


def test_randomized_statistics_are_not_the_defaults():
    model = tm.randomize_batch_norm(tm.classifier("resnet50", 10, 1 / 16), seed=3)
    bn = model.bn1
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert (bn.running_var > 0).all()


@pytest.mark.parametrize("arch", [a for a, b in models.BACKBONES.items() if b.torch_features])
def test_backbone_transfer_is_the_backbones_features_then_the_head(arch):
    torch.manual_seed(0)
    net = tm.BackboneTransfer(arch, num_classes=5, hidden=8, width=1 / 16).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = net.backbone(x)
        out = net(x)
        want = net.head(features)
    assert out.shape == (2, 5) and features.shape[1] == net.head[0].in_features
    np.testing.assert_array_equal(out.numpy(), want.numpy())
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training for m in bns)  # the pretrained statistics, also in training


def test_classifier_refuses_an_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'"):
        tm.classifier("vgg19")
