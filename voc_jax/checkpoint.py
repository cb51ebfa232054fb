"""Checkpoints: the only module that talks to orbax.

A checkpoint holds the train state (params, optimizer state, step, rng) and, as JSON, where
the data pipeline stands (epoch, batch, grain iterator state) so a resumed run sees exactly
the batches it would have seen. Orbax writes each step to a temporary directory and renames
it when complete, so a run killed mid-write leaves the previous checkpoints intact; restore
always goes against an abstract target (shapes, dtypes, shardings) and falls back to the
previous good step, with a warning, when the latest cannot be read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=asynchronous,
                cleanup_tmp_directories=True,
            ),
            item_names=("state", "data"),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data: dict[str, Any]) -> None:
        """Asynchronous; ``wait()`` before exiting. Saving a step twice is a no-op."""
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """(step, state, data) from ``step`` or the newest readable checkpoint."""
        candidates = [step] if step is not None else self.steps()[::-1]
        if not candidates:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        errors = []
        for s in candidates:
            try:
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                if step is None:
                    log.warning(
                        "checkpoint %s/%d cannot be read (%s); falling back to the previous one",
                        self.directory,
                        s,
                        errors[-1],
                    )
                continue
            return s, restored["state"], dict(restored["data"])
        raise RuntimeError(f"{self.directory}: no readable checkpoint:\n  " + "\n  ".join(errors))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a tree, for restoring against."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
