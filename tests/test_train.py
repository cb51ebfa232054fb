"""python -m voc_jax.train as a user runs it: resume after SIGKILL, damaged checkpoints, NaN
guard, Ctrl-C, evaluation-only runs, and the smoke config end to end."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.configs import tiny
from voc_jax import experiment
from voc_jax.checkpoint import Checkpointer, abstract_like

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "tests" / "configs" / "tiny.py")
SMOKE = str(REPO / "voc_jax" / "configs" / "smoke.py")


def train_cmd(workdir: Path, *overrides: str, config: str = TINY) -> list[str]:
    return [
        sys.executable,
        "-m",
        "voc_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
    ]


def run(cmd, timeout=900):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def checkpoint_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def final_params(workdir: Path, overrides: dict | None = None):
    config = tiny.get_config()
    for key, value in (overrides or {}).items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    setup = experiment.build_model(config)
    state, *_ = experiment.make_train_state(config, setup, 1)
    checkpointer = Checkpointer(workdir / "checkpoints", asynchronous=False)
    step, restored, data = checkpointer.restore(abstract_like(state))
    checkpointer.close()
    return step, jax.tree.map(np.asarray, restored.params), data


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One generated dataset shared by the runs below (as config.data.root)."""
    work = tmp_path_factory.mktemp("gen")
    result = run(train_cmd(work, "--config.num_epochs=0", "--config.eval.images_per_step=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "data" / "VOC2007"


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, data_root):
    args = [f"--config.data.root={data_root}", "--config.num_epochs=4"]
    straight = tmp_path / "straight"
    result = run(train_cmd(straight, *args))
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        train_cmd(killed, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        done = checkpoint_steps(killed)
        if done and done[-1] >= 8:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = checkpoint_steps(killed)[-1]
    assert 8 <= interrupted_at < 48

    resumed = run(train_cmd(killed, *args))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoint step {interrupted_at}" in resumed.stderr
    step_a, params_a, _ = final_params(straight)
    step_b, params_b, _ = final_params(killed)
    assert step_a == step_b == 48
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back(tmp_path, data_root):
    work = tmp_path / "w"
    args = [f"--config.data.root={data_root}", "--config.num_epochs=1"]
    assert run(train_cmd(work, *args)).returncode == 0
    steps = checkpoint_steps(work)
    assert len(steps) >= 2
    latest = work / "checkpoints" / str(steps[-1])
    for f in (latest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")  # a write cut short
    # An unfinished save (what a kill during a write leaves) must be ignored too.
    shutil.copytree(
        work / "checkpoints" / str(steps[0]), work / "checkpoints" / "99.orbax-checkpoint-tmp-1"
    )
    result = run(train_cmd(work, *args, "--config.num_epochs=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cannot be read" in result.stderr and "falling back" in result.stderr
    assert f"resuming from checkpoint step {steps[-2]}" in result.stderr


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    work = tmp_path / "w"
    result = run(
        train_cmd(
            work,
            f"--config.data.root={data_root}",
            "--config.optim.learning_rate=1e12",
            "--config.optim.lr_changes=()",
            "--config.checkpoint.every_steps=2",
        )
    )
    assert result.returncode == 1
    assert "non-finite loss" in result.stderr and "at step" in result.stderr
    assert "The last good checkpoint is step" in result.stderr
    if checkpoint_steps(work):  # whatever was saved holds finite numbers
        _, params, _ = final_params(work)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


@pytest.mark.slow
def test_sigint_saves_a_checkpoint(tmp_path, data_root):
    work = tmp_path / "w"
    process = subprocess.Popen(
        train_cmd(work, f"--config.data.root={data_root}", "--config.num_epochs=50"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not checkpoint_steps(work):
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    assert "interrupted: saving a checkpoint at step" in err
    step, _, data = final_params(work)
    assert step == max(checkpoint_steps(work)) and "epoch" in data


@pytest.mark.slow
def test_zero_epochs_only_evaluates(tmp_path, data_root):
    work = tmp_path / "w"
    assert (
        run(train_cmd(work, f"--config.data.root={data_root}", "--config.num_epochs=1")).returncode
        == 0
    )
    before = checkpoint_steps(work)
    result = run(train_cmd(work, f"--config.data.root={data_root}", "--config.num_epochs=0"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AP on test" in result.stdout and "**mAP**" in result.stdout
    assert checkpoint_steps(work) == before
    table = work / "eval" / str(before[-1]) / "ap_table.json"
    first = json.loads(table.read_text())["results"]
    evaluated = run([sys.executable, "-m", "voc_jax.evaluate", f"--workdir={work}"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(table.read_text())["results"] == first  # deterministic for a checkpoint


def test_bad_config_is_reported_before_work(tmp_path):
    result = run(train_cmd(tmp_path / "w", "--config.patches.per_image=10"))
    assert result.returncode == 2
    assert "must be a multiple of batch_size" in result.stderr
    missing = run(
        train_cmd(
            tmp_path / "w2",
            f"--config.data.root={tmp_path / 'absent'}",
            "--config.data.synthetic.generate=False",
        )
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.fixture(scope="module")
def converted_random_alexnet(tmp_path_factory) -> Path:
    """A seeded randomly initialised torchvision AlexNet through the real converter."""
    import torch
    import torchvision

    from convert import alexnet_to_flax

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(
        torchvision.models.alexnet(weights=None, num_classes=10).state_dict(), root / "a.pth"
    )
    out = root / "converted"
    assert alexnet_to_flax.main(["--pth", str(root / "a.pth"), "--out", str(out)]) == 0
    return out


SMOKE_SMALL = (
    "--config.num_epochs=1",
    "--config.data.synthetic.num_trainval=4",
    "--config.data.synthetic.num_test=4",
)


@pytest.mark.slow
def test_smoke_config_trains_only_the_head_of_converted_weights(tmp_path, converted_random_alexnet):
    """The smoke config as the quickstart runs it (whose CI run checks it beats chance): the
    backbone from converted weights stays frozen, the head learns, evaluation is written."""
    work = tmp_path / "smoke"
    result = run(
        train_cmd(
            work, *SMOKE_SMALL, f"--config.init.weights={converted_random_alexnet}", config=SMOKE
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    step = checkpoint_steps(work)[-1]
    assert (work / "eval" / str(step) / "ap_table.json").is_file()
    from voc_jax import weights

    config = experiment.load_config(work)
    setup = experiment.build_model(config)
    state, *_ = experiment.make_train_state(config, setup, 1)
    checkpointer = Checkpointer(work / "checkpoints", asynchronous=False)
    _, restored, _ = checkpointer.restore(abstract_like(state))
    checkpointer.close()
    params = jax.tree.map(np.asarray, restored.params)
    converted, _ = weights.load_converted(converted_random_alexnet)
    for layer in ("conv1", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(params[layer]["kernel"], converted[layer]["kernel"])
    head = weights.init_head(21, 512, seed=0)
    assert not np.array_equal(params["head"]["fc_b"]["kernel"], head["fc_b"]["kernel"])


def test_missing_weights_are_reported_before_any_work(tmp_path):
    result = run(
        train_cmd(tmp_path / "w", f"--config.init.weights={tmp_path / 'nowhere'}", config=SMOKE)
    )
    assert result.returncode == 2
    assert "scripts/quickstart.sh" in result.stderr and "nowhere" in result.stderr
    assert not (tmp_path / "w" / "data").exists()  # nothing generated
