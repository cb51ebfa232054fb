"""voc_jax/data/synthetic.py: deterministic, VOC-valid, varied, and the classes distinct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voc_jax.data import check
from voc_jax.data.synthetic import STYLES, SyntheticConfig, generate, render_image
from voc_jax.data.voc import load_dataset, read_class_targets

REPO = Path(__file__).resolve().parent.parent
CONFIG = SyntheticConfig(num_trainval=24, num_test=12, seed=3)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "VOC2007", CONFIG)


def test_every_class_has_its_own_style():
    combos = {(s.shape, s.colour, s.texture) for s in STYLES}
    assert len(combos) == 20
    for a, b in zip(STYLES[0::2], STYLES[1::2], strict=True):  # classes sharing a shape
        assert a.shape == b.shape and a.colour != b.colour and a.texture != b.texture


def test_passes_check_cleanly(dataset_dir, capsys):
    for split in ("trainval", "test", "train", "val"):
        assert (
            check.main([str(dataset_dir), "--split", split, "--images", "decode", "--strict"]) == 0
        )
        out = capsys.readouterr().out
        assert "0 errors, 0 warnings" in out and "equal the official per-class files" in out


def test_splits_and_targets(dataset_dir):
    trainval = load_dataset(dataset_dir, "trainval")
    test = load_dataset(dataset_dir, "test")
    assert (len(trainval), len(test)) == (24, 12)
    assert len(load_dataset(dataset_dir, "train")) + len(load_dataset(dataset_dir, "val")) == 24
    assert not {r.image_id for r in trainval.records} & {r.image_id for r in test.records}
    official = read_class_targets(dataset_dir, "test")
    for r in test.records:
        np.testing.assert_array_equal(r.targets(), official[r.image_id])


def test_deterministic(dataset_dir, tmp_path):
    again = generate(tmp_path / "again", CONFIG)
    for name in ("JPEGImages/000005.jpg", "Annotations/000030.xml", "ImageSets/Main/dog_test.txt"):
        assert (again / name).read_bytes() == (dataset_dir / name).read_bytes()
    other = generate(tmp_path / "other", SyntheticConfig(num_trainval=2, num_test=0, seed=4))
    assert (other / "Annotations/000000.xml").read_bytes() != (
        dataset_dir / "Annotations/000000.xml"
    ).read_bytes()


def test_variety_like_voc():
    config = SyntheticConfig()
    sizes, counts, fractions, truncated, difficult = [], [], [], 0, 0
    for i in range(120):
        img, objects = render_image(np.random.default_rng([0, i]), config)
        h, w = img.shape[:2]
        sizes += [w, h]
        counts.append(len(objects))
        for o in objects:
            side = max(o.box[2] - o.box[0], o.box[3] - o.box[1]) + 1
            fractions.append(side / min(w, h))
            truncated += o.truncated
            difficult += o.difficult
    assert min(sizes) >= 200 and max(sizes) <= 500 and np.std(sizes) > 50
    assert set(counts) >= {1, 2, 3}
    assert min(fractions) < 0.15 and max(fractions) > 0.7  # widely varied scales
    total = sum(counts)
    assert 0.1 < truncated / total < 0.7 and 0 < difficult / total < 0.3


def test_objects_are_drawn_in_their_colour():
    """The pixels inside a non-occluded, solid object's box are dominated by its class colour."""
    config = SyntheticConfig(max_objects=1)
    for i in range(40):
        img, (obj,) = render_image(np.random.default_rng([1, i]), config)
        style = STYLES[obj.label - 1]
        if style.texture != "solid" or obj.difficult:
            continue
        x0, y0, x1, y1 = obj.box
        patch = img[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).astype(float)
        close = np.linalg.norm(patch - np.array(style.colour), axis=1) < 60
        assert close.mean() > 0.3


def test_refuses_to_overwrite(dataset_dir):
    with pytest.raises(FileExistsError):
        generate(dataset_dir, CONFIG)


@pytest.mark.slow  # two interpreter start-ups
def test_script(tmp_path):
    out = tmp_path / "voc"
    cmd = [sys.executable, str(REPO / "scripts/make_synthetic_voc.py"), "--out", str(out)]
    result = subprocess.run(
        cmd + ["--trainval", "3", "--test", "2"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 5 images" in result.stdout
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 5
    again = subprocess.run(cmd + ["--trainval", "3"], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
