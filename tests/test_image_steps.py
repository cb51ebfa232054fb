"""The whole-image train step: gradient slices give the whole batch's update; bfloat16
compute keeps float32 parameters and a finite loss; the frozen backbone does not move."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.configs import tiny_image
from voc_jax.image import steps
from voc_jax.image.experiment import ImageExperiment

# XLA's quick compiles: these check what a step does (slices, dtypes, pooling order), not the
# optimised program's numerics.
pytestmark = pytest.mark.usefixtures("quick_compiles")


def batch_of(exp, n=4, seed=0):
    rng = np.random.default_rng(seed)
    side = exp.settings.image.inputs.sides[0]
    grid = exp.grids[0]
    targets = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, 20), p=[0.8, 0.05, 0.15])
    valid = np.ones((n, grid[0] * grid[1]), bool)
    valid[1, 1:] = False
    return {
        "views": (rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),),
        "valid": valid,
        "targets": targets,
    }


def one_step(exp, batch, chunks):
    s = exp.settings
    optimizer = exp.optimizer(10)
    state = steps.create_state(exp.params, exp.batch_stats, optimizer, 0, ema=False)
    step = jax.jit(steps.make_train_step(exp.module, optimizer, s.image.pooling, s.image.loss,
                                         exp.preprocessing, grad_chunks=chunks))  # fmt: skip
    return step(state, batch)


@pytest.fixture(scope="module")
def finetune_exp():
    config = tiny_image.get_config("resnet26,finetune")
    config.optim.optimizer = "sgd"  # the update is the gradient: comparable to float rounding
    config.optim.learning_rate = 0.1
    config.optim.warmup_epochs = 0.0
    return ImageExperiment.build(config)


def test_gradient_slices_give_the_whole_batchs_update(finetune_exp):
    batch = batch_of(finetune_exp)
    whole, m1 = one_step(finetune_exp, batch, 1)
    sliced, m2 = one_step(finetune_exp, batch, 2)
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-5)
    assert float(m1["grad_norm"]) == pytest.approx(float(m2["grad_norm"]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(sliced.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # The frozen stem did not move; a trained block did.
    assert np.array_equal(np.asarray(whole.params["conv1"]["kernel"]),
                          np.asarray(finetune_exp.params["conv1"]["kernel"]))  # fmt: skip
    assert not np.array_equal(np.asarray(whole.params["layer4_1"]["conv3"]["kernel"]),
                              np.asarray(finetune_exp.params["layer4_1"]["conv3"]["kernel"]))  # fmt: skip


def test_bfloat16_compute_keeps_float32_params():
    config = tiny_image.get_config("resnet26,finetune")
    config.model.dtype = "bfloat16"
    exp = ImageExperiment.build(config)
    state, metrics = one_step(exp, batch_of(exp), 1)
    assert np.isfinite(float(metrics["loss"]))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))


def test_slices_with_batch_statistics_are_refused(finetune_exp):
    module = finetune_exp.module.clone(bn_update=True)
    with pytest.raises(ValueError, match="per slice"):
        steps.make_train_step(module, finetune_exp.optimizer(10), finetune_exp.settings.image.pooling,
                              finetune_exp.settings.image.loss, finetune_exp.preprocessing,
                              grad_chunks=2)  # fmt: skip


def test_average_pooling_of_a_linear_head_pools_the_map_first_with_the_same_logits(finetune_exp):
    """W mean(x) + b against mean(W x + b): the position logits pooled, as pool() defines."""
    from voc_jax.image.pooling import pool

    exp = finetune_exp
    s = exp.settings
    batch = batch_of(exp)
    assert s.image.pooling.kind == "avg" and steps.pools_first(exp.module, s.image.pooling, False)
    got, _ = jax.jit(lambda v, b: steps.image_logits(exp.module, v, b, s.image.pooling,
                                                     exp.preprocessing, start="image"))(
        exp.variables, batch)  # fmt: skip
    x = exp.preprocessing.normalize(batch["views"][0])
    positions = jax.jit(exp.module.apply)(exp.variables, x)
    want = pool(positions.reshape(len(x), -1, positions.shape[-1]), batch["valid"],
                s.image.pooling)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # a two-layer head, or dropout on its input in training, keeps the per-position path
    two = exp.module.clone(head_hidden=8)
    dropped = exp.module.clone(head_dropout=0.5)
    assert not steps.pools_first(two, s.image.pooling, False)
    assert not steps.pools_first(dropped, s.image.pooling, True)
    assert steps.pools_first(dropped, s.image.pooling, False)
