"""The run's class list, settled once where the experiment is assembled: ``data.classes``
filled from the dataset (``classes.txt``, a COCO file's categories, VOC's 20) and
``model.num_classes`` from its length (+1 background in the patch family), so that
``config.json`` carries both and evaluating or predicting from a workdir needs no list."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from voc_jax.data.formats import dataset_classes
from voc_jax.errors import ConfigError


def outputs_for(method: str, num_classes: int) -> int:
    """The model's outputs: one per class, plus background in the patch family."""
    return num_classes + (0 if method == "image" else 1)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``data.classes`` and ``model.num_classes`` settled; a
    ``model.num_classes`` set by hand that disagrees with the list is a ConfigError."""
    d = config.data
    fmt = d.get("format", "voc")
    given = tuple(d.get("classes", ()) or ())
    root = Path(d.root) if d.root and Path(d.root).is_dir() else None
    if root is None and not given:  # generated here (the synthetic set): its own list
        given = tuple(d.synthetic.get("classes", ()) or ())
    classes, source = dataset_classes(fmt, root, given, d.train_split)
    method = config.get("method", "patches")
    wanted = outputs_for(method, len(classes))
    set_by_hand = int(config.model.num_classes)
    if set_by_hand and set_by_hand != wanted:
        background = "" if method == "image" else " + background"
        raise ConfigError(
            f"model.num_classes={set_by_hand}, but the dataset has {len(classes)} classes "
            f"({source}), so the model needs {wanted} outputs ({len(classes)}{background}); "
            "leave model.num_classes at 0 and it follows the class list"
        )
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.data.classes = list(classes)
        out.data.format = fmt
    out.model.num_classes = wanted
    return out
