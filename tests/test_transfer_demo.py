"""scripts/transfer_demo.py --quick: pretrain -> convert -> three trainings -> figure and table.

The plumbing only (tiny sizes; nothing is expected to learn): the .pth converts with --verify,
all three runs train and evaluate after every epoch, the outputs are written and consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voc_jax.classes import VOC_CLASSES

REPO = Path(__file__).resolve().parent.parent


def run_quick_demo(work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts/transfer_demo.py"), "--quick", "--workdir", str(work)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
        timeout=900,
    )


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path, capsys):
    work = tmp_path / "demo"
    result = run_quick_demo(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "source_alexnet.pth").is_file()
    meta = json.loads((work / "source_alexnet" / "metadata.json").read_text())
    assert meta["architecture"]["num_classes"] == 10 and meta["source"]["kind"] == "pth"
    assert meta["architecture"]["width"] == 0.125  # --quick's eighth-wide AlexNet
    assert "verify at 64x64" in (work / "logs" / "convert.log").read_text()
    summary = json.loads((work / "transfer_demo.json").read_text())
    assert set(summary["runs"]) == {"scratch", "finetune", "frozen"}
    for name, run in summary["runs"].items():
        assert len(run["map"]) == 2, name  # evaluated after each of the 2 epochs
        assert len(run["loss"]) == 2, name
        assert len(run["ap"][-1]) == len(VOC_CLASSES)
    # The frozen run trained only the head; the fine-tuned one moved the backbone.
    frozen_cfg = json.loads((work / "frozen" / "config.json").read_text())
    assert frozen_cfg["optim"]["trainable"] == ["head/.*"]
    png = (work / "transfer_demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    table = (work / "transfer_demo.md").read_text()
    assert "| **mAP** |" in table and "pretrained, backbone frozen" in table
    # A second invocation reuses every stage (nothing retrained) and redraws the outputs: in
    # this process (it starts no stage, so there is no process to start for it).
    sys.path.insert(0, str(REPO / "scripts"))
    import transfer_demo

    (work / "transfer_demo.png").unlink()
    assert transfer_demo.main(["--quick", "--workdir", str(work)]) == 0
    assert "$ " not in capsys.readouterr().out  # no stage command was run
    assert (work / "transfer_demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
