"""Training metrics to ``metrics.jsonl`` (one JSON object per line) and TensorBoard events;
the only module that imports tensorboardX."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TIMING_FIELDS = ("images_per_s", "patches_per_s")  # the only fields a rerun may change


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch
    whenever it is installed (the converter's dependency), only to accept torch tensors,
    which voc-jax never passes; that import is 2 s of every run's start. torch itself stays
    importable afterwards; a process that already holds it keeps it."""
    import sys

    if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # "import torch" fails at once
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            self._tb = summary_writer_class()(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any], **context: Any) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **context, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), int(step))

    def truncate_after(self, step: int) -> int:
        """Drop the rows past ``step`` (written by a run that then died before its next
        checkpoint), atomically; returns how many were dropped. A resumed run writes them
        again, so the file ends as an uninterrupted run's would."""
        if not self.enabled or not self.path.exists():
            return 0
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        keep = []
        for line in lines:
            try:
                row_step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
            if row_step <= step:
                keep.append(line)
        if len(keep) == len(lines):
            return 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)
        return len(lines) - len(keep)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
