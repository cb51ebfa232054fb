"""Image-level label lists (voc_jax.data.label_list): the real VOC 2007 subset written as a
CSV and as JSON lines reads back to the VOC reader's image labels and APs; every bad row is
one error naming the file and the line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.dataset_conversion import voc_to_label_list
from voc_jax import metrics
from voc_jax.classes import VOC_CLASSES
from voc_jax.data import formats, label_list
from voc_jax.data.voc import VocError, load_dataset
from voc_jax.errors import DataError


@pytest.fixture(scope="module")
def voc_test(shared_data):
    root = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    return root, load_dataset(root, "test", images="none")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_voc_as_a_label_list_gives_the_same_image_labels_and_aps(voc_test, tmp_path, suffix):
    voc_root, voc = voc_test
    voc_to_label_list(voc_root, "test", tmp_path, VOC_CLASSES, suffix)
    classes, source = formats.dataset_classes("labels", tmp_path, (), "test")
    assert classes == VOC_CLASSES and source == str(tmp_path / "classes.txt")
    got = label_list.load_dataset(tmp_path, "test", classes=classes)
    assert not got.has_boxes and not got.problems
    assert [r.image_id for r in got.records] == [f"JPEGImages/{r.image_id}" for r in voc.records]
    assert all(r.num_objects == 0 for r in got.records)
    np.testing.assert_array_equal(got.targets(), voc.targets())
    scores = np.random.default_rng(1).random(voc.targets().shape)
    for protocol in ("voc07", "area"):
        assert metrics.mean_average_precision(scores, got.targets(), protocol)["ap"].tolist() == (
            metrics.mean_average_precision(scores, voc.targets(), protocol)["ap"].tolist()
        )
    sizes = [(r.width, r.height) for r in got.records]
    assert sizes == [(r.width, r.height) for r in voc.records]  # from the JPEG headers


def write_csv(root, rows, header="image,labels,ignore"):
    (root / "classes.txt").write_text("cat\ndog\ntraffic light\n")
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        Image.new("RGB", (20, 10)).save(tmp_path / f"{name}.jpg")
    return tmp_path


def test_labels_ignore_and_absent_become_one_zero_minus_one(photos):
    write_csv(photos, ["a.jpg,cat;traffic light,dog", "b.jpg,,"])
    got = label_list.load_dataset(photos, "train", classes=("cat", "dog", "traffic light"))
    np.testing.assert_array_equal(got.targets(), [[1, 0, 1], [-1, -1, -1]])
    assert (got.records[0].width, got.records[0].height) == (20, 10)


@pytest.mark.parametrize(
    "rows, message",
    [
        (["a.jpg,cat", "a.jpg,dog"], r"a.jpg is listed twice \(lines 2 and 3\)"),
        (["a.jpg,cat;horse"], r"line 2 \(a.jpg\): unknown class 'horse'"),
        (["a.jpg,cat,cat"], r"line 2 \(a.jpg\): cat is both a label and ignored"),
        (["c.jpg,cat"], r"1 of 1 images listed in train.csv are missing: .*c.jpg"),
        ([",cat"], "line 2: no image path"),
    ],
)
def test_a_bad_row_is_one_error_naming_the_file_and_line(photos, rows, message):
    write_csv(photos, rows)
    with pytest.raises(VocError, match=message) as raised:
        label_list.load_dataset(photos, "train", classes=("cat", "dog", "traffic light"))
    assert "train.csv" in str(raised.value)


def test_bad_files_and_a_missing_class_list_are_named(photos):
    write_csv(photos, ["a.jpg,cat"], header="path,tags")
    with pytest.raises(VocError, match="the header must name the columns image,labels"):
        label_list.load_dataset(photos, "train", classes=("cat",))
    (photos / "train.jsonl").write_text(json.dumps({"image": "a.jpg", "labels": "cat"}) + "\n")
    with pytest.raises(VocError, match="both train.csv and train.jsonl exist"):
        label_list.load_dataset(photos, "train", classes=("cat",))
    (photos / "train.csv").unlink()
    with pytest.raises(VocError, match="train.jsonl: line 1 is not"):
        label_list.load_dataset(photos, "train", classes=("cat",))
    with pytest.raises(VocError, match="no test.csv or test.jsonl"):
        label_list.load_dataset(photos, "test", classes=("cat",))
    (photos / "classes.txt").unlink()
    with pytest.raises(DataError, match="a label list needs its class list"):
        formats.dataset_classes("labels", photos, (), "train")


def test_the_checker_reads_a_label_list_and_counts_per_class(photos, capsys):
    from voc_jax.data import check

    write_csv(photos, ["a.jpg,cat;traffic light,dog", "b.jpg,cat,"])
    assert check.main([str(photos), "--format", "labels", "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "classes (3, from " in out and "classes.txt): cat, dog, traffic light" in out
    assert "| cat           |         2 |         0 |" in out
    assert "| dog           |         0 |         1 |" in out
    write_csv(photos, ["a.jpg,horse"])
    assert check.main([str(photos), "--format", "labels", "--split", "train"]) == 1
    assert "unknown class 'horse'" in capsys.readouterr().out
