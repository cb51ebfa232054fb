"""The COCO reader (voc_jax.data.coco): the real VOC 2007 subset converted to COCO JSON reads
back to the VOC reader's records and APs; every malformed file is one error naming it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tests.dataset_conversion import voc_to_coco
from voc_jax import metrics
from voc_jax.classes import VOC_CLASSES
from voc_jax.data import coco, formats
from voc_jax.data.voc import VocError, load_dataset


def subset(shared):
    return shared / "voc2007-subset" / "VOCdevkit" / "VOC2007"


@pytest.fixture(scope="module")
def converted(shared_data, tmp_path_factory):
    """The subset's test split (417 photos) as COCO, and the VOC reader's records of it."""
    root = tmp_path_factory.mktemp("coco")
    voc_to_coco(subset(shared_data), "test", root, VOC_CLASSES)
    return root, load_dataset(subset(shared_data), "test", images="sizes")


def test_voc_as_coco_gives_the_same_records_and_aps(converted):
    root, voc = converted
    classes, source = formats.dataset_classes("coco", root, (), "test")
    assert classes == VOC_CLASSES and source.endswith("instances_test.json")
    got = coco.load_dataset(root, "test", classes=classes, images="sizes")
    assert [r.image_id for r in got.records] == [r.image_id for r in voc.records]
    for a, b in zip(got.records, voc.records, strict=True):
        assert (a.width, a.height) == (b.width, b.height)
        np.testing.assert_array_equal(a.boxes, b.boxes)  # COCO's [x, y, w, h] inverted exactly
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.difficult, b.difficult)  # crowd read as difficult
        assert a.image_path.resolve() == b.image_path.resolve()
    targets = got.targets()
    np.testing.assert_array_equal(targets, voc.targets())
    scores = np.random.default_rng(0).random(targets.shape)
    for protocol in ("voc07", "area", "reference"):
        assert (
            metrics.mean_average_precision(scores, targets, protocol)["map"]
            == (metrics.mean_average_precision(scores, voc.targets(), protocol)["map"])
        )
    assert not got.problems


def test_categories_follow_the_files_order_and_a_given_list_must_hold_them(tmp_path, converted):
    root, _ = converted
    data = json.loads((root / "annotations" / "instances_test.json").read_text())
    data["categories"] = data["categories"][::-1]  # the dense list is the file's order
    write(tmp_path, data)
    classes = coco.file_classes(tmp_path, "test")
    assert classes == VOC_CLASSES[::-1]
    got = coco.load_dataset(tmp_path, "test", classes=classes, images="none")
    want = coco.load_dataset(root, "test", classes=VOC_CLASSES, images="none")
    np.testing.assert_array_equal(got.targets(), want.targets()[:, ::-1])
    with pytest.raises(VocError, match="category 119 'tvmonitor' is not in the class list"):
        coco.load_dataset(tmp_path, "test", classes=VOC_CLASSES[:19], images="none")


def write(root, data, split="test"):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def tiny():
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40},
                   {"id": 2, "file_name": "b.jpg", "width": 30, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10]},
                        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5, 5, 5, 5],
                         "iscrowd": 1}],
        "categories": [{"id": 7, "name": "zebra"}, {"id": 9, "name": "traffic light"}],
    }  # fmt: skip


def test_clipped_boxes_and_unused_categories_are_one_warning_each_with_a_count(tmp_path):
    data = tiny()
    data["annotations"] += [
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [45, 35, 20, 20]},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [-5, 0, 10, 10]},
    ]
    got = coco.load_dataset(write(tmp_path, data), "test", classes=("zebra", "traffic light"),
                            images="none")  # fmt: skip
    assert [p.message for p in got.warnings] == [
        "1 categories have no annotation in this split: traffic light",
        "2 boxes reach outside their image; clipped to it",
    ]
    np.testing.assert_array_equal(got.records[0].boxes[1:], [[45, 35, 49, 39], [0, 0, 4, 9]])
    # crowd-only: neither positive nor negative, as VOC's difficult-only
    np.testing.assert_array_equal(got.targets(), [[1, -1], [0, -1]])
    with pytest.raises(VocError, match="2 boxes reach outside"):
        coco.load_dataset(tmp_path, "test", classes=("zebra", "traffic light"), images="none",
                          strict=True)  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["images"].append(dict(d["images"][0], id=3)), "file a.jpg is listed twice"),
        (lambda d: d["images"].append(dict(d["images"][1], file_name="c.jpg")),
         "id 2 is listed twice"),
        (lambda d: d["annotations"].append({"id": 5, "image_id": 8, "category_id": 7,
                                            "bbox": [0, 0, 1, 1]}),
         "image 8 is not in the images list"),
        (lambda d: d["annotations"].append({"id": 5, "image_id": 1, "category_id": 3,
                                            "bbox": [0, 0, 1, 1]}),
         "category 3 is not in the categories list"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, "nan", 1]), "is not finite"),
        (lambda d: d["annotations"][0].pop("bbox"), "missing or bad field"),
        (lambda d: d["images"][0].update(width=1), "size 1x40 is below 2x2"),
        (lambda d: d.pop("categories"), "no 'categories' list; is it a COCO instances file"),
    ],
)  # fmt: skip
def test_a_malformed_file_is_one_error_naming_it(tmp_path, change, message):
    data = copy.deepcopy(tiny())
    change(data)
    write(tmp_path, data)
    with pytest.raises(VocError, match=message) as raised:
        coco.load_dataset(tmp_path, "test", classes=("zebra", "traffic light"), images="none")
    assert "instances_test.json" in str(raised.value)


def test_a_missing_file_or_image_is_named(tmp_path):
    with pytest.raises(VocError, match="instances_train2014.json: COCO annotation file not found"):
        coco.load_dataset(tmp_path, "train2014", classes=("zebra",))
    write(tmp_path, tiny())
    with pytest.raises(VocError, match=r"2 of 2 images listed in instances_test.json are missing"):
        coco.load_dataset(tmp_path, "test", classes=("zebra", "traffic light"), images="exist")


def test_the_checker_reads_coco_and_counts_per_class(converted, capsys):
    from voc_jax.data import check

    root, voc = converted
    assert check.main([str(root), "--format", "coco", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "417 images indexed" in out and "classes (20, from " in out
    assert "| total        |       417 |" in out and "0 errors, 0 warnings" in out
