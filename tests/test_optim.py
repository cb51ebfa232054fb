"""voc_jax/optim.py: labels, partitioned state, schedules, coupled weight decay."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from voc_jax import optim, settings


def tiny_params():
    rng = np.random.default_rng(0)
    return {
        "conv1": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32),
                  "bias": jnp.zeros(4)},
        "fc7": {"kernel": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), "bias": jnp.ones(8)},
        "head": {"fc_a": {"kernel": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
                          "bias": jnp.full(5, 0.1)}},
    }  # fmt: skip


def optim_config(**overrides) -> settings.OptimSettings:
    base = settings.OptimSettings(
        optimizer="sgd",
        trainable=(".*",),
        learning_rate=0.1,
        schedule="step",
        lr_changes=((2, 0.01),),
        warmup_epochs=0.0,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        no_decay=(),
    )
    return dataclasses.replace(base, **overrides)


def test_labels_from_regexes():
    labels = optim.trainable_labels(tiny_params(), [r"head/.*"])
    assert labels["head"]["fc_a"]["kernel"] == optim.TRAINABLE
    assert labels["conv1"]["bias"] == optim.FROZEN and labels["fc7"]["kernel"] == optim.FROZEN
    with pytest.raises(ValueError, match="matches no parameter"):
        optim.trainable_labels(tiny_params(), [r"haed/.*"])


def test_no_optimizer_state_for_frozen_leaves():
    params = tiny_params()
    opt = optim.make_optimizer(optim_config(trainable=(r"head/.*",)), params, 10, 3)
    state = opt.init(params)
    sizes = sum(leaf.size for leaf in jax.tree.leaves(state) if leaf.ndim > 0)
    head = sum(leaf.size for leaf in jax.tree.leaves(params["head"]))
    assert sizes == head  # one momentum buffer per trainable value, nothing for the rest


def test_frozen_leaves_do_not_move():
    params = tiny_params()
    opt = optim.make_optimizer(
        optim_config(trainable=(r"head/.*",), weight_decay=0.1), params, 10, 3
    ).tx
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["conv1"]))
    assert float(jnp.abs(updates["head"]["fc_a"]["kernel"]).max()) > 0


@pytest.mark.parametrize("steps_per_epoch", [1, 7, 1000])
def test_step_schedule_boundaries_exact(steps_per_epoch):
    s = optim.step_schedule(1e-4, {15: 1e-5, 20: 1e-6}, steps_per_epoch)
    b15, b20 = 15 * steps_per_epoch, 20 * steps_per_epoch
    assert float(s(0)) == np.float32(1e-4)
    assert float(s(b15 - 1)) == np.float32(1e-4)
    assert float(s(b15)) == np.float32(1e-5)
    assert float(s(b20 - 1)) == np.float32(1e-5)
    assert float(s(b20)) == np.float32(1e-6)
    assert float(s(10 * b20)) == np.float32(1e-6)
    pairs = optim.step_schedule(1e-4, ((20, 1e-6), (15, 1e-5)), steps_per_epoch)
    assert float(pairs(b15)) == float(s(b15))  # pairs, any order
    assert float(optim.step_schedule(0.5, {}, 10)(123)) == 0.5


def test_warmup_and_cosine():
    c = optim_config(schedule="cosine", warmup_epochs=1.0, learning_rate=1.0)
    s = optim.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=5)
    assert float(s(0)) == 0.0
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(30)) == pytest.approx(0.5, abs=0.02)  # half-way through the cosine
    assert float(s(50)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule(optim_config(schedule="linear"), 10, 5)


def test_coupled_weight_decay_and_momentum_by_hand():
    params = {"w": jnp.array([2.0, -1.0])}
    c = optim_config(weight_decay=0.5, momentum=0.9, learning_rate=0.1, lr_changes=())
    opt = optim.make_optimizer(c, params, 10, 1).tx
    state = opt.init(params)
    g = {"w": jnp.array([1.0, 1.0])}
    u1, state = opt.update(g, state, params)
    v1 = g["w"] + 0.5 * params["w"]  # the gradient with decay, as neon adds it
    np.testing.assert_allclose(u1["w"], -0.1 * v1, rtol=1e-6)
    p1 = optax.apply_updates(params, u1)
    u2, _ = opt.update(g, state, p1)
    v2 = g["w"] + 0.5 * p1["w"] + 0.9 * v1
    np.testing.assert_allclose(u2["w"], -0.1 * v2, rtol=1e-6)


def test_decay_mask():
    mask = optim.decay_mask(tiny_params(), [r".*/bias"])
    assert mask["conv1"]["kernel"] and not mask["conv1"]["bias"]
    assert not mask["head"]["fc_a"]["bias"]


def test_split_and_merge_roundtrip():
    params = tiny_params()
    labels = optim.trainable_labels(params, [r"head/.*"])
    trainable, frozen = optim.split_trainable(params, labels)
    assert trainable["conv1"]["kernel"] is None and frozen["head"]["fc_a"]["kernel"] is None
    merged = optim.merge(trainable, frozen)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True):
        assert a is b


def test_linear_scaling_multiplies_every_rate():
    from voc_jax.configs import voc07_alexnet

    base = settings.optim_settings(voc07_alexnet.get_config().optim)
    scaled = base.scaled(8)
    assert scaled.learning_rate == pytest.approx(8e-4)
    assert scaled.lr_changes == ((15, pytest.approx(8e-5)), (20, pytest.approx(8e-6)))
    assert base.learning_rate == 1e-4  # the original is untouched
    sched = optim.learning_rate_schedule(scaled, 10, 25)
    assert float(sched(0)) == pytest.approx(8e-4) and float(sched(150)) == pytest.approx(8e-5)


def test_adamw_moves_parameters_as_optax_adamw_does():
    params = tiny_params()
    config = optim_config(
        optimizer="adamw",
        trainable=("fc7/.*", "head/.*"),
        weight_decay=0.05,
        no_decay=(".*/bias",),
        b1=0.8,
        b2=0.95,
        eps=1e-6,
        lr_changes=(),
    )
    optimizer = optim.make_optimizer(config, params, 10, 5).tx
    state = optimizer.init(params)
    # Adam state (two moments) for the trainable leaves only.
    adam = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ]
    assert len(adam) == 1
    assert sum(x.size for x in jax.tree.leaves(adam[0].mu)) == 8 * 8 + 8 + 8 * 5 + 5
    trainable = {"fc7": params["fc7"], "head": params["head"]}
    mask = jax.tree.map(lambda _: True, trainable)
    mask["fc7"]["bias"] = False
    mask["head"]["fc_a"]["bias"] = False
    reference = optax.adamw(0.1, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.05, mask=mask)
    ref_state = reference.init(trainable)
    rng = np.random.default_rng(1)
    ours, theirs = params, trainable
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), ours)
        updates, state = optimizer.update(grads, state, ours)
        ours = optax.apply_updates(ours, updates)
        sub = {"fc7": grads["fc7"], "head": grads["head"]}
        ref_updates, ref_state = reference.update(sub, ref_state, theirs)
        theirs = optax.apply_updates(theirs, ref_updates)
    for a, b in zip(
        jax.tree.leaves({"fc7": ours["fc7"], "head": ours["head"]}),
        jax.tree.leaves(theirs),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ours["conv1"]["kernel"], params["conv1"]["kernel"])


def test_sgd_and_adamw_differ_and_unknown_optimizers_are_refused():
    params = tiny_params()
    rng = np.random.default_rng(2)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    moved = {}
    for name in optim.OPTIMIZERS:
        optimizer = optim.make_optimizer(optim_config(optimizer=name), params, 10, 5).tx
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        moved[name] = np.asarray(updates["fc7"]["kernel"])
    assert not np.allclose(moved["sgd"], moved["adamw"])
    with pytest.raises(ValueError, match="optim.optimizer must be one of"):
        optim.make_optimizer(optim_config(optimizer="no-such"), params, 10, 5)
