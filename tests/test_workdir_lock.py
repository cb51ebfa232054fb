"""voc_jax/workdir_lock.py: one run at a time in a workdir, a dead holder's lock taken over.
(The commands' use of it, two trainings at once and a killed run, is tested end to end in
tests/test_train.py and tests/test_evaluate.py.)"""

from __future__ import annotations

import json
import logging
import os

import pytest

from voc_jax.errors import WorkdirBusy
from voc_jax.workdir_lock import LOCK_FILE, WorkdirLock


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with WorkdirLock(tmp_path / "w", "train"):
        record = json.loads((tmp_path / "w" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["purpose"] == "train"
        with pytest.raises(WorkdirBusy, match=rf"in use by process {os.getpid()} .*\(train since"):
            WorkdirLock(tmp_path / "w", "evaluate").acquire()
    assert not (tmp_path / "w").exists()  # created by the lock, left empty: removed


def test_release_keeps_a_workdir_with_outputs(tmp_path):
    with WorkdirLock(tmp_path / "w", "train"):
        (tmp_path / "w" / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["config.json"]


def test_a_stale_lock_file_is_taken_over_with_a_warning(tmp_path, caplog):
    work = tmp_path / "w"
    work.mkdir()
    (work / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    with caplog.at_level(logging.WARNING), WorkdirLock(work, "train"):
        pass
    assert "taking over the stale lock" in caplog.text and "999999" in caplog.text


def test_a_disabled_lock_touches_nothing(tmp_path):
    with WorkdirLock(tmp_path / "w", "train", enabled=False):
        assert not (tmp_path / "w").exists()
