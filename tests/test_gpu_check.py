"""scripts/gpu_check.sh, the prepared GPU check, runs end to end here at tiny sizes (its dry
run), so it cannot rot, and never touches an OUT that is not its own (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # bash; refuses before any work (0.1 s)
def test_gpu_check_refuses_an_out_holding_a_users_files(tmp_path):
    """OUT is gpu_check.sh's own (new, empty, or marked); it removes bulk only there, so a
    directory with anything else in it is refused before any step, its files untouched."""
    out = tmp_path / "mine"
    (out / "weights").mkdir(parents=True)
    (out / "weights" / "metadata.json").write_text("{}")
    (out / "thesis.tex").write_text("mine")
    for args in (["--dry-run", str(out)], ["--real-voc", str(tmp_path), str(out)]):
        result = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), *args],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2 and "did not write" in result.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["metadata.json", "thesis.tex", "weights"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--real-voc",
                             str(tmp_path / "nope"), str(empty)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "not a VOC2007 directory" in result.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    """The prepared GPU check, here at tiny sizes: every step runs and writes its results;
    its benchmark rows hold the device sections, both compile variants and the targets."""
    out = tmp_path / "gpu"
    # XLA's quick compiles: the plumbing is the point here, every program compiles only once
    # and runs at tiny sizes (a third of this test's time otherwise).
    env = {**os.environ, "PYTHON": sys.executable, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    result = subprocess.run(
        ["bash", str(REPO / "scripts/gpu_check.sh"), "--dry-run", str(out)],
        capture_output=True, text=True, timeout=1200, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "bench_f32.log").read_text()
    assert "XLA_FLAGS=" in log
    assert "leaked shared_memory" not in log  # the pipeline's workers' batches all unlinked
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [
        "env", "bench_f32", "bench_bf16", "convert", "smoke_bf16", "scan_check"
    ]  # fmt: skip
    assert all(s["exit"] == 0 for s in steps)
    report = json.loads((out / "bench_f32.json").read_text())
    rows = report["results"]
    sections = {"pipeline", "crops", "train", "eval", "e2e", "cache", "image"}
    assert {r["section"] for r in rows} == sections | {"peak"}
    assert all(r["patches_per_s"] > 0 for r in rows if r["section"] not in ("peak", "image"))
    image = [r for r in rows if r["section"] == "image"]  # the whole-image steps, both sides
    assert {(r["step"], r["variant"]) for r in image} == {
        (s, v) for s in ("frozen", "finetune", "eval") for v in ("ours", "torch")
    } | {("crops", "ours"), ("crops", "host")} and all(r["images_per_s"] > 0 for r in image)
    # Train and eval rows: XLA's FLOP count, achieved GFLOP/s and the share of the GEMM peak
    # measured in the same run (PyTorch's rows counted with the same network's FLOPs).
    timed = [r for r in rows if r["section"] in ("train", "eval") and "variant" in r]
    assert timed and all(r["flops"] > 0 and r["fraction_of_peak"] > 0 for r in timed)
    assert 0 <= next(r for r in rows if r["section"] == "e2e")["device_wait_fraction"] < 1
    assert "voc_jax_compiler_options" in report["env"]["xla"] and report["env"]["quick"]
    variants = {r["variant"] for r in rows if r["section"] == "train" and "variant" in r}
    assert variants == {"ours", "xla", "host", "torch"}  # the CPU: our options, XLA's, host crops
    jax_full = next(r for r in rows if r.get("step") == "full" and r.get("variant") == "ours")
    assert jax_full["compilations"] == 1 and jax_full["ratio_vs_baseline"] > 0
    assert any("cache_speedup" in r for r in rows) and report["targets"]
    assert json.loads((out / "bench_bf16.json").read_text())["env"]["dtype"] == "bfloat16"
    assert report["env"]["width"] == 1 / 16  # --quick's narrow networks, both sides
    assert json.loads((out / "scan.json").read_text())["equal"] is True
    evals = list((out / "smoke" / "eval").glob("*/ap_table.json"))
    assert len(evals) == 1
    smoke = json.loads((out / "smoke" / "config.json").read_text())["model"]
    assert (smoke["dtype"], smoke["width"]) == ("bfloat16", 1 / 16)  # the narrow converted one
