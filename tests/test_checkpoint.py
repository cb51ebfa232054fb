"""voc_jax/checkpoint.py, the one module that talks to orbax: save and restore against an
abstract target, the digests that catch a damaged step, damaged steps moved aside. (A killed
training resuming bitwise is tested end to end in tests/test_train.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from voc_jax.checkpoint import DAMAGED_DIR, Checkpointer, abstract_like, digest
from voc_jax.errors import CheckpointError

PARAMS = {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3)}}
TRAIN = {"step": np.int32(4), "momentum": np.full((2, 3), 0.5, np.float32)}


def saved(directory, steps=(4,)) -> Checkpointer:
    checkpointer = Checkpointer(directory, asynchronous=False)
    for step in steps:
        checkpointer.save(step, PARAMS, TRAIN, {"epoch": 1, "batch": step})
    checkpointer.wait()
    return checkpointer


def test_a_step_restores_exactly_what_was_saved(tmp_path):
    saved(tmp_path / "c", (4, 8)).close()
    checkpointer = Checkpointer(tmp_path / "c", asynchronous=False)
    step, out = checkpointer.restore({"params": abstract_like(PARAMS)})
    checkpointer.close()
    assert step == 8 and out["data"]["batch"] == 8
    np.testing.assert_array_equal(out["params"]["dense"]["kernel"], PARAMS["dense"]["kernel"])
    assert digest(out["params"]) == digest(PARAMS)


def _corrupt_params(directory, step):
    """Flip one byte of a stored array chunk (orbax stores no checksum of its own)."""
    chunks = sorted(
        p for p in (directory / str(step) / "params").rglob("*") if p.is_file() and p.stat().st_size
    )
    target = max(chunks, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def test_a_damaged_step_is_skipped_and_moved_aside(tmp_path, caplog):
    saved(tmp_path / "c", (4, 8)).close()
    _corrupt_params(tmp_path / "c", 8)
    checkpointer = Checkpointer(tmp_path / "c", asynchronous=False)
    step, _ = checkpointer.restore({"params": abstract_like(PARAMS)})
    assert step == 4 and checkpointer.damaged == [8]
    assert "checkpoint" in caplog.text and "skipped" in caplog.text
    moved = checkpointer.move_damaged_aside()
    assert checkpointer.steps() == [4] and moved[0].parent == tmp_path / DAMAGED_DIR
    checkpointer.close()


def test_an_explicit_damaged_or_missing_step_is_an_error(tmp_path):
    saved(tmp_path / "c", (4,)).close()
    checkpointer = Checkpointer(tmp_path / "c", asynchronous=False)
    with pytest.raises(CheckpointError, match="no checkpoint at step 5; available: \\[4\\]"):
        checkpointer.restore({"params": abstract_like(PARAMS)}, step=5)
    _corrupt_params(tmp_path / "c", 4)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        checkpointer.restore({"params": abstract_like(PARAMS)}, step=4)
    checkpointer.close()
