"""A run's classes belong to its dataset (voc_jax.class_config): settled when the run starts,
saved in config.json, and read back by evaluate and predict with no list given; a generated
dataset of 24 non-VOC classes trains and evaluates end to end in both families, from VOC's
layout and from a label list."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.configs import tiny, tiny_image
from tests.dataset_conversion import voc_to_coco, voc_to_label_list
from tests.helpers import REPO, call, train_args
from voc_jax import class_config, evaluate, predict, train
from voc_jax.classes import VOC_CLASSES
from voc_jax.data.synthetic import SyntheticConfig, generate
from voc_jax.errors import ConfigError, DataError
from voc_jax.metric_writer import read_metrics

NAMES = tuple(f"widget {c:02d}" for c in range(24))  # more than VOC's 20, none of them VOC's
IMAGE_CONFIG = str(REPO / "tests" / "configs" / "tiny_image.py")


@pytest.fixture(scope="module")
def widgets(tmp_path_factory) -> Path:
    """A generated VOC-layout dataset of the 24 widget classes (classes.txt beside it)."""
    config = SyntheticConfig(num_trainval=8, num_test=6, min_side=100, max_side=150,
                             classes=NAMES)  # fmt: skip
    return generate(tmp_path_factory.mktemp("widgets") / "VOC2007", config)


def test_the_list_comes_from_the_config_the_file_or_voc_and_sets_the_outputs(widgets, tmp_path):
    config = tiny.get_config()
    resolved = class_config.resolve(config)
    assert resolved.data.classes == VOC_CLASSES and resolved.model.num_classes == 21
    assert config.model.num_classes == 0  # the caller's config is left as it was
    config.data.root = str(widgets)
    resolved = class_config.resolve(config)
    assert resolved.data.classes == NAMES and resolved.model.num_classes == 25
    image = tiny_image.get_config()
    image.data.root = str(widgets)
    assert class_config.resolve(image).model.num_classes == 24  # no background
    config.data.classes = ("a", "b")
    assert class_config.resolve(config).model.num_classes == 3
    config.model.num_classes = 21
    with pytest.raises(ConfigError, match=r"model.num_classes=21, but the dataset has 2 "
                       r"classes \(data.classes\), so the model needs 3 outputs"):  # fmt: skip
        class_config.resolve(config)
    config.data.classes = ("a", "a")
    with pytest.raises(DataError, match="data.classes: class 'a' is named twice"):
        class_config.resolve(config)


@pytest.mark.parametrize("family", ["patches", "image"])
def test_an_annotation_outside_the_list_is_one_error_naming_file_and_class(
    widgets, tmp_path, capsys, monkeypatch, family
):
    """Refused before the network is built (its init or weights: seconds to minutes)."""
    from voc_jax.experiment import Experiment
    from voc_jax.image.experiment import ImageExperiment

    def not_yet(*args, **kwargs):
        raise AssertionError("the network was built before the data was checked")

    monkeypatch.setattr(Experiment, "build", not_yet)
    monkeypatch.setattr(ImageExperiment, "build", not_yet)
    root = tmp_path / "VOC2007"
    shutil.copytree(widgets, root)
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in NAMES[1:]))
    work = tmp_path / "work"
    argv = train_args(work, f"--config.data.root={root}")
    if family == "image":
        argv[1] = f"--config={IMAGE_CONFIG}"
    code, _, err = call(train.main, argv, capsys)
    assert code == 2 and not work.exists()
    assert err.count("error:") == 1 and f"'{NAMES[0]}'" in err and ".xml" in err


def test_a_label_list_is_refused_by_the_patch_family_before_any_work(tmp_path, capsys):
    code, _, err = call(train.main, train_args(tmp_path / "w", f"--config.data.root={tmp_path}",
                                               "--config.data.format=labels"), capsys)  # fmt: skip
    assert code == 2 and "data.format='labels': a label list has no boxes" in err
    assert not (tmp_path / "w").exists()


def test_a_test_image_in_the_training_split_is_refused(widgets, tmp_path, capsys):
    root = tmp_path / "VOC2007"
    shutil.copytree(widgets, root)
    main = root / "ImageSets" / "Main"
    (main / "test.txt").write_text((main / "test.txt").read_text() + "000000\n")
    code, _, err = call(train.main, train_args(tmp_path / "w", f"--config.data.root={root}"),
                        capsys)  # fmt: skip
    assert code == 2 and "1 images of the test split 'test' are also in the training split" in err


@pytest.mark.slow  # two tiny runs and their evaluations, in-process (~20 s)
def test_other_classes_train_and_evaluate_in_the_patch_family(widgets, tmp_path, capsys,
                                                              quick_compiles):  # fmt: skip
    """24 widget classes in VOC's layout: trained, evaluated, evaluated again and predicted
    from the workdir alone; the same dataset as COCO JSON trains to the same APs, bitwise."""
    work = tmp_path / "patches"
    assert train.main(train_args(work, f"--config.data.root={widgets}")) == 0
    coco_root = tmp_path / "coco"
    for split in ("trainval", "test"):
        voc_to_coco(widgets, split, coco_root, NAMES)
    coco_work = tmp_path / "patches_coco"
    assert train.main(train_args(coco_work, f"--config.data.root={coco_root}",
                                 "--config.data.format=coco")) == 0  # fmt: skip
    for name in ("ap_table.json", "scores.npz"):
        assert (next((coco_work / "eval").glob(f"*/{name}")).read_bytes()
                == next((work / "eval").glob(f"*/{name}")).read_bytes())  # fmt: skip
    saved = json.loads((work / "config.json").read_text())
    assert saved["data"]["classes"] == list(NAMES) and saved["model"]["num_classes"] == 25
    table = json.loads(next((work / "eval").glob("*/ap_table.json")).read_text())
    assert table["classes"] == list(NAMES) and len(table["results"]["voc07"]["ap"]) == 24
    (row,) = [r for r in read_metrics(work) if r.get("kind") == "evaluation"]
    assert row["step"] == 32 and row["split"] == "test" and row["images"] == 6  # 2 x 8 x 2
    assert row["eval_map_voc07"] == table["results"]["voc07"]["map"]
    assert row["eval_OF1_top3"] == table["labels"]["top3"]["OF1"]
    markdown = next((work / "eval").glob("*/ap_table.md")).read_text()
    assert "| widget 23 |" in markdown and "published" not in markdown
    results = next((work / "eval").glob("*/results"))
    assert len(list(results.glob("comp1_cls_test_widget *.txt"))) == 24
    # evaluate and predict from the workdir alone: the list comes from its config.json
    code, out, _ = call(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], capsys)
    assert code == 0 and "| widget 00 |" in out
    photo = sorted((widgets / "JPEGImages").iterdir())[0]
    code, out, _ = call(predict.main, ["voc_jax.predict", f"--workdir={work}",
                                       f"--out={tmp_path / 'p'}", str(photo)], capsys)  # fmt: skip
    assert code == 0 and "  widget " in out


@pytest.mark.slow  # two tiny whole-image runs (~20 s)
def test_a_label_list_trains_the_whole_image_family_as_its_voc_layout_does(widgets, tmp_path,
                                                                           quick_compiles):  # fmt: skip
    """The 24 widget classes as a label list (no boxes) and in VOC's layout: the same photos
    and image labels, so the same training and the same APs, bitwise."""
    root = tmp_path / "labels"
    for split in ("trainval", "test"):
        voc_to_label_list(widgets, split, root, NAMES, ".jsonl" if split == "test" else ".csv")
    tables = {}
    for fmt, data in (("labels", root), ("voc", widgets)):
        work = tmp_path / fmt
        argv = ["voc_jax.train", f"--config={IMAGE_CONFIG}", f"--workdir={work}",
                f"--config.data.root={data}", f"--config.data.format={fmt}"]  # fmt: skip
        assert train.main(argv) == 0
        saved = json.loads((work / "config.json").read_text())
        assert saved["data"]["classes"] == list(NAMES) and saved["model"]["num_classes"] == 24
        tables[fmt] = json.loads(next((work / "eval").glob("*/ap_table.json")).read_text())
        assert tables[fmt]["classes"] == list(NAMES) and tables[fmt]["images"] == 6
    assert tables["labels"]["results"] == tables["voc"]["results"]
    assert tables["labels"]["labels"] == tables["voc"]["labels"]
