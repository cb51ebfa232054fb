"""voc_jax/metric_writer.py: JSON lines and TensorBoard events; a resumed run's rows replace
the ones a killed run wrote past its last checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from voc_jax.metric_writer import MetricWriter, read_metrics

REPO = Path(__file__).resolve().parent.parent


def test_rows_are_written_and_read_back_with_their_context(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.write(1, {"loss": 2.5}, epoch=0)
    writer.write(2, {"loss": 1.5, "lr": 1e-3}, epoch=0)
    writer.close()
    assert read_metrics(tmp_path) == [
        {"step": 1, "epoch": 0, "loss": 2.5},
        {"step": 2, "epoch": 0, "loss": 1.5, "lr": 1e-3},
    ]
    assert any((tmp_path / "tensorboard").iterdir())


def test_truncate_after_drops_later_rows_and_a_line_cut_short(tmp_path):
    writer = MetricWriter(tmp_path)
    for step in range(1, 6):
        writer.write(step, {"loss": float(step)})
    with open(writer.path, "a") as f:
        f.write('{"step": 6, "lo')  # a kill in the middle of a write
    assert writer.truncate_after(3) == 3
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2, 3]
    assert writer.truncate_after(3) == 0
    writer.close()


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path, enabled=False)
    writer.write(1, {"loss": 1.0})
    assert writer.truncate_after(0) == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # starts a process (about a second)
def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch whenever it is installed (2 s of every run's start); the
    writer keeps it out, writes its events, and torch stays importable afterwards."""
    probe = f"""
import sys
from voc_jax.metric_writer import MetricWriter
writer = MetricWriter({str(tmp_path)!r})
writer.write(1, {{"loss": 2.5}})
writer.close()
loaded = "torch" in sys.modules
import torch
print(loaded, torch.tensor([1.0]).item())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "1.0"]
    (events,) = (tmp_path / "tensorboard").iterdir()
    assert b"loss" in events.read_bytes()
