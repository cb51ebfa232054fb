"""A whole-image run end to end on the tiny synthetic set: the frozen run from the map cache
equals the one from the photos, a run killed mid-epoch resumes bitwise, fine-tuning starts
from the frozen run's head, and a config mixing the families is one line before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, call
from voc_jax import train
from voc_jax.errors import ConfigError
from voc_jax.image import validation
from voc_jax.image.data import Source
from voc_jax.metric_writer import read_metrics

CONFIG = str(REPO / "tests" / "configs" / "tiny_image.py")


def args(workdir: Path, data: Path, *overrides: str, variant: str = "resnet26,frozen"):
    return ["voc_jax.train", f"--config={CONFIG}:{variant}", f"--workdir={workdir}",
            f"--config.data.root={data}", *overrides]  # fmt: skip


def ap_table(workdir: Path) -> dict:
    (step,) = sorted((workdir / "eval").iterdir())
    return json.loads((step / "ap_table.json").read_text())


def final_params(workdir: Path):
    """(step, variables as NumPy) of an image workdir's newest checkpoint."""
    import jax

    from voc_jax import workdir as workdir_lib
    from voc_jax.image.experiment import ImageExperiment

    exp = ImageExperiment.build(workdir_lib.load_config(workdir))
    found, variables = workdir_lib.restore_variables(workdir, exp.variables)
    return found, jax.tree.map(np.asarray, variables)


def flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flat(v, f"{prefix}{k}/" if isinstance(v, dict) else f"{prefix}{k}")
    else:
        yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def frozen_cached(tmp_path_factory, tiny_data_root) -> Path:
    import jax

    work = tmp_path_factory.mktemp("image") / "frozen"
    jax.config.update("jax_disable_most_optimizations", True)  # plumbing: quick compiles
    try:
        assert train.main(args(work, tiny_data_root)) == 0
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    return work


@pytest.mark.slow
def test_cached_and_uncached_frozen_runs_are_equal(
    frozen_cached, tiny_data_root, tmp_path, quick_compiles
):
    caches = sorted(p.name for p in (frozen_cached / "feature_cache").iterdir())
    assert [c.split("-")[1] for c in caches] == ["test", "trainval"]
    plain = tmp_path / "plain"
    assert train.main(args(plain, tiny_data_root, "--config.feature_cache.enabled=False")) == 0
    assert not (plain / "feature_cache").exists()
    (s1, p1), (s2, p2) = final_params(frozen_cached), final_params(plain)
    assert s1 == s2 == 4
    for (path, a), (_, b) in zip(flat(p1), flat(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=path)
    got, want = ap_table(frozen_cached)["results"], ap_table(plain)["results"]
    assert got["voc07"]["map"] == pytest.approx(want["voc07"]["map"], abs=1e-6)
    # The backbone did not move; the head did.
    paths = dict(flat(p1))
    assert any(k.startswith("params/head/") for k in paths)


@pytest.mark.slow
def test_own_sizes_from_the_cache_and_from_the_photos_are_equal(
    tiny_data_root, tmp_path, quick_compiles
):
    """resize=own: photos in buckets of their own shapes (several canvases, several
    compiles), their maps cached in the square grid; both runs train and score alike."""
    own = ("--config.image.resize=own", "--config.image.size=128", "--config.image.bucket=32")
    cached, plain = tmp_path / "cached", tmp_path / "plain"
    assert train.main(args(cached, tiny_data_root, *own)) == 0
    assert (
        train.main(args(plain, tiny_data_root, *own, "--config.feature_cache.enabled=False")) == 0
    )
    (s1, p1), (s2, p2) = final_params(cached), final_params(plain)
    assert s1 == s2 == 6  # 6 photos in 3 buckets here: 3 batches an epoch, not 2
    for (path, a), (_, b) in zip(flat(p1), flat(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=path)
    got, want = ap_table(cached)["results"], ap_table(plain)["results"]
    assert got["voc07"]["map"] == pytest.approx(want["voc07"]["map"], abs=1e-6)
    # predict sees each photo on its own bucket's canvas, as the evaluation did
    from voc_jax import workdir as workdir_lib
    from voc_jax.predict import make_predictor

    predictor, _, _ = make_predictor(workdir_lib.load_config(plain), plain, None)
    (step_dir,) = (plain / "eval").iterdir()
    scores = np.load(step_dir / "scores.npz")
    for i in (0, 3):
        photo = tiny_data_root / "JPEGImages" / f"{scores['image_ids'][i]}.jpg"
        result = predictor(str(photo))
        np.testing.assert_allclose(result["scores"], scores["probability"][i], atol=1e-5)


@pytest.mark.slow
def test_a_damaged_map_cache_is_set_aside_and_rebuilt(
    frozen_cached, tmp_path, tiny_data_root, quick_compiles
):
    work = tmp_path / "again"
    shutil.copytree(frozen_cached, work)
    shutil.rmtree(work / "checkpoints")
    shutil.rmtree(work / "eval")
    (work / "metrics.jsonl").unlink()
    train_cache = next(p for p in (work / "feature_cache").iterdir() if "trainval" in p.name)
    features = np.load(train_cache / "features.npy", mmap_mode="r+")
    features[3] += 1.0
    features.flush()
    del features
    assert train.main(args(work, tiny_data_root)) == 0
    aside = [p.name for p in (work / "feature_cache").iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1
    assert ap_table(work)["results"] == ap_table(frozen_cached)["results"]


@pytest.mark.slow
def test_killed_mid_epoch_resumes_bitwise(
    frozen_cached, tiny_data_root, tmp_path, monkeypatch, quick_compiles
):
    """Fine-tuned (crops and flips on the device, BatchNorm statistics, an EMA), SIGTERM after
    the first update of epoch 2: the resumed run's params, metrics and APs are the uninterrupted run's."""
    extra = ("--config.model.bn_update=True", "--config.image.ema=0.5",
             "--config.image.crops_on=device", f"--config.init.head_from={frozen_cached}")  # fmt: skip
    whole = tmp_path / "whole"
    assert train.main(args(whole, tiny_data_root, *extra, variant="resnet26,finetune")) == 0
    killed = tmp_path / "killed"
    original = Source.train_batch

    def interrupt(self, seed, epoch, b):
        if (epoch, b) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, seed, epoch, b)

    monkeypatch.setattr(Source, "train_batch", interrupt)
    assert train.main(args(killed, tiny_data_root, *extra, variant="resnet26,finetune")) == 130
    monkeypatch.setattr(Source, "train_batch", original)
    assert train.main(args(killed, tiny_data_root, *extra, variant="resnet26,finetune")) == 0
    (s1, p1), (s2, p2) = final_params(whole), final_params(killed)
    assert s1 == s2
    for (path, a), (_, b) in zip(flat(p1), flat(p2), strict=True):
        assert np.array_equal(a, b), path

    def rows(work):  # all but the wall-clock rate
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(work)]

    assert rows(whole) == rows(killed)  # 4 training rows, then the evaluation's
    assert [r.get("kind") for r in rows(whole)] == [None] * 4 + ["evaluation"]
    assert ap_table(whole)["results"] == ap_table(killed)["results"]


def test_fine_tuning_starts_from_the_frozen_runs_head(
    frozen_cached, tiny_data_root, tmp_path, quick_compiles
):
    from tests.configs import tiny_image
    from voc_jax.image import run, steps
    from voc_jax.image.experiment import ImageExperiment

    config = tiny_image.get_config("resnet26,finetune")
    config.init.head_from = str(frozen_cached)
    exp = ImageExperiment.build(config)
    optimizer = exp.optimizer(2)
    fresh = steps.create_state(exp.params, exp.batch_stats, optimizer, 0, ema=False)
    state, step, _ = run.restore(exp, run.Checkpointer(tmp_path / "none"), fresh)
    _, frozen = final_params(frozen_cached)
    want = frozen["params"]["head"]["fc"]["kernel"]
    assert step == 0 and np.array_equal(np.asarray(state.params["head"]["fc"]["kernel"]), want)
    assert not np.array_equal(np.asarray(fresh.params["head"]["fc"]["kernel"]), want)


def image_config(arg: str = "resnet26,frozen"):
    from tests.configs import tiny_image

    return tiny_image.get_config(arg)


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda c: c.__setitem__("patches", {"size": 96}), "patches"),
        (lambda c: c.image.__setitem__("pooling", "mean"), "image.pooling"),
        (lambda c: c.image.__setitem__("lse_r", 0.0), "image.lse_r"),
        (lambda c: c.image.__setitem__("lse_r", -2.0), "image.lse_r"),
        (lambda c: c.model.__setitem__("num_classes", -1), "model.num_classes"),
        (lambda c: c.image.__setitem__("crop_area", (0.3, 1.0)), "image.crop_area"),
        (lambda c: (c.model.__setitem__("arch", "alexnet"), c.image.__setitem__("size", 128)),
         "image.size=128"),
        (lambda c: c.image.__setitem__("resize", "native"), "image.resize"),
        (lambda c: c.image.__setitem__("bucket", 48), "image.bucket"),
        (lambda c: c.image.__setitem__("frame", 16), "image.frame"),
        (lambda c: c.image.__setitem__("crops_on", "gpu"), "image.crops_on"),
        (lambda c: (c.model.__setitem__("arch", "alexnet"), c.image.__setitem__("size", 256),
                    c.image.__setitem__("resize", "own"), c.image.__setitem__("bucket", 64)),
         "image.bucket=64"),
    ],
)  # fmt: skip
def test_bad_image_configs_name_the_field(change, field):
    config = image_config()
    with config.unlocked():
        change(config)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validation.validate(config)


def test_a_patch_config_cannot_say_image_and_the_command_says_one_line(tmp_path, capsys):
    code, _, err = call(train.main, ["voc_jax.train", f"--config={CONFIG}", f"--workdir={tmp_path}",
                                     "--config.image.pooling=median"], capsys)  # fmt: skip
    assert code != 0 and err.count("error:") == 1 and "image.pooling" in err
    assert not any(tmp_path.iterdir())
    from voc_jax import validation as patch_validation
    from voc_jax.configs import smoke

    config = smoke.get_config()
    config.method = "images"
    with pytest.raises(ConfigError, match="method='images'"):
        patch_validation.validate(config, 1, 1)


def test_evaluate_and_predict_read_an_image_workdir(
    frozen_cached, tiny_data_root, tmp_path, capsys, quick_compiles
):
    from voc_jax import evaluate, predict

    work = tmp_path / "work"
    shutil.copytree(frozen_cached, work)
    shutil.rmtree(work / "eval")
    code, out, _ = call(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], capsys)
    assert code == 0 and "AP on test" in out
    assert ap_table(work)["results"] == ap_table(frozen_cached)["results"]
    photo = sorted((tiny_data_root / "JPEGImages").iterdir())[0]
    code, out, _ = call(predict.main, ["voc_jax.predict", f"--workdir={work}", "--top=2",
                                       f"--out={tmp_path / 'maps'}", str(photo)], capsys)  # fmt: skip
    assert code == 0, out
    assert "whole image" in out and "sigmoid of its logit pooled over" in out
    assert (tmp_path / "maps" / f"{photo.stem}.png").stat().st_size > 1000
