"""voc_jax/workdir.py: config.json history, refusals before a resume, params-only restores."""

from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest

from tests.configs import tiny
from voc_jax import class_config, workdir
from voc_jax.classes import VOC_CLASSES
from voc_jax.errors import CheckpointError, ConfigError


def test_save_config_keeps_every_earlier_config(tmp_path):
    config = tiny.get_config()
    for seed in (0, 0, 1, 2):
        config.seed = seed
        workdir.save_config(config, tmp_path)
    seeds = {
        name: json.loads((tmp_path / name).read_text())["seed"]
        for name in ("config.json", "config.json.old", "config.json.old.2")
    }
    assert seeds == {"config.json": 2, "config.json.old": 0, "config.json.old.2": 1}
    assert not (tmp_path / "config.json.old.3").exists()  # an unchanged config moves nothing


def test_check_unchanged_names_each_field_with_both_values(tmp_path):
    config = tiny.get_config()
    workdir.save_config(config, tmp_path)
    workdir.check_unchanged(config, tmp_path, workdir.SHAPE_FIELDS, "resume")  # same: fine
    config.model.head_hidden = 32
    config.optim.trainable = ("head/.*",)
    fields = workdir.SHAPE_FIELDS + workdir.STATE_FIELDS
    with pytest.raises(ConfigError) as e:
        workdir.check_unchanged(config, tmp_path, fields, "resume")
    message = str(e.value)
    assert "model.head_hidden: 64 in config.json, 32 now" in message
    assert "optim.trainable: ['.*'] in config.json, ['head/.*'] now" in message
    config.log_every_steps = 7  # not what a checkpoint holds: not refused
    config.model.head_hidden, config.optim.trainable = 64, (".*",)
    workdir.check_unchanged(config, tmp_path, fields, "resume")


def test_before_training(tmp_path):
    config = tiny.get_config()
    config.num_epochs = 0
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        workdir.check_before_training(config, tmp_path)
    config.num_epochs = 2
    workdir.check_before_training(config, tmp_path)  # a fresh training: fine
    (tmp_path / "checkpoints").write_text("")
    with pytest.raises(CheckpointError, match="is not a directory"):
        workdir.check_before_training(config, tmp_path)


def test_restore_without_checkpoints_gives_the_initial_weights(tmp_path, caplog):
    initial = {"params": {"w": np.ones(3, np.float32)}}
    with caplog.at_level(logging.WARNING):
        step, variables = workdir.restore_variables(tmp_path, initial)
    assert step == 0 and variables is initial and "evaluating the initial weights" in caplog.text
    with pytest.raises(CheckpointError, match="no checkpoints/ directory"):
        workdir.restore_variables(tmp_path, initial, step=4)


def test_head_source_is_checked_before_training(tmp_path, trained_tiny):
    """init.head_from: a workdir with a checkpoint whose head fits; each failure names it.
    (The config as train checks it: its classes settled from the dataset.)"""
    config = class_config.resolve(tiny.get_config())
    work = tmp_path / "new"
    config.init.head_from = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"init.head_from=.*empty: no checkpoint in"):
        workdir.check_before_training(config, work)
    config.init.head_from = str(work)
    with pytest.raises(ConfigError, match="is this run's own workdir"):
        workdir.check_before_training(config, work)
    config.init.head_from = str(trained_tiny)
    workdir.check_before_training(config, work)  # the same model: fine
    config.model.head_hidden = 32
    with pytest.raises(ConfigError, match="model.head_hidden: 64 there, 32 here"):
        workdir.check_before_training(config, work)
    assert not work.exists()  # refused before anything is written


def test_restore_head_reads_the_newest_checkpoints_head(trained_tiny):
    from tests.helpers import final_params

    step, params = final_params(trained_tiny)
    found, head = workdir.restore_head(trained_tiny, params)
    assert found == step == 24 and workdir.checkpoint_steps(trained_tiny)[-1] == 24
    for a, b in zip(
        jax.tree.leaves(head), jax.tree.leaves(params["head"]), strict=True
    ):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), b)


def test_a_checkpoint_of_other_classes_is_refused_by_name(tmp_path, trained_tiny):
    """Checkpoints record their classes (the list a head's outputs mean); a resume with
    another list of the same length is refused even without config.json; older checkpoints
    (no list) are VOC's."""
    from voc_jax.checkpoint import Checkpointer

    checkpointer = Checkpointer(trained_tiny / "checkpoints", asynchronous=False)
    try:
        _, restored = checkpointer.restore({})
    finally:
        checkpointer.close()
    assert restored["data"]["classes"] == list(VOC_CLASSES)
    workdir.check_checkpoint_classes(restored["data"], VOC_CLASSES, tmp_path)
    workdir.check_checkpoint_classes({}, ("a", "b"), tmp_path)
    other = tuple(f"widget {c}" for c in range(20))
    with pytest.raises(CheckpointError, match=r"of 20 classes \(aeroplane, bicycle, bird, "
                       r"boat, ...\) and this run's dataset has 20 \(widget 0"):  # fmt: skip
        workdir.check_checkpoint_classes(restored["data"], other, tmp_path)
