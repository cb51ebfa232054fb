"""Checkpoints: the only module that talks to orbax.

A checkpoint holds the parameters, the rest of the train state (optimizer state, step, rng)
and, as JSON, where the data pipeline stands (epoch, batch, the global batch size, the epoch's
running sums) so a resumed run sees exactly the batches it would have seen. Parameters are a
separate item so evaluation and prediction restore them alone
(``voc_jax.workdir.restore_variables``), without building an optimizer.

Integrity: orbax writes each step to a temporary directory and renames it when complete, so a
kill mid-write leaves the previous checkpoints intact. Orbax stores no checksum, so a SHA-256
digest of every saved array (computed on the host from the state being saved) and of the data
position goes into the step's JSON and is checked at restore: a step whose data does not match, or cannot be read,
is skipped with a one-line warning, and training moves it aside (``checkpoints.damaged/``) so
that the step is written afresh when the run reaches it again. Restores always go against an
abstract target (shapes, dtypes, shardings).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from voc_jax.errors import CheckpointError, first_line

log = logging.getLogger(__name__)
ITEMS = ("params", "batch_stats", "train", "data")  # batch_stats: networks with BatchNorm
DAMAGED_DIR = "checkpoints.damaged"
UNFINISHED_ROUNDS, UNFINISHED_PAUSE_S = 20, 0.1  # up to 2 s for a failed save's last writes


def digest(tree: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (host copies)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = np.ascontiguousarray(_host(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def json_digest(value: Any) -> str:
    """SHA-256 of a JSON-able value (the data position: epoch, batch, sums...)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _host(leaf: Any) -> np.ndarray:
    """A leaf on the host; a replicated global array from its first local copy."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return np.asarray(leaf.addressable_data(0))
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(leaf))
    return np.asarray(leaf)


class DamagedCheckpoint(Exception):
    """A step that cannot be read or whose data does not match its digest."""


class Checkpointer:
    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        self.damaged: list[int] = []  # steps found unreadable or mismatched by restore
        self._closed = False
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=asynchronous,
                cleanup_tmp_directories=True,
            ),
            item_names=ITEMS,
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(
        self, step: int, params: Any, train: Any, data: dict[str, Any], batch_stats: Any = None
    ) -> None:
        """Asynchronous; ``wait()`` before exiting. Saving a step twice is a no-op.
        ``batch_stats`` (BatchNorm's statistics) is its own item, saved when there are any."""
        if step in self.manager.all_steps():
            return
        trees = {"params": params} | ({"batch_stats": batch_stats} if batch_stats else {})
        trees["train"] = train
        digests = {name: digest(tree) for name, tree in trees.items()}
        digests["data"] = json_digest(data)
        data = dict(data) | {"digest": digests}
        args = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        self.manager.save(
            step, args=ocp.args.Composite(data=ocp.args.JsonSave(data), **args), force=True
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def _restore_step(self, step: int, abstract: dict[str, Any]) -> dict[str, Any]:
        args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(data=ocp.args.JsonRestore(), **args)
            )
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            raise DamagedCheckpoint(f"cannot be read ({first_line(e)})") from e
        data = dict(restored["data"] or {})
        expected = data.get("digest") or {}
        for name in abstract:
            if name not in expected:
                raise DamagedCheckpoint(f"no digest for its {name}; not written by this voc-jax")
            if digest(restored[name]) != expected[name]:
                raise DamagedCheckpoint(f"its {name} do not match the digest saved with them")
        position = {k: v for k, v in data.items() if k != "digest"}
        # Checkpoints written before the data position had a digest carry none: accepted.
        if "data" in expected and json_digest(position) != expected["data"]:
            raise DamagedCheckpoint("its data position does not match the digest saved with it")
        return {name: restored[name] for name in abstract} | {"data": data}

    def restore(
        self, abstract: dict[str, Any], step: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(step, {item: tree, 'data': dict}) for the items of ``abstract`` (a subset of
        'params', 'batch_stats' and 'train', abstract trees), from ``step`` or the newest good checkpoint.
        A step that cannot be read or fails its digest is skipped with a warning (and
        recorded in ``self.damaged``); an explicit ``step`` that fails is an error."""
        if step is not None and step not in self.steps():
            raise CheckpointError(
                f"{self.directory}: no checkpoint at step {step}; "
                f"available: {self.steps() or 'none'}"
            )
        candidates = [step] if step is not None else self.steps()[::-1]
        if not candidates:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        errors = []
        for s in candidates:
            try:
                return s, self._restore_step(s, abstract)
            except DamagedCheckpoint as e:
                errors.append(f"step {s}: {e}")
                self.damaged.append(s)
                if step is None:
                    log.warning("checkpoint %s/%d skipped: %s", self.directory, s, e)
        raise CheckpointError(f"{self.directory}: no readable checkpoint ({'; '.join(errors)})")

    def move_damaged_aside(self) -> list[Path]:
        """Move the steps restore found damaged to ``checkpoints.damaged/`` (never deleted)
        so that training writes those steps afresh when it reaches them again."""
        moved = []
        for s in self.damaged:
            source = self.directory / str(s)
            if not source.exists():
                continue
            target = self.directory.parent / DAMAGED_DIR / f"{s}-{time.strftime('%Y%m%d-%H%M%S')}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
            log.warning("moved damaged checkpoint step %d to %s; it will be rewritten", s, target)
            moved.append(target)
        if moved:
            self.manager.reload()
        self.damaged = []
        return moved

    def discard_unfinished(self) -> list[Path]:
        """Remove the temporary directories of saves that failed (a full disk): they are
        incomplete by construction, never a checkpoint, and they hold the space. Background
        writes are waited for first (their failure is the one being reported)."""
        with contextlib.suppress(Exception):  # the disk-full error the caller reports
            self.manager.wait_until_finished()
        self.close(quiet=True)  # joins orbax's background threads before their files go
        removed: list[Path] = []
        # A failed save's last background thread can still be finishing (creating or writing
        # into its temporary directory) after close: remove until none is left for a moment.
        quiet = 0
        for _ in range(UNFINISHED_ROUNDS):
            leftovers = list(self.directory.glob("*.orbax-checkpoint-tmp*"))
            quiet = 0 if leftovers else quiet + 1
            if quiet == 2:  # nothing there twice in a row, 0.1 s apart
                break
            for path in leftovers:
                shutil.rmtree(path, ignore_errors=True)
                if path not in removed:
                    removed.append(path)
            time.sleep(UNFINISHED_PAUSE_S)
        return removed

    def close(self, *, quiet: bool = False) -> None:
        """Wait for the last save and release orbax's threads; once (later calls do nothing).
        ``quiet``: after a failure, whose error is reported elsewhere."""
        if self._closed:
            return
        self._closed = True
        try:
            self.manager.wait_until_finished()
            self.manager.close()
        except Exception:
            if not quiet:
                raise


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a tree, for restoring against."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
