"""Shared test set-up: CPU JAX, fixed seeds, the shared real data, and one small generated
dataset plus one briefly trained workdir that many tests read (copy before changing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VOC_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


# The files that take longest (measured: pytest --durations=0, 2026-12-07, after ResNet-26
# replaced the tiny ResNet-50 in the whole-image tests), longest first.
# scripts/test.sh runs the files on two workers in this order (--no-loadscope-reorder): the
# long ones start at once on both workers and the many short files fill in at the end,
# instead of a two-minute file starting last.
LONGEST_FIRST = (
    "test_gpu_check.py",
    "test_train.py",
    "test_image_run.py",
    "test_compare.py",
    "test_transfer_demo.py",
    "test_distributed.py",
    "test_feature_cache.py",
    "test_steps.py",
    "test_image_model.py",
    "test_convert_command.py",
    "test_xla_options.py",
    "test_neon.py",
    "test_benchmark.py",
    "test_efficientnet_lite.py",
    "test_class_config.py",
    "test_models.py",
    "test_image_steps.py",
    "test_backbones.py",
    "test_errors.py",
    "test_transfer.py",
    "test_weights.py",
    "test_pipeline.py",
    "test_crops.py",
    "test_voc.py",
    "test_experiment.py",
    "test_evaluate.py",
    "test_image_device_crops.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> Path:
    """One persistent XLA compilation cache for the whole run, in pytest's temporary directory
    (nothing outlives pytest's own retention): the many short runs compile the same small
    programs, in this process and in subprocesses, and a cache hit takes 0.7 s instead of 3.7."""
    import jax

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one cache for all workers of the run
        base = base.parent
    cache = base / "jax_compilation_cache"
    settings = {
        "jax_compilation_cache_dir": str(cache),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)  # for the commands run as subprocesses
    return cache


@pytest.fixture
def quick_compiles():
    """XLA's quick compiles for a test whose point is plumbing (a command end to end, rows of a
    table), not the numerics of an optimised program, which keep their own tests: what
    JAX_DISABLE_MOST_OPTIMIZATIONS=1 does for the tests that start whole commands, in-process."""
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture(autouse=True)
def _drop_large_outputs(tmp_path):
    """After each test, delete the large files (full-size weights, neon files, caches) it left
    in its tmp_path: pytest keeps test directories until the end of the run, and a run must
    stay under 2 GB of temporary files."""
    yield
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size > (8 << 20):
            path.unlink()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (override with VOC_JAX_SHARED_DATA); tests skip, saying why, without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real VOC test data not found at {SHARED_DATA} (set VOC_JAX_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """The synthetic dataset of tests/configs/tiny.py (6 trainval, 4 test images)."""
    from tests.configs import tiny
    from voc_jax.data.synthetic import generate
    from voc_jax.settings import synthetic_config

    root = tmp_path_factory.mktemp("tiny_data") / "VOC2007"
    return generate(root, synthetic_config(tiny.get_config()))


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, tiny_data_root) -> Path:
    """A workdir trained in-process with the tiny config (2 epochs, 24 steps, checkpoints
    every 4 steps) and evaluated. Read-only for the tests: copy it to change it."""
    from tests.helpers import train_args
    from voc_jax import train

    work = tmp_path_factory.mktemp("trained") / "work"
    code = train.main(train_args(work, f"--config.data.root={tiny_data_root}"))
    assert code == 0
    return work
