"""The three dataset formats behind one interface: which class list a dataset has, and its
validated splits. ``voc`` (VOC2007's layout: Annotations/, JPEGImages/, ImageSets/Main/),
``coco`` (annotations/instances_<split>.json and <split>/), ``labels`` (<split>.csv or
<split>.jsonl: image-level labels, no boxes). A dataset's classes are, in order of
precedence: the config's ``data.classes``, ``ROOT/classes.txt``, the format's own (VOC's 20;
a COCO training file's categories); a label list has none of its own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voc_jax.classes import CLASS_FILE, VOC_CLASSES, check_classes, read_class_file
from voc_jax.data import coco, label_list, voc
from voc_jax.data.voc import VocDataset
from voc_jax.errors import DataError

FORMATS = ("voc", "coco", "labels")
HAS_BOXES = {"voc": True, "coco": True, "labels": False}  # the patch family needs boxes


def dataset_classes(
    fmt: str, root: Path | None, given: Sequence[str], train_split: str
) -> tuple[tuple[str, ...], str]:
    """(the class list, where it came from). ``root`` None: the dataset is generated (the
    synthetic set, whose classes are ``given`` or VOC's)."""
    if given:
        return check_classes(given, "data.classes"), "data.classes"
    if root is not None and (root / CLASS_FILE).is_file():
        return read_class_file(root / CLASS_FILE), str(root / CLASS_FILE)
    if fmt == "coco" and root is not None:
        return coco.file_classes(root, train_split), str(coco.annotation_file(root, train_split))
    if fmt == "labels":
        raise DataError(
            f"{root}: a label list needs its class list: put the names, one a line, in "
            f"{CLASS_FILE} beside it, or set --config.data.classes"
        )
    return VOC_CLASSES, "VOC 2007's 20 classes (the default)"


def load_dataset(
    fmt: str, root: Path, split: str, *, classes: Sequence[str], **kwargs: Any
) -> VocDataset:
    """A split of a dataset in format ``fmt``, checked as ``voc.load_dataset`` checks (its
    keyword arguments: strict, images, raise_on_error, progress, decoded)."""
    reader = {"voc": voc.load_dataset, "coco": coco.load_dataset,
              "labels": label_list.load_dataset}[fmt]  # fmt: skip
    return reader(root, split, classes=classes, **kwargs)
