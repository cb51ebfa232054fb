"""Shared test set-up: CPU JAX, fixed seeds, and the paths of shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VOC_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (override with VOC_JAX_SHARED_DATA); tests skip, saying why, without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real VOC test data not found at {SHARED_DATA} (set VOC_JAX_SHARED_DATA)")
    return SHARED_DATA
