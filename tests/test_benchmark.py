"""scripts/benchmark.py runs end to end in --quick mode, so it cannot rot (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/benchmark.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "| section | what |" in result.stdout
    report = json.loads(out.read_text())
    sections = {row["section"] for row in report["results"]}
    assert sections == {"pipeline", "crops", "train", "eval", "e2e"}
    assert all(row["patches_per_s"] > 0 for row in report["results"])
    rows = {row["what"]: row for row in report["results"]}
    jax_full = next(r for w, r in rows.items() if w.startswith("JAX step, full"))
    assert jax_full["compilations"] == 1  # static shapes: no recompile after warm-up
    assert jax_full["ratio_vs_baseline"] > 0 and jax_full["voc_epoch_s"] > 0
    assert any("ratio_vs_full" in r for r in report["results"])
    assert next(r["share_of_step"] for r in report["results"] if "share_of_step" in r) > 0
    assert 0 <= report["results"][-1]["device_wait_fraction"] < 1
    assert report["env"]["quick"] is True
