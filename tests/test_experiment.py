"""voc_jax/experiment.py: one Experiment, built once, holds what every command shares."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.configs import tiny
from tests.helpers import first_batch
from voc_jax.data.pipeline import epoch_dataset
from voc_jax.data.voc import load_dataset
from voc_jax.experiment import EVAL_SEED_OFFSET, Experiment, crop_site, grid_rows


@pytest.fixture(scope="module")
def exp():
    return Experiment.build(tiny.get_config())


def test_the_experiment_holds_the_configs_choices(exp):
    assert exp.train.batch_size == 4 and exp.patches.patches_per_image == 8
    assert exp.patches.max_rows == grid_rows((1.0, 2.0)) == 6  # 0 in the config: derived
    assert exp.patches.crops == crop_site("auto") == "host"  # the CPU backend
    assert exp.model.module.width == 1 / 16 and exp.model.source["kind"] == "scratch"
    assert exp.model.params["head"]["fc_b"]["kernel"].shape == (64, 21)
    assert exp.batch_sharding.spec == jax.sharding.PartitionSpec("data")


def test_optimizer_scales_rates_only_when_asked():
    config = tiny.get_config()
    config.images_per_step = 2
    plain = Experiment.build(config).optimizer(10)
    config.optim.scale_lr = True
    scaled = Experiment.build(config).optimizer(10)
    assert float(scaled.schedule(0)) == pytest.approx(2 * float(plain.schedule(0)))


def test_training_and_evaluation_draw_from_their_own_seeds(exp, tiny_data_root):
    """Training: the run's seed, images_per_step a call; evaluation: seed + EVAL_SEED_OFFSET,
    eval.images_per_step a call (the pipeline's own calls, made by hand, agree)."""
    records = load_dataset(tiny_data_root, "trainval").records
    cases = ((True, 0, 1, 1), (False, EVAL_SEED_OFFSET, 2, 0))
    for train, seed, per_call, epoch in cases:
        got = exp.dataset(records, train=train, epoch=epoch)
        want = epoch_dataset(
            records, exp.patches, images_per_batch=per_call, train=train, seed=seed, epoch=epoch
        )
        assert len(got) == len(want)
        for key in want[0]:
            np.testing.assert_array_equal(got[0][key], want[0][key])


def test_the_steps_it_makes_run(exp, tiny_data_root):
    records = load_dataset(tiny_data_root, "trainval").records
    config = tiny.get_config()
    scores = exp.eval_step()(exp.model.variables, first_batch(config, records, train=False))
    assert scores["power"].shape == (1, 20)
    fc6 = exp.prefix_step(np.float32)(
        exp.model.variables, first_batch(config, records, train=False)
    )
    assert fc6.shape == (1, 8, 256)
    optimizer = exp.optimizer(10)
    state = jax.tree.map(jax.numpy.copy, exp.initial_state(optimizer))
    state, metrics = exp.train_step(optimizer)(state, exp.put_batch(first_batch(config, records)))
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize(
    ("arch", "chunks", "bn_update", "inputs", "want"),
    [
        ("resnet50", 0, False, "pixels", 4),  # auto on the CPU: slices of 16
        ("vgg16", 0, False, "pixels", 4),
        ("alexnet", 0, False, "pixels", 1),  # AlexNet keeps the whole batch
        ("resnet50", 0, True, "pixels", 1),  # batch statistics need the whole batch
        ("resnet50", 0, False, "prefix", 1),  # the cached head is small
        ("alexnet", 2, False, "pixels", 2),  # explicit wins
    ],
)
def test_grad_chunks_auto(arch, chunks, bn_update, inputs, want):
    from types import SimpleNamespace

    from voc_jax.settings import ModelSettings, TrainSettings

    train = TrainSettings(0, 1, 64, 1, 1, grad_chunks=chunks)
    model = ModelSettings(21, 64, 0.5, "float32", 1.0, 64, arch=arch, bn_update=bn_update)
    fake = SimpleNamespace(train=train, settings=SimpleNamespace(model=model))
    assert Experiment.grad_chunks(fake, inputs) == want
