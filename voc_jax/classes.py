"""Class lists. VOC 2007's 20 classes in the official order are the default; any other list
belongs to its dataset (``classes.txt`` beside it, ``data.classes`` in the config, or a COCO
file's categories) and travels with the run in ``config.json``. The patch family's model adds
background at output 0 (class c is output c + 1); the whole-image family has no background."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from voc_jax.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# The model's output 0 is background ("no object"); class c of VOC_CLASSES is output c + 1.
CLASS_INDEX: dict[str, int] = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
CLASS_FILE = "classes.txt"  # one class name a line, beside a dataset's annotations
# Characters a class name may not hold: names become file names (the devkit's
# comp1_cls_<split>_<class>.txt) and CSV cells.
FORBIDDEN = frozenset('/\\\n\r\t,;"')


def check_classes(names: Sequence[str], where: str) -> tuple[str, ...]:
    """The list as a tuple, or DataError naming ``where`` and the problem: empty, a blank or
    padded name, a character a file name cannot hold, or a name given twice."""
    names = tuple(names)
    if not names:
        raise DataError(f"{where}: the class list is empty; name at least one class")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: class {i + 1} is blank; every class needs a name")
        if name != name.strip():
            raise DataError(f"{where}: class {i + 1} {name!r} has leading or trailing spaces")
        bad = sorted(set(name) & FORBIDDEN)
        if bad:
            raise DataError(
                f"{where}: class {i + 1} {name!r} contains {''.join(bad)!r}; class names become "
                "file names, so use letters, digits, spaces, '-' or '_'"
            )
        if name in seen:
            raise DataError(
                f"{where}: class {name!r} is named twice (classes {seen[name] + 1} and {i + 1})"
            )
        seen[name] = i
    return names


def read_class_file(path: Path) -> tuple[str, ...]:
    """A ``classes.txt``: one name a line, blank lines and ``#`` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); one class name a line") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    names = [line.strip() for line in text.splitlines()]
    return check_classes([n for n in names if n and not n.startswith("#")], str(path))


def class_index(classes: Sequence[str]) -> dict[str, int]:
    """Name -> 1-based label (0 is background in the patch family)."""
    return {name: i + 1 for i, name in enumerate(classes)}


def is_voc(classes: Sequence[str]) -> bool:
    """VOC 2007's classes in the official order: the published figures apply."""
    return tuple(classes) == VOC_CLASSES
