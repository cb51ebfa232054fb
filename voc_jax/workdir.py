"""A training workdir's own files beside its checkpoints: ``config.json`` (the resolved config
of the run) and the parameters evaluation and prediction restore from it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from voc_jax import distributed
from voc_jax.atomic import free_name
from voc_jax.checkpoint import Checkpointer, abstract_like
from voc_jax.errors import CheckpointError, ConfigError, DataError, WorkdirBusy
from voc_jax.workdir_lock import busy_holder

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


# Fields a checkpoint's arrays depend on: a resume (or an evaluation) with another value
# cannot restore it, so it is refused up front, naming them.
# Config fields added after workdirs were first written, with the value older runs had.
# (An old top-level model.conv1_padding is AlexNet's option now: voc_jax.config_compat.)
LATER_FIELDS = {
    "model.arch": "alexnet",
    "model.bn_update": False,
    "model.options": {},
    "data.max_image_pixels": 64_000_000,
    "init.head_from": "",
    "data.format": "voc",
    "data.classes": (),  # settled from the dataset (voc_jax.class_config): VOC's 20 then
}
# What a checkpoint's shapes and meaning depend on: resuming or evaluating with another is
# refused. (data.classes: the same number of other classes would silently mean other things.)
SHAPE_FIELDS = ("model.arch", "model.num_classes", "model.head_hidden", "model.width",
                "data.classes")  # fmt: skip
# model.bn_update: a resume that toggles it would restore statistics updated by batches and
# then freeze them (or start updating pretrained ones) mid-run: refused like a shape change.
STATE_FIELDS = ("optim.optimizer", "optim.trainable", "model.bn_update")


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """``WORKDIR/config.json`` (process 0); every different earlier one is kept, as
    ``config.json.old``, ``config.json.old.2``, ...: none is ever overwritten."""
    if not distributed.is_main():
        return
    path = workdir / CONFIG_FILE
    text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text() != text:
        kept = free_name(workdir / f"{CONFIG_FILE}.old", first_number=2)
        log.warning("%s differs from this run's config; the old one is kept as %s", path, kept)
        path.replace(kept)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_before_training(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """What can be refused before anything is read or written: checkpoints that cannot be
    listed, a resume whose config changed what the checkpoint holds, and an evaluation-only
    run with nothing to evaluate."""
    directory = workdir / CHECKPOINTS
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"{directory}: is not a directory, so the workdir's checkpoints cannot be listed; "
            "move it away (or use another --workdir)"
        )
    has_checkpoints = directory.is_dir() and bool(_steps(directory))
    if has_checkpoints:
        check_unchanged(config, workdir, SHAPE_FIELDS + STATE_FIELDS, "resume")
    elif config.init.get("head_from"):
        check_head_source(config, Path(config.init.head_from), workdir)
    elif config.num_epochs == 0 and not config.init.weights:
        raise ConfigError(
            f"num_epochs=0 only evaluates, but {workdir} has no checkpoint and init.weights is "
            "empty: there is nothing to evaluate. Train first, or pass --config.init.weights"
        )


def check_before_evaluating(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """An evaluation must score trained weights or converted ones: refuse a workdir whose
    checkpoints cannot be listed, or that has none while init.weights is empty (it would
    score a random network), as ``train --config.num_epochs=0`` does."""
    directory = workdir / CHECKPOINTS
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"{directory}: is not a directory, so the workdir's checkpoints cannot be listed; "
            "move it away (or use another --workdir)"
        )
    if not (directory.is_dir() and _steps(directory)) and not config.init.weights:
        raise ConfigError(
            f"{workdir} has no checkpoint and init.weights is empty: there is nothing to "
            "evaluate (it would score a randomly initialised network). Train first, or pass "
            "--config.init.weights"
        )


def check_head_source(config: ml_collections.ConfigDict, source: Path, workdir: Path) -> None:
    """``init.head_from`` must name another training workdir with a checkpoint whose head has
    this config's shape (the same backbone features, classes and hidden layer)."""
    what = f"init.head_from={source}"
    if source.absolute() == workdir.absolute():
        raise ConfigError(f"{what}: is this run's own workdir; name the run to start from")
    if not checkpoint_steps(source):
        raise CheckpointError(
            f"{what}: no checkpoint in {source / CHECKPOINTS}; train that run first (or leave "
            "init.head_from empty for a fresh head)"
        )
    saved = load_config(source)
    changed = [
        f"{key}: {_plain(_get(saved, key))!r} there, {_plain(_get(config, key))!r} here"
        for key in SHAPE_FIELDS
        if _plain(_get(saved, key)) != _plain(_get(config, key))
    ]
    if changed:
        raise ConfigError(
            f"{what}: its head does not fit this model ({'; '.join(changed)}); start from a run "
            "of the same model"
        )


def restore_head(source: Path, params: dict[str, Any]) -> tuple[int, Any]:
    """(step, head params) of ``source``'s newest good checkpoint, shaped as ``params["head"]``."""
    checkpointer = Checkpointer(source / CHECKPOINTS, asynchronous=False)
    try:
        step, restored = checkpointer.restore({"params": abstract_like(params)})
    finally:
        checkpointer.close()
    return step, restored["params"]["head"]


def check_checkpoint_classes(data: dict[str, Any], classes: Sequence[str], where: Path) -> None:
    """A checkpoint records its run's classes: resuming it with another list is refused (a
    head of the same shape would silently mean other classes). Older checkpoints (no list):
    VOC's, as their runs had."""
    saved = list(data.get("classes") or ())
    if saved and saved != list(classes):
        raise CheckpointError(
            f"{where}: its checkpoints are of {len(saved)} classes ({', '.join(saved[:4])}"
            f"{', ...' if len(saved) > 4 else ''}) and this run's dataset has {len(classes)} "
            f"({', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}); use the "
            "dataset it was trained on, or another --workdir"
        )


def check_unchanged(
    config: ml_collections.ConfigDict, workdir: Path, fields: tuple[str, ...], what: str
) -> None:
    """Refuse when ``config`` differs from the workdir's saved config.json in ``fields``."""
    path = workdir / CONFIG_FILE
    if not path.is_file():
        return
    try:
        saved = ml_collections.ConfigDict(json.loads(path.read_text()))
    except ValueError:
        return  # an unreadable config.json: the checkpoint's own checks still apply
    changed = []
    for key in fields:
        old, new = _get(saved, key), _get(config, key)
        if old is not _MISSING and _plain(old) != _plain(new):
            changed.append(f"{key}: {_plain(old)!r} in {path.name}, {_plain(new)!r} now")
    if changed:
        raise ConfigError(
            f"{workdir}: cannot {what} its checkpoints with this config, which changes what "
            f"they hold ({'; '.join(changed)}); keep the old values or use another --workdir"
        )


_MISSING = object()


def _get(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps of ``workdir``'s checkpoints (none: ``[]``, also without checkpoints/)."""
    directory = workdir / CHECKPOINTS
    return _steps(directory) if directory.is_dir() else []


def _steps(directory: Path) -> list[int]:
    checkpointer = Checkpointer(directory, asynchronous=False)
    try:
        return checkpointer.steps()
    finally:
        checkpointer.close()


def load_config(
    workdir: Path, given: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (``given``: the one a user passed instead)."""
    if not workdir.is_dir():
        raise DataError(f"--workdir {workdir}: no such directory; train there first")
    if given is not None:
        return given
    path = workdir / CONFIG_FILE
    if not path.exists():
        holder = busy_holder(workdir)
        if holder is not None:
            raise WorkdirBusy(
                f"{workdir} is in use by process {holder.get('pid', '?')} "
                f"({holder.get('purpose', 'a run')} since {holder.get('since', '?')}), which "
                f"has not written {CONFIG_FILE} yet; wait for it to start training"
            )
        raise ConfigError(f"{path}: not found; is {workdir} a training workdir?")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    for key, value in LATER_FIELDS.items():  # a workdir trained before these existed
        block, name = key.split(".")
        if block in config and name not in config[block]:
            config[block][name] = value
    return config


def restore_variables(
    workdir: Path, initial: dict[str, Any], step: int | None = None
) -> tuple[int, dict[str, Any]]:
    """(step, variables) of a checkpoint of ``workdir``, without the optimizer state: the
    newest good one, or ``step``; the params, and BatchNorm's statistics where ``initial``
    has any. With no checkpoint at all (and no step asked for), ``initial`` (step 0): the
    converted model itself."""
    directory = workdir / CHECKPOINTS
    if not directory.is_dir():
        if step is None:
            log.warning("no checkpoint in %s: evaluating the initial weights", workdir)
            return 0, initial
        raise CheckpointError(f"{workdir}: no checkpoints/ directory; train there first")
    checkpointer = Checkpointer(directory, asynchronous=False)
    try:
        if step is None and not checkpointer.steps():
            log.warning("no checkpoint in %s: evaluating the initial weights", workdir)
            return 0, initial
        abstract = {name: abstract_like(tree) for name, tree in initial.items() if tree}
        found, restored = checkpointer.restore(abstract, step)
    finally:
        checkpointer.close()
    return found, {name: restored[name] for name in abstract}
