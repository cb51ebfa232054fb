"""scripts/benchmark.py runs at tiny sizes, so it cannot rot (no timing asserts: timings come
from the script, never from a test); scripts/gpu_check.sh: tests/test_gpu_check.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # compiles narrow networks
def test_parity_script_and_backbones_section_at_tiny_sizes(monkeypatch, quick_compiles):
    """scripts/parity.py's comparison and the benchmark's backbones and blocks sections,
    in-process at tiny sizes (the GPU check runs the first two at real size; the dry run
    leaves them out; XLA's quick compiles: the rows and the plumbing are the point)."""
    import argparse

    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark
    import parity

    rows = parity.parity("resnet50", sizes=((61, 77),), width=1 / 16)
    assert [r["size"] for r in rows] == ["61x77"]
    assert all(r["relative"] < 1e-5 for r in rows)
    args = argparse.Namespace(
        quick=True, width=1 / 16, patch_size=64, batch=16, dtype="float32", repeats=1,
        grad_chunks=2, grad_chunk_patches=4,
        backbone_steps=("full", "eval"), data=None,
    )  # fmt: skip
    records, _ = benchmark.dataset_records(args)
    rows = benchmark.backbone_rows("vgg16", records, args)
    assert [(r["step"], r["variant"]) for r in rows] == [
        ("full", "ours"), ("full", "ours_unsliced"), ("full", "torch"),  # sliced beside whole
        ("eval", "ours"), ("eval", "torch"),
    ]  # fmt: skip
    assert "in 2 slices" in rows[0]["what"] and "unsliced" in rows[1]["what"]
    assert all(r["patches_per_s"] > 0 and r["flops"] > 0 for r in rows)
    assert all(r["ratio_vs_baseline"] > 0 for r in rows if r["variant"] != "torch")
    # ResNet-50 piece by piece and whole, each against torchvision's modules.
    rows = benchmark.bench_blocks(records, None, args)
    pieces = ["stem", "layer1_1", "layer2_1", "layer3_1", "layer4_1", "whole"]
    assert [r["piece"] for r in rows] == [p for p in pieces for _ in ("ours", "torch")]
    assert all(r["seconds"] > 0 and r["flops"] > 0 for r in rows)
    # EfficientNet-Lite0's depthwise convolutions, formulation by formulation, against torch.
    monkeypatch.setattr(benchmark, "DEPTHWISE_CASES", benchmark.DEPTHWISE_CASES[:2])  # strided
    rows = benchmark.bench_depthwise(records, None, args)
    forms = {r["variant"] for r in rows}
    assert "shifted slices, gradient written out (voc-jax)" in forms and len(forms) == 5
    assert len(rows) == 2 * 5 * 2
    assert all(r["seconds"] > 0 and r["ratio_vs_baseline"] > 0 for r in rows)
    table = benchmark.format_table(rows)  # rows timed in seconds, no patches/s column
    assert table.count("\n") == len(rows) + 1 and " ms" in table


@pytest.mark.slow  # starts a process
def test_bad_counts_are_refused_before_any_work_and_nothing_is_left_behind(
    tmp_path, monkeypatch, capsys
):
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark

    monkeypatch.setattr(benchmark.tempfile, "tempdir", str(tmp_path))
    for flag in ("--repeats", "--batch", "--images"):  # in-process: argparse's exit status 2
        monkeypatch.setattr(sys, "argv", ["benchmark.py", flag, "0", "--quick"])
        with pytest.raises(SystemExit) as exited:
            benchmark.main_cleaning_up()
        assert exited.value.code == 2 and f"{flag} 0: must be at least 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # A real (tiny) run on generated data removes its temporary dataset when it ends.
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--only", "crops",
         "--data", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list(tmp_path.glob("voc-jax-*")), list(tmp_path.iterdir())
