"""A training workdir's own files beside its checkpoints: ``config.json`` (the resolved config
of the run) and the parameters evaluation and prediction restore from it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ml_collections

from voc_jax import distributed
from voc_jax.checkpoint import Checkpointer, abstract_like
from voc_jax.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """``WORKDIR/config.json`` (process 0); a different earlier one is kept as ``.old``."""
    if not distributed.is_main():
        return
    path = workdir / CONFIG_FILE
    text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text() != text:
        log.warning("%s differs from this run's config; keeping the old one as %s.old", path, path)
        path.replace(path.with_suffix(".json.old"))
    path.write_text(text)


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
        raise ConfigError(f"{path}: not found; is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_params(workdir: Path, initial: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, params) of a checkpoint of ``workdir``, without the optimizer state: the newest
    good one, or ``step``. With no checkpoint at all (and no step asked for), ``initial``
    (step 0): the converted model itself."""
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
        found, restored = checkpointer.restore({"params": abstract_like(initial)}, step)
    finally:
        checkpointer.close()
    return found, restored["params"]
