"""voc_jax/metric_writer.py: JSON lines and TensorBoard events; a resumed run's rows replace
the ones a killed run wrote past its last checkpoint."""

from __future__ import annotations

from voc_jax.metric_writer import MetricWriter, read_metrics


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
