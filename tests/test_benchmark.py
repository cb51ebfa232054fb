"""scripts/benchmark.py runs end to end in --quick mode, so it cannot rot (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/benchmark.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "| section | what |" in result.stdout
    report = json.loads(out.read_text())
    sections = {row["section"] for row in report["results"]}
    assert {"pipeline", "crops"} <= sections
    assert all(row["patches_per_s"] > 0 for row in report["results"])
    assert report["env"]["quick"] is True
