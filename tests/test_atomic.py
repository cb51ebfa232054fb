"""voc_jax/atomic.py: a directory is replaced only by a complete one; free names never clash."""

from __future__ import annotations

import pytest

from voc_jax.atomic import atomic_directory, free_name


def test_a_finished_directory_replaces_the_old_one_and_leaves_nothing_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # still the old one while writing
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failure_leaves_the_old_directory_and_no_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RuntimeError), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_existing_directory_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="pass --force"), atomic_directory(tmp_path / "out"):
        pass


def test_free_name_counts_past_every_taken_name(tmp_path):
    path = tmp_path / "config.json.old"
    assert free_name(path) == path
    path.write_text("1")
    assert free_name(path, first_number=2) == tmp_path / "config.json.old.2"
    (tmp_path / "config.json.old.2").write_text("2")
    assert free_name(path, first_number=2) == tmp_path / "config.json.old.3"
