"""voc_jax/model_validation.py: the config against the network it builds and the weights it
names, before anything is read (the commands' one-line errors: tests/test_errors.py)."""

from __future__ import annotations

import pytest

from tests.configs import tiny
from voc_jax import model_validation
from voc_jax.errors import ConfigError


def test_a_good_config_passes():
    model_validation.validate(tiny.get_config())


def test_regexes_are_checked_against_the_real_parameter_paths():
    c = tiny.get_config()
    c.optim.trainable = ("haed/.*",)
    c.optim.no_decay = ("conv1/bias", "bias")
    problems = model_validation.check_network(c)
    assert len(problems) == 2
    assert "optim.trainable: 'haed/.*' matches no parameter" in problems[0]
    assert "optim.no_decay: 'bias' matches no parameter" in problems[1]
    assert "conv1/bias" in problems[0]  # paths look like ...


def test_each_backbone_sets_its_own_smallest_patch():
    c = tiny.get_config()
    c.patches.size = 40
    assert "too small for alexnet's" in model_validation.check_network(c)[0]
    c.model.arch = "vgg16"  # pools to 7x7 adaptively: 40 px is enough
    assert model_validation.check_network(c) == []


def test_the_feature_cache_needs_a_frozen_prefix():
    c = tiny.get_config()
    c.feature_cache.enabled = True
    problem = model_validation.check_network(c)[0]
    assert "caches alexnet's fc6 output" in problem and "conv1/kernel" in problem
    c.optim.trainable = (r"fc7/.*", r"head/.*")
    assert model_validation.check_network(c) == []


def test_missing_weights_are_named_with_what_to_do(tmp_path):
    c = tiny.get_config()
    c.init.weights = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no converted weights there.*from scratch"):
        model_validation.validate(c)
