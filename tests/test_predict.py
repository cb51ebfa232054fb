"""voc_jax/predict.py: score maps against a loop, and the CLI on a briefly trained workdir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voc_jax.predict import score_map

REPO = Path(__file__).resolve().parent.parent


def test_score_map_matches_a_loop():
    rng = np.random.default_rng(0)
    h, w = 30, 40
    boxes = []
    for _ in range(25):
        x0, y0 = rng.integers(0, w - 5), rng.integers(0, h - 5)
        boxes.append((x0, y0, x0 + rng.integers(3, w - x0 + 1), y0 + rng.integers(3, h - y0 + 1)))
    boxes = np.array(boxes, float)
    values = rng.random(25)
    got = score_map(boxes, values, h, w)
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (x0, y0, x1, y1), v in zip(boxes.astype(int), values, strict=True):
        total[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    want = np.where(count > 0, total / np.maximum(count, 1), 0)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert score_map(boxes, values, h, w, stride=4).shape == (8, 10)


@pytest.mark.slow
def test_predict_cli_writes_pngs(tmp_path):
    work = tmp_path / "w"
    trained = subprocess.run(
        [sys.executable, "-m", "voc_jax.train", f"--config={REPO / 'tests/configs/tiny.py'}",
         f"--workdir={work}", "--config.num_epochs=1"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    images = sorted((work / "data/VOC2007/JPEGImages").glob("*.jpg"))[:2]
    result = subprocess.run(
        [sys.executable, "-m", "voc_jax.predict", f"--workdir={work}", "--top=2",
         *map(str, images)],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for image in images:
        assert f"{image}:" in result.stdout
        png = work / "predict" / f"{image.stem}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
