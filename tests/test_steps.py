"""voc_jax/steps.py: one real training step, overfitting, no recompiles, multi-device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.configs import tiny
from tests.helpers import first_batch, setup_step
from voc_jax import xla_options
from voc_jax.data.pipeline import epoch_dataset
from voc_jax.data.synthetic import SyntheticConfig, generate
from voc_jax.data.voc import load_dataset
from voc_jax.experiment import Experiment, patch_config

REPO = Path(__file__).resolve().parent.parent
# XLA's quick compiles for every test here: they check what a step does (which parameters
# move, slices against the whole batch, crops, statistics), not the optimised program's
# numerics, which tests/test_xla_options.py checks against float64.
pytestmark = pytest.mark.usefixtures("quick_compiles")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = generate(
        tmp_path_factory.mktemp("syn") / "VOC2007",
        SyntheticConfig(num_trainval=4, num_test=0, min_side=100, max_side=150),
    )
    return load_dataset(root, "trainval").records


def copy(tree):
    return jax.tree.map(lambda a: np.array(a), tree)


def test_frozen_params_bitwise_unchanged(records):
    config = tiny.get_config()
    config.optim.trainable = (r"head/.*",)
    config.optim.weight_decay = 5e-4
    _, state, step, schedule = setup_step(config)
    before = copy(state.params)
    state, metrics = step(state, first_batch(config, records))
    after = copy(state.params)
    for name in ("conv1", "conv5", "fc6", "fc7"):
        for leaf in ("kernel", "bias"):
            assert np.array_equal(before[name][leaf], after[name][leaf]), name
    assert not np.array_equal(before["head"]["fc_a"]["kernel"], after["head"]["fc_a"]["kernel"])
    assert int(state.step) == 2  # 8 patches, micro-batches of 4
    # No optimizer state for the frozen backbone: momentum only for the head.
    sizes = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert sizes == sum(x.size for x in jax.tree.leaves(before["head"]))
    assert float(metrics["learning_rate"]) == float(schedule(1))
    assert set(metrics) == {"loss", "accuracy", "positive_fraction", "learning_rate", "grad_norm"}


def test_full_fine_tune_changes_everything(records):
    config = tiny.get_config()
    _, state, step, _ = setup_step(config)
    before = copy(state.params)
    state, _ = step(state, first_batch(config, records))
    after = copy(state.params)
    for name in ("conv1", "fc6", "head"):
        changed = jax.tree.leaves(
            jax.tree.map(lambda a, b: not np.array_equal(a, b), before[name], after[name])
        )
        assert all(changed), name


@pytest.mark.slow  # 30 updates / two compilations
def test_scan_and_unrolled_agree(records):
    config = tiny.get_config()
    batch = first_batch(config, records)
    results = []
    for unroll in (True, False):
        _, state, step, _ = setup_step(config, unroll=unroll)
        state, metrics = step(state, batch)
        results.append((copy(state.params), float(metrics["loss"])))
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # 30 updates / two compilations
def test_overfits_one_image(records):
    config = tiny.get_config()
    config.model.dropout_rate = 0.0
    config.patches.shuffle = False
    config.optim.learning_rate = 0.003
    config.optim.lr_changes = ()
    config.optim.weight_decay = 0.0
    _, state, step, _ = setup_step(config)
    batch = first_batch(config, records[:1])
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] / 10, losses


def test_second_call_does_not_recompile(records):
    config = tiny.get_config()
    _, state, step, _ = setup_step(config)
    ds = epoch_dataset(records, patch_config(config), images_per_batch=1, train=True, seed=0)
    state, _ = step(state, ds[0])
    state, _ = step(state, ds[1])  # other boxes, labels, image size: same shapes
    assert step._cache_size() == 1


def test_eval_step_scores_every_image(records):
    config = tiny.get_config()
    exp = Experiment.build(config)
    eval_step = exp.eval_step()
    config.images_per_step = 2
    out = eval_step(exp.model.variables, first_batch(config, records, train=False))
    assert out["power"].shape == (2, 20) and out["image_index"].tolist() == [0, 1]
    assert np.isfinite(np.asarray(out["power"])).all()


@pytest.mark.slow
def test_two_devices_match_one(records):
    """tests/multi_device_program.py in a subprocess (the device count is fixed at start),
    with XLA's quick compiles: both meshes' programs are compiled alike, and the compiles
    were half of this test's time."""
    root = str(records[0].image_path.parent.parent)
    result = subprocess.run(
        [sys.executable, "-m", "tests.multi_device_program", root],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    assert report["max_diff"] < 1e-4


def test_host_and_device_crops_train_alike(records):
    """The same step from host-cropped patches and from device crops: the same loss to the
    grey level PIL rounds."""
    losses = {}
    for crops in ("host", "device"):
        config = tiny.get_config()
        config.patches.crops = crops
        config.model.dropout_rate = 0.0
        _, state, step, _ = setup_step(config)
        batch = first_batch(config, records)
        assert ("patches" in batch) == (crops == "host")
        _, metrics = step(state, batch)
        losses[crops] = float(metrics["loss"])
    assert losses["host"] == pytest.approx(losses["device"], rel=1e-3)


@pytest.fixture(scope="module")
def converted_resnet(tmp_path_factory):
    """A narrow torchvision-layout ResNet-26 (ResNet-50's blocks, two a stage: half the
    compile) with non-default statistics, converted (loading it skips the compile of a
    from-scratch ResNet initialisation)."""
    import torch

    from voc_jax import models, weights
    from voc_jax.convert import layout
    from voc_jax.convert import torch_models as tm

    torch.manual_seed(0)
    source = tm.randomize_batch_norm(tm.classifier("resnet26", 10, 1 / 16))
    state = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    variables, classes, width = layout.torch_to_flax(models.backbone("resnet26"), state, "mem")
    metadata = {
        "source": {"kind": "test"},
        "architecture": {"name": "resnet26", "num_classes": classes, "width": width},
        "preprocessing": {"channel_order": "RGB", "scale": 1 / 255, "mean": [0.5] * 3,
                          "std": [0.25] * 3},
    }  # fmt: skip
    return weights.save_converted(tmp_path_factory.mktemp("w") / "r26", variables, metadata)


@pytest.mark.parametrize("bn_update", [False, True], ids=["pretrained-stats", "bn_update"])
def test_batch_norm_statistics_in_the_train_step(records, converted_resnet, bn_update):
    """A BatchNorm ResNet (narrow ResNet-26): by default the statistics stay bitwise what they were and
    BatchNorm's scale and bias train like any parameter; with bn_update the step uses batch
    statistics and returns updated running ones in the state."""
    config = tiny.get_config()
    config.model.arch = "resnet26"
    config.model.width = 1 / 16
    config.init.weights = str(converted_resnet)
    config.model.bn_update = bn_update
    config.optim.trainable = (r"layer4_1/.*", r"head/.*")
    config.patches.per_image = config.patches.min_patches = 4  # one update: a shorter compile
    config.patches.size = 32
    _, state, step, _ = setup_step(config)
    before_stats, before = copy(state.batch_stats), copy(state.params)
    state, metrics = step(state, first_batch(config, records))
    assert np.isfinite(float(metrics["loss"]))
    after_stats, after = copy(state.batch_stats), copy(state.params)
    same = jax.tree.map(np.array_equal, before_stats, after_stats)
    if bn_update:
        assert not all(jax.tree.leaves(same))
    else:
        assert all(jax.tree.leaves(same))
    assert not np.array_equal(before["layer4_1"]["bn3"]["scale"], after["layer4_1"]["bn3"]["scale"])
    assert np.array_equal(before["layer1_0"]["bn1"]["scale"], after["layer1_0"]["bn1"]["scale"])


def test_gradient_in_slices_is_the_whole_batchs(records):
    """grad_chunks: the batch's gradient computed in slices and summed equals the gradient of
    the whole batch (no dropout, so the same function), masked patches included."""
    import jax.numpy as jnp

    from voc_jax import optim, steps
    from voc_jax.models.transfer import TransferNet

    model = TransferNet(width=1 / 16, head_hidden=32, dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (4, 64, 64, 3))
    y = jnp.array([0, -1, 5, 2])  # -1: a patch that does not count
    valid = jnp.array([True, True, True, False])
    params = xla_options.jit_once(model.init)(jax.random.key(1), x[:1])["params"]
    labels = optim.trainable_labels(params, (".*",))
    whole = jax.jit(steps.make_grads(model, labels))(params, {}, x, y, valid, jax.random.key(2))
    sliced = jax.jit(steps.make_grads(model, labels, chunks=2))(
        params, {}, x, y, valid, jax.random.key(2)
    )
    np.testing.assert_allclose(sliced[0][0], whole[0][0], rtol=1e-5)
    np.testing.assert_allclose(sliced[0][1][0], whole[0][1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(sliced[1]), jax.tree.leaves(whole[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="bn_update"):
        steps.make_grads(TransferNet(arch="resnet50", bn_update=True), labels, chunks=2)
