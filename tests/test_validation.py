"""voc_jax/validation.py: a pure checker on a low floor; units that fit in its messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from voc_jax import validation


@pytest.mark.slow
def test_importing_validation_pulls_in_no_pipeline_steps_or_experiment():
    """The config is checked before anything heavy is imported or run (a fresh interpreter)."""
    probe = (
        "import json, sys, voc_jax.validation; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('voc_jax'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    loaded = set(json.loads(out.stdout))
    for heavy in ("experiment", "steps", "feature_cache", "data.pipeline", "train", "evaluate"):
        assert f"voc_jax.{heavy}" not in loaded


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (25.4e9, "23.7 GiB"), (9.83e12, "8.9 TiB")],
)
def test_format_bytes_uses_the_unit_that_fits(n, text):
    assert validation.format_bytes(n) == text
