"""Multi-process training (jax.distributed) on CPU: two processes x two devices equal one
process x four devices; every test image is scored once; a 2-process checkpoint resumes in
one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, checkpoint_data, checkpoint_steps, final_params, train_cmd
from voc_jax import distributed
from voc_jax.data.synthetic import SyntheticConfig, generate

COMMON = (
    "--config.num_epochs=1",
    "--config.images_per_step=4",
    "--config.eval.images_per_step=4",
    "--config.checkpoint.every_steps=1000",
    "--config.data.check_images=none",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def env_with_devices(n: int) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "VOC2007"
    # 9 trainval images: 3 global batches of 4, the last padded (process 1's half of it is all
    # padding); 5 test images: a padded batch.
    return generate(root, SyntheticConfig(num_trainval=9, num_test=5, min_side=100, max_side=150))


def run_two_processes(
    workdir: Path, data_root: Path, *extra: str
) -> list[subprocess.CompletedProcess]:
    port = free_port()
    procs = []
    for pid in range(2):
        cmd = train_cmd(
            workdir,
            *COMMON,
            f"--config.data.root={data_root}",
            "--config.distributed=True",
            f"--config.cluster.coordinator=localhost:{port}",
            "--config.cluster.num_processes=2",
            f"--config.cluster.process_id={pid}",
            "--config.cluster.cpu_collectives=gloo",
            *extra,
        )
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env_with_devices(2),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def run_one_process(workdir: Path, data_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(workdir, *COMMON, f"--config.data.root={data_root}", *extra),
        cwd=REPO,
        env=env_with_devices(4),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_two_processes_equal_one_process_with_four_devices(tmp_path, data_root):
    """Epoch 1 in two processes equals it in one; the two processes' checkpoint, resumed in
    one process for epoch 2, equals the single process's own two epochs (one reference run
    of two epochs serves both comparisons)."""
    two, one = tmp_path / "two", tmp_path / "one"
    results = run_two_processes(two, data_root)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    single = run_one_process(
        one, data_root, "--config.num_epochs=2", "--config.eval.every_epochs=1"
    )
    assert single.returncode == 0, single.stderr[-4000:]

    # 3 calls of 4 images (every image trains), each 2 updates (8 patches, 4 per micro-batch)
    assert checkpoint_steps(two) == [6] and checkpoint_steps(one) == [6, 12]
    assert_same_run(two, one, 6)
    # Evaluation: every test image scored exactly once (5 images over a global batch of 4),
    # the same scores as the single process, files written once (by process 0).
    scores_two = np.load(two / "eval" / "6" / "scores.npz")
    assert list(scores_two["image_ids"]) == [f"{i:06d}" for i in range(9, 14)]
    # Only process 0 logs the table.
    assert ("AP on test" in results[0].stdout) and ("AP on test" not in results[1].stdout)
    assert not (two / ".lock").exists()  # process 0 held the job's one lock and released it

    # A checkpoint written by 2 processes resumes in 1 process (4 devices): one more epoch,
    # which ends where the single process's second epoch ended.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    more = run_one_process(resumed, data_root, "--config.num_epochs=2")
    assert more.returncode == 0, more.stderr[-4000:]
    assert "resuming from checkpoint step 6" in more.stderr
    assert checkpoint_steps(resumed) == [6, 12]
    assert_same_run(resumed, one, 12)
    config = json.loads((resumed / "config.json").read_text())
    assert config["images_per_step"] == 4


def assert_same_run(workdir: Path, reference: Path, step: int) -> None:
    """The checkpoint of ``step`` (position, counters: all but the float sums and digests),
    the parameters and the test scores at it equal the reference run's (to float rounding:
    the processes reduce in another order)."""
    data, want = checkpoint_data(workdir, step), checkpoint_data(reference, step)
    assert {k: v for k, v in data.items() if k not in ("digest", "sums")} == {
        k: v for k, v in want.items() if k not in ("digest", "sums")
    }
    _, params = final_params(workdir, step)
    _, params_want = final_params(reference, step)
    flat = dict(_flatten(params))
    for key, value in _flatten(params_want):
        np.testing.assert_allclose(flat[key], value, rtol=2e-5, atol=2e-6, err_msg=key)
    scores = np.load(workdir / "eval" / str(step) / "scores.npz")
    scores_want = np.load(reference / "eval" / str(step) / "scores.npz")
    assert list(scores["image_ids"]) == list(scores_want["image_ids"])
    np.testing.assert_allclose(scores["power"], scores_want["power"], rtol=1e-4, atol=1e-7)


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", np.asarray(v)


def test_cluster_detection():
    assert not distributed.cluster_detected({})
    assert not distributed.cluster_detected({"SLURM_NTASKS": "1"})
    assert distributed.cluster_detected({"SLURM_NTASKS": "8"})
    assert distributed.cluster_detected({"OMPI_COMM_WORLD_SIZE": "2"})
    assert distributed.cluster_detected({"JAX_COORDINATOR_ADDRESS": "host:1234"})


def test_single_process_helpers_are_the_plain_path():
    import jax

    assert distributed.is_main()
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch = {"x": np.arange(6.0).reshape(2, 3)}
    out = distributed.global_batch(batch, sharding)
    np.testing.assert_array_equal(distributed.to_host(out)["x"], batch["x"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
