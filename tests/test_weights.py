"""voc_jax/weights.py: the converted-weights directory, strict loading, transfer params."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from voc_jax import weights
from voc_jax.classes import VOC_CLASSES
from voc_jax.models.alexnet import AlexNet, AlexNetOptions
from voc_jax.models.transfer import TransferNet

METADATA = {
    "source": {"kind": "test", "file": "none", "sha256": "0" * 64},
    "architecture": {"name": "alexnet", "conv1_padding": 2, "input_size": 224, "num_classes": 10},
    "preprocessing": {
        "channel_order": "RGB",
        "scale": 1 / 255,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    },
}


@pytest.fixture(scope="module")
def alexnet_params():
    """Full-size AlexNet parameters: the shapes from Flax (nothing compiled or run: an
    op-by-op init took 12 s), the values random."""
    shapes = jax.eval_shape(
        AlexNet(num_classes=10).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))
    )
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), shapes["params"])


@pytest.fixture()
def saved(tmp_path, alexnet_params) -> Path:
    return weights.save_converted(tmp_path / "w", alexnet_params, METADATA)


@pytest.mark.slow  # full-size AlexNet files
def test_roundtrip(saved, alexnet_params):
    variables, meta = weights.load_converted(saved)
    params = variables["params"]
    assert meta["format"] == weights.FORMAT_NAME and meta["architecture"]["num_classes"] == 10
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(alexnet_params), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.mark.slow  # full-size AlexNet files
def test_save_refuses_to_overwrite_and_inconsistent_params(saved, alexnet_params):
    with pytest.raises(FileExistsError, match="--force"):
        weights.save_converted(saved, alexnet_params, METADATA)
    bad = dict(alexnet_params) | {"fc8": {"kernel": np.zeros((4096, 3)), "bias": np.zeros(3)}}
    with pytest.raises(
        weights.WeightsError, match=r"wrong shape fc8/kernel: expected \(4096, 10\)"
    ):
        weights.save_converted(saved.parent / "other", bad, METADATA)
    assert not (saved.parent / "other").exists()


@pytest.mark.slow  # full-size AlexNet files
def test_failed_overwrite_keeps_the_old_directory(saved, alexnet_params, monkeypatch):
    before = (saved / weights.PARAMS_FILE).read_bytes()

    def boom(_):
        raise OSError("disk full")

    monkeypatch.setattr(weights.serialization, "msgpack_serialize", boom)
    with pytest.raises(OSError, match="disk full"):
        weights.save_converted(saved, alexnet_params, METADATA, overwrite=True)
    assert (saved / weights.PARAMS_FILE).read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["w"]  # no temporary left behind


def test_load_errors_name_the_file(tmp_path, saved, alexnet_params):
    with pytest.raises(weights.WeightsError, match="metadata.json: not found"):
        weights.load_converted(tmp_path / "nowhere")
    meta_path = saved / weights.METADATA_FILE
    meta_path.write_text("{not json")
    with pytest.raises(weights.WeightsError, match="metadata.json: not valid JSON"):
        weights.load_converted(saved)
    meta_path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(weights.WeightsError, match="not a voc-jax weights file"):
        weights.load_converted(saved)
    meta_path.write_text(json.dumps({"format": weights.FORMAT_NAME, **METADATA}))
    (saved / weights.PARAMS_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(
        weights.WeightsError, match="params.msgpack: cannot be decoded|params.msgpack: expected"
    ):
        weights.load_converted(saved)
    wrong = dict(alexnet_params)
    wrong["conv2"] = {"kernel": np.zeros((3, 3, 64, 192), np.float32), "bias": np.zeros(192)}
    del wrong["fc7"]
    (saved / weights.PARAMS_FILE).write_bytes(serialization.msgpack_serialize(wrong))
    with pytest.raises(weights.WeightsError) as info:
        weights.load_converted(saved)
    message = str(info.value)
    assert "params.msgpack: does not match its metadata" in message
    assert "wrong shape conv2/kernel: expected (5, 5, 64, 192), got (3, 3, 64, 192)" in message
    assert "missing fc7/kernel" in message and "missing fc7/bias" in message


@pytest.mark.slow  # full-size AlexNet files
def test_transfer_variables_take_backbone_and_seeded_head(saved):
    variables, meta = weights.load_converted(saved)
    assert list(variables) == ["params"]  # AlexNet: no BatchNorm statistics
    converted = variables["params"]
    a = weights.transfer_variables(variables, meta, seed=0)["params"]
    b = weights.transfer_variables(variables, meta, seed=0)["params"]
    c = weights.transfer_variables(variables, meta, seed=1)["params"]
    assert "fc8" not in a
    np.testing.assert_array_equal(a["conv3"]["kernel"], converted["conv3"]["kernel"])
    np.testing.assert_array_equal(a["fc7"]["bias"], converted["fc7"]["bias"])
    np.testing.assert_array_equal(a["head"]["fc_a"]["kernel"], b["head"]["fc_a"]["kernel"])
    assert not np.array_equal(a["head"]["fc_a"]["kernel"], c["head"]["fc_a"]["kernel"])
    # The tree fits TransferNet exactly (traced through apply: every parameter found, of its
    # shape; nothing to run op by op).
    model = TransferNet(options=AlexNetOptions(meta["architecture"]["conv1_padding"]))
    logits = jax.eval_shape(model.apply, {"params": a}, jnp.zeros((1, 64, 64, 3)))
    assert logits.shape == (1, 21)
    with_fc8 = weights.transfer_variables(variables, meta, keep_classifier=True)["params"]
    np.testing.assert_array_equal(with_fc8["fc8"]["kernel"], converted["fc8"]["kernel"])


@pytest.mark.slow  # full-size AlexNet files
def test_transfer_weights_keep_their_head(tmp_path, alexnet_params):
    head = weights.init_head(num_classes=21, hidden=4096, seed=7)
    params = {k: v for k, v in alexnet_params.items() if k != "fc8"} | {"head": head}
    meta = METADATA | {"architecture": {"name": "transfer", "conv1_padding": 3, "num_classes": 21}}
    path = weights.save_converted(tmp_path / "t", params, meta)
    converted, meta = weights.load_converted(path)
    tp = weights.transfer_variables(converted, meta, seed=0)["params"]
    np.testing.assert_array_equal(tp["head"]["fc_b"]["kernel"], head["fc_b"]["kernel"])
    fresh = weights.transfer_variables(converted, meta, seed=0, keep_head=False)["params"]
    assert not np.array_equal(fresh["head"]["fc_b"]["kernel"], head["fc_b"]["kernel"])
    with pytest.raises(weights.WeightsError, match="the converted head has 21 outputs .* this "
                       "run's dataset needs 5"):  # fmt: skip
        weights.transfer_variables(converted, meta, num_classes=5)
    # a head that names its classes (the converter names the reference's VOC model's) is kept
    # only for those: the same number of other classes is refused
    named = meta | {"architecture": meta["architecture"] | {"classes": list(VOC_CLASSES)}}
    weights.transfer_variables(converted, named, classes=VOC_CLASSES)
    other = [f"widget {c}" for c in range(20)]
    with pytest.raises(weights.WeightsError, match=r"classes are aeroplane, bicycle, bird, "
                       r"boat, ... \(20\), and this run's dataset has widget 0"):  # fmt: skip
        weights.transfer_variables(converted, named, classes=other)
    with pytest.raises(weights.WeightsError, match="not an ImageNet classifier"):
        weights.classifier_from_metadata(meta)
