"""The VOC reader: a VOC-layout root + split -> validated records.

Conventions: boxes are float32 ``(x0, y0, x1, y1)`` in 0-based pixel coordinates, i.e. the XML
value minus 1 (what the reference uses); labels are 1..C in the dataset's class order (VOC's 20 by default;
0 is background in the patch family's model). Every problem is collected with the file it came from; warnings
(clipped or dropped boxes) become errors in strict mode, and all errors are raised together
before any long work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from defusedxml import ElementTree as SafeET

from voc_jax.classes import VOC_CLASSES, class_index
from voc_jax.errors import DataError

MIN_IMAGE_SIDE = 2  # the patch geometry needs at least two pixels along each axis
IMAGE_CHECKS = ("none", "exist", "sizes", "decode")  # how far load_dataset checks the JPEGs
IMAGE_CHECK_CACHE = "image_check.json"  # decoded-and-good images, by path, size and mtime


class VocError(DataError):
    """A dataset that cannot be used as it is; the message lists every problem found."""


@dataclasses.dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


@dataclasses.dataclass(frozen=True, eq=False)
class VocRecord:
    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] (x0, y0, x1, y1), 0-based
    labels: np.ndarray  # int32 [N], 1..num_classes
    difficult: np.ndarray  # bool [N]
    truncated: np.ndarray  # bool [N]
    num_classes: int = len(VOC_CLASSES)  # the dataset's class list's length
    # Image-level targets given as such (a label list has no boxes): int8 [num_classes], as
    # targets() returns them; None: derived from the objects
    image_targets: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        return len(self.labels)

    def targets(self) -> np.ndarray:
        """int8 [num_classes]: 1 has a non-difficult object, 0 only difficult ones, -1 none
        (VOC's official image labels)."""
        if self.image_targets is not None:
            return self.image_targets
        out = np.full(self.num_classes, -1, np.int8)
        out[self.labels[self.difficult] - 1] = 0
        out[self.labels[~self.difficult] - 1] = 1
        return out


@dataclasses.dataclass
class VocDataset:
    root: Path
    split: str
    records: list[VocRecord]
    problems: list[Problem]
    classes: tuple[str, ...] = VOC_CLASSES
    has_boxes: bool = True  # False: image labels only (a label list); no patch training

    def __len__(self) -> int:
        return len(self.records)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def targets(self) -> np.ndarray:
        """int8 [num_images, num_classes] image-level targets (see VocRecord.targets)."""
        if not self.records:
            return np.zeros((0, len(self.classes)), np.int8)
        return np.stack([r.targets() for r in self.records])


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _number(element: ET.Element, tag: str) -> float:
    value = _text(element, tag)
    if value is None:
        raise ValueError(f"missing <{tag}>")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"<{tag}> is {value!r}, not a finite number")
    return number


def parse_annotation(
    xml_path: Path,
    *,
    image_path: Path | None = None,
    strict: bool = False,
    classes: Sequence[str] = VOC_CLASSES,
) -> tuple[VocRecord | None, list[Problem]]:
    """One XML file -> (record or None when unusable, problems found); object names must be
    in ``classes``."""
    where = str(xml_path)
    root, problems = _xml_root(xml_path)
    if root is None:
        return None, problems
    try:
        width, height = _image_size(root)
    except ValueError as e:
        return None, [Problem("error", where, f"{e}; cannot place the boxes without it")]
    objects = _objects(root, where, width, height, strict, problems, class_index(classes))
    if any(p.severity == "error" for p in problems):
        return None, problems
    boxes, labels, difficult, truncated = objects
    record = VocRecord(
        image_id=xml_path.stem,
        image_path=image_path if image_path is not None else xml_path,
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int32),
        difficult=np.asarray(difficult, bool),
        truncated=np.asarray(truncated, bool),
        num_classes=len(classes),
    )
    return record, problems


def _xml_root(xml_path: Path) -> tuple[ET.Element | None, list[Problem]]:
    """The parsed root element, or None and the one problem that prevented it."""
    where = str(xml_path)
    try:
        return SafeET.parse(xml_path).getroot(), []
    except ET.ParseError as e:
        line, column = e.position
        return None, [
            Problem("error", where, f"malformed XML at line {line}, column {column}: {e}")
        ]
    except OSError as e:
        return None, [Problem("error", where, f"cannot read: {e}")]
    except Exception as e:  # defusedxml refuses entities, DTDs and the like
        return None, [Problem("error", where, f"refused XML ({type(e).__name__}): {e}")]


def _image_size(root: ET.Element) -> tuple[int, int]:
    """(width, height) from <size>; ValueError when missing, not a number or too small."""
    size = root.find("size")
    if size is None:
        raise ValueError("missing <size>")
    width, height = int(_number(size, "width")), int(_number(size, "height"))
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ValueError(
            f"<size> {width}x{height} is too small (patches need at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels)"
        )
    return width, height


def _objects(
    root: ET.Element,
    where: str,
    width: int,
    height: int,
    strict: bool,
    problems: list[Problem],
    index_of: dict[str, int],
) -> tuple[list, list, list, list]:
    """(boxes, labels, difficult, truncated) of the usable objects, 0-based boxes clipped to
    the image; every problem appended to ``problems`` (clipping is a warning unless
    ``strict``, an unknown class or a box that is not four numbers an error)."""

    def warn(message: str) -> None:
        problems.append(Problem("error" if strict else "warning", where, message))

    boxes, labels, difficult, truncated = [], [], [], []
    for index, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")  # a direct child only: <part> names are not classes
        if name not in index_of:
            problems.append(Problem("error", where, f"object {index}: unknown class {name!r}"
                                    f"{unknown_hint(index_of)}"))  # fmt: skip
            continue
        bndbox = obj.find("bndbox")
        try:
            if bndbox is None:
                raise ValueError("missing <bndbox>")
            x0, y0, x1, y1 = (_number(bndbox, t) - 1.0 for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as e:
            problems.append(Problem("error", where, f"object {index} ({name}): {e}"))
            continue
        clipped = (
            float(np.clip(x0, 0, width - 1)),
            float(np.clip(y0, 0, height - 1)),
            float(np.clip(x1, 0, width - 1)),
            float(np.clip(y1, 0, height - 1)),
        )
        if clipped != (x0, y0, x1, y1):
            warn(
                f"object {index} ({name}): box {(x0 + 1, y0 + 1, x1 + 1, y1 + 1)} outside the "
                f"{width}x{height} image; clipped"
            )
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            warn(f"object {index} ({name}): empty or inverted box {clipped} (0-based); dropped")
            continue
        boxes.append(clipped)
        labels.append(index_of[name])
        difficult.append(_text(obj, "difficult") == "1")
        truncated.append(_text(obj, "truncated") == "1")
    return boxes, labels, difficult, truncated


def unknown_hint(index_of: dict[str, int]) -> str:
    """What to do about a class outside the list (VOC's 20 unless the dataset names others)."""
    if tuple(index_of) == VOC_CLASSES:
        return (
            " (not one of VOC's 20; for other classes put their list in classes.txt beside "
            "Annotations/ or set data.classes)"
        )
    return f" (not in the dataset's class list of {len(index_of)}: classes.txt or data.classes)"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VocError(f"{path}: not UTF-8 text (byte {e.start}); is it a VOC list file?") from e
    except OSError as e:
        raise VocError(f"{path}: cannot read ({e.strerror})") from e


def read_split(root: Path, split: str) -> list[str]:
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise VocError(f"{path}: split list not found (is {root} a VOC2007 directory?)")
    ids = [line.split()[0] for line in _read_text(path).splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        raise VocError(f"{path}: lists some image ids more than once")
    return ids


def read_class_targets(
    root: Path, split: str, classes: Sequence[str] = VOC_CLASSES
) -> dict[str, np.ndarray] | None:
    """The official per-class files as {image_id: int8 [C]}, or None when absent."""
    main = Path(root) / "ImageSets" / "Main"
    columns: dict[str, np.ndarray] = {}
    for c, name in enumerate(classes):
        path = main / f"{name}_{split}.txt"
        if not path.is_file():
            return None
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
                raise VocError(
                    f"{path}: line {number} is {line.strip()[:60]!r}; expected "
                    "'<image id> <1|0|-1>'"
                )
            image_id, value = fields
            columns.setdefault(image_id, np.full(len(classes), -2, np.int8))[c] = int(value)
    return columns


# PIL modes of 8 bits per channel, which convert to RGB faithfully. A 16-bit or float image
# (a PNG named .jpg, say: modes I;16, I, F) would convert by clipping, to a white image.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                             "CMYK", "YCbCr", "LAB", "HSV"})  # fmt: skip


class ModeError(ValueError):
    """An image whose pixels are not 8 bits per channel."""


# The most pixels an image may have (VOC's are at most 500 x 500; a phone photo 12-50 MP): a
# 291 KB PNG can hold 10000 x 10000 pixels, 300 MB decoded. Raised with data.max_image_pixels
# (training, evaluation) or predict's --max_pixels, both of which set this variable, which
# the pipeline's worker processes inherit.
MAX_PIXELS_ENV = "VOC_JAX_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000


def max_pixels() -> int:
    try:
        return int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    except ValueError:
        return DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int) -> None:
    os.environ[MAX_PIXELS_ENV] = str(int(limit))


class TooLarge(ValueError):
    """An image with more pixels than the limit (the message says how to raise it)."""


def check_pixels(size: tuple[int, int]) -> None:
    """Refuse, before decoding, an image larger than the limit."""
    w, h = size
    limit = max_pixels()
    if w * h > limit:
        raise TooLarge(
            f"is {w}x{h} pixels ({w * h / 1e6:.1f} MP, {3 * w * h / 2**20:.0f} MiB decoded), "
            f"more than the limit of {limit / 1e6:g} MP; raise it with "
            f"--config.data.max_image_pixels (predict: --max_pixels) if it is meant"
        )


def check_mode(mode: str) -> None:
    """Refuse an image whose pixels are not 8 bits per channel (naming the mode)."""
    if mode not in EIGHT_BIT_MODES:
        raise ModeError(
            f"is a {mode} image, not 8 bits per channel: converting it would clip it (a 16-bit "
            "image turns white); save it as an 8-bit RGB JPEG"
        )


def open_image(path: str | Path):
    """PIL's ``Image.open`` with PIL's own decompression-bomb limit off: ours (``check_pixels``,
    the user's ``data.max_image_pixels`` or ``--max_pixels``) is checked on the header before
    any decoding, and PIL's fixed one (179 MP) would refuse a limit raised above it first."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return Image.open(path)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with open_image(path) as im:
        check_mode(im.mode)
        check_pixels(im.size)
        return im.size


def decode_check(path: Path) -> tuple[int, int]:
    """Decode every pixel (a truncated JPEG fails here, not hours into training); returns
    (width, height)."""
    with open_image(path) as im:
        check_mode(im.mode)
        check_pixels(im.size)
        im.load()
        return im.size


class DecodedCache:
    """Images already decoded successfully, keyed by path with their size and mtime, so a
    rerun on the same workdir does not decode the whole dataset again."""

    def __init__(self, directory: Path | None):
        self.path = None if directory is None else Path(directory) / IMAGE_CHECK_CACHE
        self.entries: dict[str, list[int]] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except ValueError:
                self.entries = {}

    @staticmethod
    def _key(path: Path) -> list[int]:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def known_good(self, path: Path) -> bool:
        return self.entries.get(str(path.absolute())) == self._key(path)

    def add(self, path: Path) -> None:
        self.entries[str(path.absolute())] = self._key(path)
        self.changed = True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)


def checked_size(
    image_path: Path, images: str, decoded: DecodedCache, problems: list[Problem]
) -> tuple[int, int] | None:
    """(width, height) of an image from its header, and decoded in full when ``images`` is
    "decode" (unless ``decoded`` knows it); None, with the problem appended, when it is
    unreadable, too large or not 8 bits per channel."""
    try:
        w, h = image_size(image_path)
        if images == "decode" and not decoded.known_good(image_path):
            w, h = decode_check(image_path)
            decoded.add(image_path)
    except Exception as e:  # PIL raises several types for broken files
        problem = (
            str(e)
            if isinstance(e, (ModeError, TooLarge))
            else f"does not decode ({type(e).__name__}: {e})"
        )
        problems.append(Problem("error", str(image_path), problem))
        return None
    return w, h


def missing_images(paths: Sequence[Path], where: str, listed: str) -> list[Problem]:
    """One error naming the images of a split that do not exist (the first 20 of them)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if not missing:
        return []
    shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
    message = f"{len(missing)} of {len(paths)} images listed in {listed} are missing: {shown}"
    return [Problem("error", where, message)]


def load_dataset(
    root: str | Path,
    split: str,
    *,
    strict: bool = False,
    images: str = "sizes",
    raise_on_error: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
    decoded: DecodedCache | None = None,
    classes: Sequence[str] = VOC_CLASSES,
    first: int = 0,
) -> VocDataset:
    """Index ``root`` (a VOC2007-layout directory) for ``split``; object names must be in
    ``classes`` (VOC's 20 unless the dataset names its own). ``first``: only the split's
    first that many images are read and checked (0: all), for a run that uses no others.

    ``images``: "none" (annotations only), "exist" (all listed images must exist: missing ones
    are reported together), "sizes" (also compare the XML size with the file's header), or
    "decode" (also decode every image, so that a truncated JPEG is found now: about 30 s for
    VOC 2007; with a ``decoded`` cache the images that decoded are remembered by size and
    mtime, and a rerun skips them; the caller saves it). Raises VocError listing every error
    unless ``raise_on_error`` is False (then check ``dataset.errors``).
    """
    root = Path(root)
    if images not in IMAGE_CHECKS:
        raise ValueError(f"images must be none, exist, sizes or decode, got {images!r}")
    ids = read_split(root, split)
    if first:
        ids = ids[:first]
    problems: list[Problem] = []
    jpeg_dir = root / "JPEGImages"
    if images != "none":
        missing = [i for i in ids if not (jpeg_dir / f"{i}.jpg").is_file()]
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            message = (
                f"{len(missing)} of {len(ids)} images listed in {split}.txt are missing: {shown}"
            )
            problems.append(Problem("error", str(jpeg_dir), message))
    records = []
    decoded = decoded if decoded is not None else DecodedCache(None)
    iterator: Iterable[str] = progress(ids) if progress else ids
    for image_id in iterator:
        xml_path = root / "Annotations" / f"{image_id}.xml"
        image_path = jpeg_dir / f"{image_id}.jpg"
        if not xml_path.is_file():
            problems.append(Problem("error", str(xml_path), f"annotation of {image_id} not found"))
            continue
        record, found = parse_annotation(
            xml_path, image_path=image_path, strict=strict, classes=classes
        )
        problems.extend(found)
        if record is None:
            continue
        if images in ("sizes", "decode") and image_path.is_file():
            size = checked_size(image_path, images, decoded, problems)
            if size is None:
                continue
            w, h = size
            if (w, h) != (record.width, record.height):
                problems.append(
                    Problem(
                        "error",
                        str(xml_path),
                        f"<size> says {record.width}x{record.height} but {image_path.name} is {w}x{h}",
                    )
                )
                continue
        records.append(record)
    return finished(VocDataset(root, split, records, problems, tuple(classes)), raise_on_error)


def finished(dataset: VocDataset, raise_on_error: bool) -> VocDataset:
    """A reader's last step (every format's): the dataset, or VocError listing every error
    found, the first naming its file, unless ``raise_on_error`` is False."""
    if raise_on_error and dataset.errors:
        raise VocError(
            format_problems(
                dataset.errors, header=f"{dataset.root} ({dataset.split}): ", severity=False
            )
        )
    return dataset


def format_problems(
    problems: Sequence[Problem], header: str = "", limit: int = 50, severity: bool = True
) -> str:
    """The first problem on the first line (it names the file), the others listed below;
    without ``severity`` when they are all errors of an exception (the command prints one
    'error:' in front)."""
    shown = [str(p) if severity else f"{p.path}: {p.message}" for p in problems[:limit]]
    if len(problems) == 1:
        return f"{header}{shown[0]}"
    lines = shown[1:]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return f"{header}{shown[0]} (and {len(problems) - 1} more problems:)\n  " + "\n  ".join(lines)
