"""voc_jax/data/voc.py and the check command (voc_jax/data/check.py: its tests are here, on the
same real files): real VOC files, torchvision's parser, bad inputs."""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from voc_jax.classes import CLASS_INDEX, VOC_CLASSES
from voc_jax.data import check
from voc_jax.data.voc import VocError, load_dataset, parse_annotation, read_class_targets


def subset_root(shared: Path) -> Path:
    return shared / "voc2007-subset" / "VOCdevkit" / "VOC2007"


def annotations_root(shared: Path) -> Path:
    return shared / "voc2007-annotations" / "VOC2007"


@functools.lru_cache(maxsize=8)
def parsed(root: Path, split: str, images: str):
    """Each real split parsed once per run (the whole of VOC 2007 takes seconds)."""
    return load_dataset(root, split, images=images)


@pytest.mark.parametrize(
    ("which", "split", "count"),
    [
        ("annotations", "trainval", 5011),
        ("annotations", "test", 4952),
        ("annotations", "train", 2501),
        ("annotations", "val", 2510),
        ("subset", "trainval", 765),
        ("subset", "test", 417),
    ],
)
def test_targets_equal_official_class_files(shared_data, which, split, count):
    root = annotations_root(shared_data) if which == "annotations" else subset_root(shared_data)
    dataset = parsed(root, split, "none" if which == "annotations" else "sizes")
    assert len(dataset) == count and not dataset.problems
    official = read_class_targets(root, split)
    assert official is not None and len(official) == count
    for record in dataset.records:
        np.testing.assert_array_equal(record.targets(), official[record.image_id], record.image_id)


def test_official_object_totals(shared_data):
    root = annotations_root(shared_data)
    for split, objects, difficult in (("trainval", 15662, 3054), ("test", 14976, 2944)):
        records = parsed(root, split, "none").records
        assert sum(r.num_objects for r in records) == objects
        assert sum(int(r.difficult.sum()) for r in records) == difficult


def test_agrees_with_torchvision_voc_detection(shared_data):
    from torchvision.datasets import VOCDetection

    for split in ("trainval", "test"):
        tv = VOCDetection(str(shared_data / "voc2007-subset"), year="2007", image_set=split)
        ours = load_dataset(subset_root(shared_data), split)
        assert len(tv) == len(ours)
        for record, xml_path in zip(ours.records, tv.annotations, strict=True):
            assert Path(xml_path).stem == record.image_id
            objects = tv.parse_voc_xml(ET.parse(xml_path).getroot())["annotation"]["object"]
            names = [VOC_CLASSES[label - 1] for label in record.labels]
            assert names == [o["name"] for o in objects]
            boxes = [
                [float(o["bndbox"][k]) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
                for o in objects
            ]
            np.testing.assert_array_equal(record.boxes, np.array(boxes, np.float32))
            assert record.difficult.tolist() == [o["difficult"] == "1" for o in objects]
            assert record.truncated.tolist() == [o["truncated"] == "1" for o in objects]


def test_parts_and_owner_names_are_not_classes(shared_data):
    # 000009... any person with <part>: parts have names like "head", which are not classes.
    root = subset_root(shared_data)
    with_parts = [
        p for p in sorted((root / "Annotations").glob("*.xml")) if "<part>" in p.read_text()
    ]
    assert with_parts, "the subset has person objects with parts"
    for path in with_parts[:20]:
        record, problems = parse_annotation(path)
        assert record is not None and not problems
        tree = ET.parse(path).getroot()
        assert record.num_objects == len(tree.findall("object"))


def test_check_cli_reports_official_totals(shared_data, capsys):
    code = check.main([str(annotations_root(shared_data)), "--split", "trainval"])
    out = capsys.readouterr().out
    assert code == 0
    assert "5011 images indexed" in out
    # images (a positive of some class), ignored (difficult-only image-class pairs), objects,
    # difficult: VOC 2007 trainval's official totals
    assert "| total        |      5011 |       607 |     15662 |      3054 |" in out
    assert "equal the official per-class files for all 5011 images" in out
    assert "image check: none" in out


def test_check_cli_on_real_images(shared_data, capsys):
    assert check.main([str(subset_root(shared_data)), "--split", "test", "--images", "decode"]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad inputs


def xml_for(
    objects: list[tuple[str, tuple[int, int, int, int]]], size=(100, 80), extra: str = ""
) -> str:
    parts = [f"<annotation><filename>x.jpg</filename>{extra}"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height></size>")
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><truncated>0</truncated>"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def make_root(tmp_path: Path, annotations: dict[str, str], images: dict[str, tuple] | None = None):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, text in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(text)
    images = {i: (100, 80) for i in annotations} if images is None else images
    for image_id, size in images.items():
        if size is not None:
            Image.new("RGB", size, (90, 120, 150)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets/Main/trainval.txt").write_text("".join(f"{i}\n" for i in annotations))
    return root


def test_good_record(tmp_path):
    root = make_root(tmp_path, {"a": xml_for([("dog", (1, 1, 50, 40)), ("cat", (10, 5, 100, 80))])})
    (record,) = load_dataset(root, "trainval").records
    np.testing.assert_array_equal(record.boxes, [[0, 0, 49, 39], [9, 4, 99, 79]])
    assert record.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert (record.width, record.height) == (100, 80)


def test_malformed_xml_names_file_and_line(tmp_path):
    text = "<annotation>\n<size><width>10</width>\n<oops></annotation>"
    root = make_root(tmp_path, {"a": text})
    with pytest.raises(VocError, match=r"a\.xml: malformed XML at line 3"):
        load_dataset(root, "trainval")


def test_unknown_class(tmp_path):
    root = make_root(tmp_path, {"a": xml_for([("dragon", (1, 1, 5, 5))])})
    with pytest.raises(VocError, match=r"a\.xml: object 0: unknown class 'dragon'"):
        load_dataset(root, "trainval")


def test_missing_size(tmp_path):
    root = make_root(tmp_path, {"a": xml_for([("dog", (1, 1, 5, 5))], size=None)})
    with pytest.raises(VocError, match=r"a\.xml: missing <size>"):
        load_dataset(root, "trainval")


def test_box_outside_is_clipped_and_warned(tmp_path):
    root = make_root(tmp_path, {"a": xml_for([("dog", (-5, 1, 140, 50))])})
    dataset = load_dataset(root, "trainval")
    assert len(dataset.warnings) == 1 and "outside the 100x80 image; clipped" in str(
        dataset.warnings[0]
    )
    np.testing.assert_array_equal(dataset.records[0].boxes, [[0, 0, 99, 49]])
    with pytest.raises(VocError, match="clipped"):
        load_dataset(root, "trainval", strict=True)


def test_empty_or_inverted_box_is_dropped_and_warned(tmp_path):
    root = make_root(tmp_path, {"a": xml_for([("dog", (30, 1, 10, 50)), ("cat", (5, 5, 5, 9))])})
    dataset = load_dataset(root, "trainval")
    assert dataset.records[0].num_objects == 0
    assert [("dropped" in p.message) for p in dataset.warnings] == [True, True]
    with pytest.raises(VocError, match="empty or inverted"):
        load_dataset(root, "trainval", strict=True)


def test_missing_images_reported_together(tmp_path):
    annotations = {f"im{i}": xml_for([("dog", (1, 1, 5, 5))]) for i in range(5)}
    root = make_root(tmp_path, annotations, images={"im0": (100, 80), "im1": (100, 80)})
    with pytest.raises(
        VocError, match=r"3 of 5 images listed in trainval\.txt are missing: im2, im3, im4"
    ):
        load_dataset(root, "trainval")
    assert len(load_dataset(root, "trainval", images="none")) == 5


def test_size_disagreeing_with_jpeg(tmp_path):
    root = make_root(tmp_path, {"a": xml_for([("dog", (1, 1, 5, 5))])}, images={"a": (90, 80)})
    with pytest.raises(VocError, match=r"a\.xml: <size> says 100x80 but a\.jpg is 90x80"):
        load_dataset(root, "trainval")


def test_image_that_does_not_decode(tmp_path):
    root = make_root(tmp_path, {"a": xml_for([("dog", (1, 1, 5, 5))])})
    jpeg = root / "JPEGImages" / "a.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 3])
    with pytest.raises(VocError, match=r"a\.jpg: does not decode"):
        load_dataset(root, "trainval", images="decode")
    jpeg.write_bytes(b"not a jpeg")
    with pytest.raises(VocError, match=r"a\.jpg: does not decode"):
        load_dataset(root, "trainval")


def test_xml_entities_are_refused(tmp_path):
    bomb = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><annotation>&e;</annotation>'
    root = make_root(tmp_path, {"a": bomb})
    with pytest.raises(VocError, match=r"a\.xml: refused XML"):
        load_dataset(root, "trainval")


def test_check_cli_exit_codes(tmp_path, capsys):
    root = make_root(tmp_path, {"a": xml_for([("dog", (-5, 1, 40, 50))])})
    assert check.main([str(root)]) == 0  # a warning only
    assert check.main([str(root), "--strict"]) == 1
    assert check.main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such directory" in capsys.readouterr().err
    assert check.main([str(root), "--split", "val"]) == 2
    assert "val.txt: split list not found" in capsys.readouterr().err


def test_patch_statistics_add_up(tmp_path, capsys):
    from voc_jax.data.patches import patch_boxes, patch_labels
    from voc_jax.data.synthetic import SyntheticConfig, generate

    root = generate(tmp_path / "syn", SyntheticConfig(num_trainval=6, num_test=0))
    records = load_dataset(root, "trainval").records
    labels = [
        patch_labels(patch_boxes(r.width, r.height)[0], r.boxes, r.labels, r.difficult)
        for r in records
    ]
    total = sum(len(x) for x in labels)
    positives = sum(int((x > 0).sum()) for x in labels)
    assert check.main([str(root), "--patch-stats"]) == 0
    out = capsys.readouterr().out
    assert f"{total} candidates over 6 images, {positives / total:.2%} positive" in out
    dog = sum(int((x == VOC_CLASSES.index("dog") + 1).sum()) for x in labels)
    assert f"| dog          | {dog:>8} |" in out


def test_person_box_is_bndbox_not_a_part_box_001362(shared_data):
    """The reference's XML reader took the first xmin/ymin/xmax/ymax inside <object>; in
    001362.xml the person's <part> boxes (head, hand) come before its own <bndbox>, so the
    reference trained on the head box (72, 32, 202, 180) there. We read <bndbox>, like the
    official devkit. 130 person objects of VOC 2007 are affected (docs/reference.md)."""
    import xml.etree.ElementTree as ET

    path = annotations_root(shared_data) / "Annotations" / "001362.xml"
    record, problems = parse_annotation(path)
    assert not [p for p in problems if p.severity == "error"]
    person = record.labels == CLASS_INDEX["person"]
    assert person.sum() == 1
    np.testing.assert_array_equal(record.boxes[person][0], [32, 31, 332, 499])  # bndbox - 1
    obj = ET.parse(path).getroot().find("object")
    first = [float(obj.find(f".//{t}").text) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
    assert first == [71, 31, 201, 179]  # what the reference read: the head
    assert not np.array_equal(record.boxes[person][0], first)


def test_decoded_images_are_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    from voc_jax.data import voc
    from voc_jax.data.synthetic import SyntheticConfig, generate

    root = generate(tmp_path / "VOC2007", SyntheticConfig(num_trainval=3, num_test=1))
    decoded = []
    real = voc.decode_check
    monkeypatch.setattr(voc, "decode_check", lambda p: decoded.append(p) or real(p))
    cache = voc.DecodedCache(tmp_path / "work")
    load_dataset(root, "trainval", images="decode", decoded=cache)
    cache.save()
    assert len(decoded) == 3
    again = voc.DecodedCache(tmp_path / "work")
    load_dataset(root, "trainval", images="decode", decoded=again)
    assert len(decoded) == 3  # nothing decoded twice
    image = sorted((root / "JPEGImages").glob("*.jpg"))[0]
    os.utime(image, ns=(0, 0))  # changed file: decoded again
    load_dataset(root, "trainval", images="decode", decoded=again)
    assert len(decoded) == 4
