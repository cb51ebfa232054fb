"""Training metrics to ``metrics.jsonl`` (one JSON object per line) and TensorBoard events;
the only module that imports tensorboardX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricWriter:
    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any], **context: Any) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **context, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), int(step))

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
