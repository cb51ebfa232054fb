"""voc_jax/config_compat.py: configs, config.json files and overrides written before
model.conv1_padding became AlexNet's option keep working."""

from __future__ import annotations

import logging

import ml_collections

from voc_jax import config_compat
from voc_jax.configs import voc07_alexnet, voc07_vgg16


def test_the_option_comes_from_model_options():
    assert config_compat.model_options(voc07_alexnet.get_config().model) == {"conv1_padding": 2}
    assert config_compat.model_options(voc07_vgg16.get_config().model) == {}


def test_an_old_config_json_model_block_moves_its_padding_into_the_options():
    """config.json of a run trained before options existed: no model.options at all."""
    old = ml_collections.ConfigDict({"arch": "alexnet", "conv1_padding": 3, "width": 1.0})
    assert config_compat.model_options(old) == {"conv1_padding": 3}
    vgg = ml_collections.ConfigDict({"arch": "vgg16", "conv1_padding": 2})  # ignored then too
    assert config_compat.model_options(vgg) == {}


def test_a_legacy_field_wins_over_the_options_default():
    c = voc07_alexnet.get_config()
    c.model.conv1_padding = 3  # a user's config file that still sets the old field
    assert config_compat.model_options(c.model) == {"conv1_padding": 3}


def test_old_overrides_are_renamed_with_a_note(caplog):
    argv = ["--config=x.py", "--config.model.conv1_padding=3", "--config.model.width=0.5"]
    with caplog.at_level(logging.WARNING):
        renamed = config_compat.rename_overrides(argv)
    assert renamed == [
        "--config=x.py",
        "--config.model.options.conv1_padding=3",
        "--config.model.width=0.5",
    ]
    assert "--config.model.conv1_padding is now --config.model.options.conv1_padding" in caplog.text
    assert config_compat.rename_overrides(["--config.model.conv1_padding", "3"])[0] == (
        "--config.model.options.conv1_padding"
    )
