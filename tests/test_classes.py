"""Class lists: the checks a user's list passes through (voc_jax.classes)."""

from __future__ import annotations

import pytest

from voc_jax.classes import (
    VOC_CLASSES,
    check_classes,
    class_index,
    is_voc,
    read_class_file,
)
from voc_jax.errors import DataError


@pytest.mark.parametrize(
    "names, message",
    [
        ((), "the class list is empty"),
        (("cat", "dog", "cat"), r"class 'cat' is named twice \(classes 1 and 3\)"),
        (("cat", " "), "class 2 is blank"),
        (("cat", " dog"), "class 2 ' dog' has leading or trailing spaces"),
        (("cat", "a/b"), "class 2 'a/b' contains '/'"),
        (("cat;dog",), "class 1 'cat;dog' contains ';'"),
    ],
)
def test_bad_lists_are_one_error_naming_the_source_and_class(names, message):
    with pytest.raises(DataError, match=rf"^my list: {message}"):
        check_classes(names, "my list")


def test_a_class_file_reads_names_in_order_skipping_comments_and_blank_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\ntraffic light\n\nfire hydrant\r\nzebra\n")
    assert read_class_file(path) == ("traffic light", "fire hydrant", "zebra")
    path.write_text("a\nb\na\n")
    with pytest.raises(DataError, match=f"^{path}: class 'a' is named twice"):
        read_class_file(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        read_class_file(path)


def test_labels_are_one_based_and_voc_is_recognised_only_in_its_order():
    assert class_index(("x", "y")) == {"x": 1, "y": 2}
    assert is_voc(VOC_CLASSES) and is_voc(list(VOC_CLASSES))
    assert not is_voc(VOC_CLASSES[::-1]) and not is_voc(VOC_CLASSES[:19])
