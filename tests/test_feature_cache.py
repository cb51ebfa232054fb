"""voc_jax/feature_cache.py: cached and uncached frozen training are the same computation;
the cache is rebuilt when what it depends on changes; a killed build resumes; trainable
layers below fc7 are refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.configs import tiny
from tests.helpers import call, setup_step, train_args
from voc_jax import feature_cache, train
from voc_jax.data.pipeline import epoch_dataset
from voc_jax.data.voc import load_dataset
from voc_jax.experiment import Experiment


def frozen_config(**changes):
    config = tiny.get_config()
    config.optim.trainable = ("head/.*",)
    config.feature_cache.enabled = True
    config.feature_cache.dtype = "float32"
    for key, value in changes.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


@pytest.fixture(scope="module")
def dataset(tiny_data_root):
    return load_dataset(tiny_data_root, "trainval")


def test_cached_step_equals_the_uncached_frozen_step(tmp_path, dataset):
    """From the same state and rng: the same sampled patches and labels, and the same updated
    head parameters (float32 cache: 1e-5 relative)."""
    config = frozen_config()
    exp = Experiment.build(config)
    cache = feature_cache.ensure(exp, dataset, tmp_path, progress=False)
    patch_cfg = exp.patches
    common = dict(images_per_batch=1, train=True, seed=3, epoch=1)
    pixels = epoch_dataset(dataset.records, patch_cfg, **common)[2]
    cached = epoch_dataset(dataset.records, patch_cfg, features=cache, **common)[2]
    np.testing.assert_array_equal(pixels["labels"], cached["labels"])
    assert cached["features"].shape == (1, config.patches.per_image, 256)
    results = {}
    for inputs, batch in (("pixels", pixels), ("prefix", cached)):
        _, state, step, _ = setup_step(config, inputs=inputs)
        state, metrics = step(state, batch)
        results[inputs] = (jax.tree.map(np.asarray, state.params), float(metrics["loss"]))
    assert results["pixels"][1] == pytest.approx(results["prefix"][1], rel=1e-5)
    for a, b in zip(
        jax.tree.leaves(results["pixels"][0]["head"]),
        jax.tree.leaves(results["prefix"][0]["head"]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The cached rows are the network's own fc6 activations of those patches.
    fc6 = exp.prefix_step(np.float32)(exp.model.variables, pixels)
    np.testing.assert_allclose(cached["features"], np.asarray(fc6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_rows_round_trip(tmp_path, dataset, dtype):
    exp = Experiment.build(frozen_config(**{"feature_cache.dtype": dtype}))
    cache = feature_cache.ensure(exp, dataset, tmp_path, progress=False)
    full_exp = Experiment.build(frozen_config())
    full = feature_cache.ensure(full_exp, dataset, tmp_path / "f32", progress=False)
    got = cache.gather(0, np.arange(cache.rows(0))).astype(np.float32)
    want = full.gather(0, np.arange(full.rows(0)))
    assert cache.gather(0, [0]).dtype.name == dtype
    rel = 2**-10 if dtype == "float16" else 2**-7
    np.testing.assert_allclose(got, want, rtol=rel, atol=1e-3)


def test_changed_weights_or_scales_rebuild_never_reuse(tmp_path, dataset, caplog):
    built = []
    for changes in ({}, {}, {"seed": 1}, {"patches.scales": (1.0, 1.5)}):
        exp = Experiment.build(frozen_config(**changes))
        with caplog.at_level(logging.INFO):
            cache = feature_cache.ensure(exp, dataset, tmp_path, progress=False)
        built.append(cache.directory)
    assert built[0] == built[1]  # the same inputs: reused
    assert len({built[0], built[2], built[3]}) == 3  # other weights, other scales: new caches
    assert "complete, verified, reused" in caplog.text
    assert len(list((tmp_path / "feature_cache").iterdir())) == 3


def test_killed_build_resumes_where_it_stopped(tmp_path, dataset, monkeypatch, caplog):
    exp = Experiment.build(frozen_config())
    reference = feature_cache.ensure(exp, dataset, tmp_path / "ref", progress=False)
    monkeypatch.setattr(feature_cache, "COMMIT_EVERY", 2)
    original, calls = feature_cache.candidates_example, []

    def dying(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 4:  # killed while computing the 4th image (3 done, 2 committed)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "candidates_example", dying)
    with pytest.raises(KeyboardInterrupt):
        feature_cache.ensure(exp, dataset, tmp_path / "run", progress=False)
    directory = next((tmp_path / "run" / "feature_cache").iterdir())
    assert json.loads((directory / "progress.json").read_text()) == {"images": 2}
    assert not json.loads((directory / "manifest.json").read_text())["complete"]
    monkeypatch.setattr(feature_cache, "candidates_example", original)
    calls.clear()
    with caplog.at_level(logging.INFO):
        cache = feature_cache.ensure(exp, dataset, tmp_path / "run", progress=False)
    assert "continuing after image 2" in caplog.text
    np.testing.assert_array_equal(np.asarray(cache.features), np.asarray(reference.features))
    assert json.loads((directory / "manifest.json").read_text())["complete"]


def test_trainable_layers_below_fc7_are_refused(tmp_path, capsys):
    code, _, err = call(
        train.main,
        train_args(
            tmp_path / "w",
            "--config.feature_cache.enabled=True",
            "--config.optim.trainable=('fc6/.*', 'head/.*')",
        ),
        capsys,
    )
    assert code == 2
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert "fc6/bias, fc6/kernel" in line and "conv1" not in line
    assert not (tmp_path / "w").exists()


def test_cached_training_run_matches_the_uncached_one(tmp_path, tiny_data_root, capsys):
    """Two epochs of the frozen variant with and without the cache: the same losses (to float
    rounding) and the same test mAP."""
    results = {}
    for name, extra in (("pixels", []), ("cached", ["--config.feature_cache.enabled=True"])):
        work = tmp_path / name
        args = train_args(
            work,
            f"--config.data.root={tiny_data_root}",
            "--config.optim.trainable=('head/.*',)",
            "--config.feature_cache.dtype=float32",
            *extra,
        )
        code, _, _ = call(train.main, args, capsys)
        assert code == 0
        rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
        table = json.loads((work / "eval" / "24" / "ap_table.json").read_text())
        results[name] = ([r["loss"] for r in rows if "loss" in r], table["results"])
    np.testing.assert_allclose(results["pixels"][0], results["cached"][0], rtol=1e-4)
    for protocol in ("voc07", "reference"):
        assert results["pixels"][1][protocol]["map"] == pytest.approx(
            results["cached"][1][protocol]["map"], abs=1e-6
        )


def damage_cache(directory, how: str) -> None:
    features = directory / "features.npy"
    data = bytearray(features.read_bytes())
    if how == "zeroed":
        features.write_bytes(bytes(len(data)))
    elif how == "one-byte":  # in the rows, past the header
        data[len(data) - 1000] ^= 0x40
        features.write_bytes(bytes(data))
    elif how == "truncated":
        features.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "bad-header":
        features.write_bytes(b"NOT NUMPY" + bytes(data[9:]))
    elif how == "manifest":
        (directory / "manifest.json").write_text('{"complete": tru')
    elif how == "digests":
        (directory / "digests.txt").write_text("")


DAMAGE = ["zeroed", "one-byte", "truncated", "bad-header", "manifest", "digests"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_cache_is_set_aside_and_rebuilt(tmp_path, dataset, how, caplog):
    """Damage that reuse would otherwise train on (zeroed rows, a flipped byte) or trip over
    (a truncated file, a broken header, garbled JSON): detected, moved aside, rebuilt."""
    exp = Experiment.build(frozen_config())
    reference = feature_cache.ensure(exp, dataset, tmp_path / "ref", progress=False)
    work = tmp_path / "run"
    first = feature_cache.ensure(exp, dataset, work, progress=False)
    damage_cache(first.directory, how)
    with caplog.at_level(logging.INFO):
        again = feature_cache.ensure(exp, dataset, work, progress=False)
    assert "is damaged" in caplog.text and "moved to" in caplog.text
    aside = [p for p in (work / "feature_cache").iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1  # kept, never deleted
    assert again.directory == first.directory
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(reference.features))


def test_damaged_interrupted_build_is_rebuilt(tmp_path, dataset, monkeypatch, caplog):
    """A garbled progress.json of an interrupted build: not continued from, rebuilt."""
    exp = Experiment.build(frozen_config())
    monkeypatch.setattr(feature_cache, "COMMIT_EVERY", 2)
    original = feature_cache.candidates_example

    def dying(record, index, *args):
        if index == 3:
            raise KeyboardInterrupt
        return original(record, index, *args)

    monkeypatch.setattr(feature_cache, "candidates_example", dying)
    with pytest.raises(KeyboardInterrupt):
        feature_cache.ensure(exp, dataset, tmp_path, progress=False)
    directory = next(p for p in (tmp_path / "feature_cache").iterdir() if p.is_dir())
    (directory / "progress.json").write_text("{")
    monkeypatch.setattr(feature_cache, "candidates_example", original)
    with caplog.at_level(logging.INFO):
        cache = feature_cache.ensure(exp, dataset, tmp_path, progress=False)
    assert "progress.json is unreadable" in caplog.text
    assert feature_cache.verified_images(cache) == len(dataset.records)


def test_full_disk_while_reserving_is_one_line_and_the_build_resumes(
    tmp_path, tiny_data_root, capsys, monkeypatch
):
    """The cache's space is reserved before the first row: a full disk there is one error
    line (not a SIGBUS from a write into the memory map), and the next run builds it."""
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    args = train_args(
        tmp_path / "w",
        f"--config.data.root={tiny_data_root}",
        "--config.optim.trainable=('head/.*',)",
        "--config.feature_cache.enabled=True",
        "--config.num_epochs=1",
    )
    code, _, err = call(train.main, args, capsys)
    assert code == 2 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "no space left on" in lines[0] and "feature cache" in lines[0]
    monkeypatch.undo()
    code, _, _ = call(train.main, args, capsys)
    assert code == 0


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_too_little_disk_is_said_in_units_that_fit(tmp_path, dataset, dtype, monkeypatch):
    """Not "needs 0.00 GiB"; and the float16 advice only where it would help."""
    import shutil
    from collections import namedtuple

    from voc_jax.errors import DiskFull

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1024))
    exp = Experiment.build(frozen_config(**{"feature_cache.dtype": dtype}))
    with pytest.raises(DiskFull) as e:
        feature_cache.ensure(exp, dataset, tmp_path, progress=False)
    message = str(e.value)
    assert " KiB in " in message and "only 1.0 KiB are free" in message
    assert ("feature_cache.dtype=float16" in message) == (dtype == "float32")


def test_an_interrupted_builds_own_blocks_count_as_free(tmp_path, dataset, monkeypatch):
    """A build stopped by a full disk continues once space is freed: the blocks its reserved
    features.npy already holds are its own, not space it still needs."""
    import re
    import shutil
    from collections import namedtuple

    from voc_jax.errors import DiskFull

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1024))
    exp = Experiment.build(frozen_config())
    with pytest.raises(DiskFull) as e:
        feature_cache.ensure(exp, dataset, tmp_path, progress=False)
    directory = Path(re.search(r" in (\S+) but only", str(e.value)).group(1))
    # The interrupted build's reservation: blocks on disk, more than the whole cache needs.
    (directory / "features.npy").write_bytes(np.random.default_rng(0).bytes(8 << 20))
    feature_cache.ensure(exp, dataset, tmp_path, progress=False)
    assert json.loads((directory / "manifest.json").read_text())["complete"] is True


def test_a_cache_directory_in_use_says_which_setting_to_change(tmp_path, dataset):
    """Two trainings sharing feature_cache.dir: the second is told about that directory, not
    about --workdir."""
    from voc_jax.errors import WorkdirBusy
    from voc_jax.workdir_lock import WorkdirLock

    exp = Experiment.build(frozen_config(**{"feature_cache.dir": str(tmp_path / "shared")}))
    with (
        WorkdirLock(tmp_path / "shared", "feature cache build"),
        pytest.raises(WorkdirBusy) as e,
    ):
        feature_cache.ensure(exp, dataset, tmp_path / "other_workdir", progress=False)
    assert "--config.feature_cache.dir" in str(e.value) and "--workdir" not in str(e.value)
