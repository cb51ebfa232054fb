"""voc_jax/settings.py: the config read once into typed, frozen settings."""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import pytest

from voc_jax import settings
from voc_jax.configs import voc07_alexnet


def test_every_block_is_read_typed_and_frozen():
    s = settings.read(voc07_alexnet.get_config())
    assert s.train == settings.TrainSettings(
        seed=0, num_epochs=10, batch_size=64, images_per_step=1, log_every_steps=50
    )
    assert s.model.patch_size == 224 and s.model.dtype == "float32"
    assert s.optim.lr_changes == ((15, 1e-5), (20, 1e-6)) and s.optim.trainable == (".*",)
    assert s.data.max_train_images == 5000 and s.data.synthetic.num_trainval == 200
    assert s.init.scratch_preprocessing.mean == (0.485, 0.456, 0.406)
    assert s.eval.protocols == ("voc07", "area", "reference")
    assert s.cache == settings.CacheSettings(enabled=False, dtype="float16", dir="")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.train.seed = 1


def test_a_config_read_back_from_json_gives_the_same_settings():
    """WORKDIR/config.json turns tuples into lists: the settings must not notice."""
    config = voc07_alexnet.get_config()
    again = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
    assert settings.read(again) == settings.read(config)


def test_scaled_rates_multiply_every_rate_and_leave_the_original():
    base = settings.optim_settings(voc07_alexnet.get_config().optim)
    scaled = base.scaled(4)
    assert scaled.learning_rate == pytest.approx(4e-4)
    assert scaled.lr_changes == ((15, pytest.approx(4e-5)), (20, pytest.approx(4e-6)))
    assert base.learning_rate == 1e-4 and scaled.momentum == base.momentum
