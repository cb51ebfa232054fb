"""python -m voc_jax.train as a user runs it: resume after SIGKILL (parameters and metrics),
damaged and corrupted checkpoints, the workdir lock, a changed global batch, NaN guard,
Ctrl-C, a full disk, evaluation-only runs, and the smoke config's plumbing."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    REPO,
    SMOKE,
    assert_trees_equal,
    call,
    checkpoint_data,
    checkpoint_steps,
    final_params,
    run,
    train_args,
    train_cmd,
)
from voc_jax import checkpoint, evaluate, train
from voc_jax.metric_writer import TIMING_FIELDS, read_metrics
from voc_jax.workdir_lock import LOCK_FILE, WorkdirLock


def copy_of(trained: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    return work


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def test_trained_workdir_is_complete(trained_tiny):
    steps = checkpoint_steps(trained_tiny)
    assert steps[-1] == 24 and len(steps) == 6  # every 4 steps, 2 epochs of 12
    data = checkpoint_data(trained_tiny, 24)
    assert data["epoch"] == 2 and data["batch"] == 0 and data["images_per_step"] == 1
    assert set(data["digest"]) == {"params", "train", "data"}
    assert data["seed"] == 0 and data["batch_size"] == 4  # a mid-epoch resume checks both
    rows = read_metrics(trained_tiny)
    epochs = [r for r in rows if "epoch_loss" in r]
    assert [r["step"] for r in epochs] == [12, 24]
    assert [r["step"] for r in rows if "loss" in r] == list(range(2, 25, 2))
    assert (trained_tiny / "eval" / "24" / "ap_table.json").is_file()
    assert not (trained_tiny / LOCK_FILE).exists()  # released and removed


# The tiny run's logged losses (one row per 2 updates) and epoch means, recorded before the
# Experiment refactor: the same config must keep giving the same training, value for value.
PINNED_LOSSES = [
    (2, 3.041219711303711), (4, 3.0259904861450195), (6, 3.0538129806518555),
    (8, 3.0443406105041504), (10, 3.0478286743164062), (12, 3.021212100982666),
    (14, 2.995025396347046), (16, 2.932696580886841), (18, 3.0433249473571777),
    (20, 2.9491963386535645), (22, 2.9422683715820312), (24, 2.912051200866699),
]  # fmt: skip
PINNED_EPOCH_LOSSES = [(12, 3.0390674273173013), (24, 2.9624271392822266)]


def test_tiny_run_keeps_its_pinned_loss_sequence(trained_tiny):
    """Refactors must not change what a config computes. The values were recorded on this
    2-core x86-64 CPU; another CPU's vector units may round differently (hence 1e-5)."""
    rows = read_metrics(trained_tiny)
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    epochs = [(r["step"], r["epoch_loss"]) for r in rows if "epoch_loss" in r]
    assert [s for s, _ in losses] == [s for s, _ in PINNED_LOSSES]
    np.testing.assert_allclose([v for _, v in losses], [v for _, v in PINNED_LOSSES], rtol=1e-5)
    assert [s for s, _ in epochs] == [s for s, _ in PINNED_EPOCH_LOSSES]
    np.testing.assert_allclose(
        [v for _, v in epochs], [v for _, v in PINNED_EPOCH_LOSSES], rtol=1e-5
    )


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_metrics_included(
    tmp_path, tiny_data_root, trained_tiny
):
    """Killed with SIGKILL after a checkpoint and after rows past it were logged: the resumed
    run ends with the uninterrupted run's parameters bitwise and its metrics.jsonl (no
    duplicated rows, the same epoch means), timing fields aside."""
    killed = tmp_path / "killed"
    args = [f"--config.data.root={tiny_data_root}"]
    process = subprocess.Popen(
        train_cmd(killed, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        done = checkpoint_steps(killed)
        rows = read_metrics(killed) if (killed / "metrics.jsonl").exists() else []
        if done and 14 <= done[-1] < 24 and rows and rows[-1]["step"] > done[-1]:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = checkpoint_steps(killed)[-1]
    assert read_metrics(killed)[-1]["step"] > interrupted_at  # rows a resume must drop

    resumed = run(train_cmd(killed, *args))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoint step {interrupted_at}" in resumed.stderr
    assert "taking over the stale lock" in resumed.stderr  # the killed run's lock file
    step_a, params_a = final_params(trained_tiny)
    step_b, params_b = final_params(killed)
    assert step_a == step_b == 24
    assert_trees_equal(params_a, params_b)
    assert without_timing(read_metrics(killed)) == without_timing(read_metrics(trained_tiny))


def damage(work: Path, step: int, how: str) -> None:
    if how == "position":  # the data position edited: a resume would skip images
        path = work / "checkpoints" / str(step) / "data" / "metadata"
        data = json.loads(path.read_text())
        data["batch"] += 1
        path.write_text(json.dumps(data))
    elif how == "truncated":  # a write cut short
        for f in (work / "checkpoints" / str(step) / "params").rglob("*"):
            if f.is_file():
                f.write_bytes(b"")
    else:  # bits flipped in the array data: orbax itself reads it back without complaint
        biggest = max(
            (f for f in (work / "checkpoints" / str(step) / "params").rglob("*") if f.is_file()),
            key=lambda f: f.stat().st_size,
        )
        data = bytearray(biggest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        biggest.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped", "position"])
def test_damaged_latest_checkpoint_is_skipped_and_rewritten(tmp_path, trained_tiny, how, caplog):
    work = copy_of(trained_tiny, tmp_path)
    damage(work, 24, how)
    # An unfinished save (what a kill during a write leaves) must be ignored too.
    shutil.copytree(work / "checkpoints" / "4", work / "checkpoints" / "99.orbax-checkpoint-tmp-1")
    if how == "flipped":  # orbax alone restores the flipped data silently: only our digest sees it
        from voc_jax import workdir
        from voc_jax.experiment import Experiment

        exp = Experiment.build(workdir.load_config(work))
        manager = checkpoint.Checkpointer(work / "checkpoints", asynchronous=False).manager
        manager.restore(
            24,
            args=checkpoint.ocp.args.Composite(
                params=checkpoint.ocp.args.StandardRestore(
                    checkpoint.abstract_like(exp.model.params)
                )
            ),
        )
        manager.close()
    with caplog.at_level(logging.INFO):
        code = train.main(train_args(work))
    assert code == 0
    text = caplog.text
    reason = {
        "truncated": "cannot be read",
        "flipped": "do not match the digest",
        "position": "data position does not match the digest",
    }[how]
    assert "checkpoints/24 skipped: " in text and reason in text
    assert "resuming from checkpoint step 20" in text
    assert "moved damaged checkpoint step 24" in text
    moved = list((work / "checkpoints.damaged").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("24-")
    # Step 24 was trained again and written afresh: good, and equal to the original.
    step, params = final_params(work)
    assert step == 24
    assert_trees_equal(params, final_params(trained_tiny)[1])


def test_every_image_trains_every_epoch_and_a_batch_change_resumes_at_a_real_batch():
    """6 images at 4 a call: 2 calls (the last padded), not 1 with 2 images dropped; a resume
    from image 5 at the new size lands on batch 1, which exists (it used to be past the end)."""
    from types import SimpleNamespace

    exp = SimpleNamespace(
        train=SimpleNamespace(images_per_step=4, batch_size=4, seed=0),
        patches=SimpleNamespace(patches_per_image=8),
        checkpoint=SimpleNamespace(allow_batch_change=True),
    )
    calls, updates = train.calls_per_epoch(exp, 6)
    assert (calls, updates) == (2, 2)
    data = {"epoch": 0, "batch": 5, "images_per_step": 1, "seed": 0, "batch_size": 4}
    position = train.resume_position(exp, data)
    assert position == train.Position(0, 1) and position.batch < calls


def test_changed_configs_are_all_kept(tmp_path, trained_tiny):
    """Every different config a workdir ran with stays beside the current one."""
    work = copy_of(trained_tiny, tmp_path)
    original = (work / "config.json").read_text()
    for every in (3, 6):
        assert train.main(train_args(work, f"--config.log_every_steps={every}")) == 0
    assert (work / "config.json.old").read_text() == original
    assert json.loads((work / "config.json.old.2").read_text())["log_every_steps"] == 3
    assert json.loads((work / "config.json").read_text())["log_every_steps"] == 6


def test_a_fresh_run_starts_from_the_head_of_head_from(tmp_path, trained_tiny, tiny_data_root):
    """init.head_from (LP-FT): the fresh run's head is the trained run's, the rest as
    converted (here: the seed's initialisation); what it trains is an ordinary run."""
    import jax

    from voc_jax import workdir as workdir_lib
    from voc_jax.experiment import Experiment

    args = [f"--config.data.root={tiny_data_root}", f"--config.init.head_from={trained_tiny}"]
    work = tmp_path / "lpft"
    config = workdir_lib.load_config(trained_tiny)
    config.init.head_from = str(trained_tiny)
    exp = Experiment.build(config)
    fresh = train.Progress(exp.initial_state(exp.optimizer(12)))
    empty = checkpoint.Checkpointer(tmp_path / "none", asynchronous=False)
    state = train.restore(exp, empty, fresh).state
    empty.close()
    _, trained = final_params(trained_tiny)
    assert_trees_equal(jax.tree.map(np.asarray, state.params["head"]), trained["head"])
    assert_trees_equal(
        jax.tree.map(np.asarray, {k: v for k, v in state.params.items() if k != "head"}),
        jax.tree.map(np.asarray, {k: v for k, v in fresh.state.params.items() if k != "head"}),
    )
    assert train.main(train_args(work, *args, "--config.num_epochs=1")) == 0
    first = next(r["loss"] for r in read_metrics(work) if "loss" in r)
    assert first < PINNED_LOSSES[0][1] - 0.1  # a trained head, not a random one
    assert json.loads((work / "config.json").read_text())["init"]["head_from"] == str(trained_tiny)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data_root, caplog):
    work = tmp_path / "w"
    with caplog.at_level(logging.INFO):
        code = train.main(
            train_args(
                work,
                f"--config.data.root={tiny_data_root}",
                "--config.optim.learning_rate=1e12",
                "--config.optim.lr_changes=()",
                "--config.checkpoint.every_steps=2",
            )
        )
    assert code == 1
    assert "non-finite loss" in caplog.text and "at step" in caplog.text
    assert "The last good checkpoint is step" in caplog.text
    if checkpoint_steps(work):  # whatever was saved holds finite numbers
        _, params = final_params(work)
        import jax

        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


@pytest.mark.slow
def test_second_run_is_refused_and_sigint_saves(tmp_path, tiny_data_root):
    """Two trainings on one workdir: the second fails at once naming the first, touching
    nothing; Ctrl-C then stops the first with a checkpoint (exit 130)."""
    work = tmp_path / "w"
    args = [f"--config.data.root={tiny_data_root}", "--config.num_epochs=50"]
    first = subprocess.Popen(
        train_cmd(work, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and not checkpoint_steps(work):
        time.sleep(0.05)
    config_before = (work / "config.json").read_text()
    second = run(train_cmd(work, *args, "--config.optim.learning_rate=0.5"), timeout=120)
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in second.stderr
    assert f"{work} is in use by process {first.pid} on " in errors[0]
    assert (work / "config.json").read_text() == config_before
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err[-3000:]
    assert "interrupted: saving a checkpoint at step" in err
    step, _ = final_params(work)
    assert step == max(checkpoint_steps(work)) and "epoch" in checkpoint_data(work, step)


def test_lock_held_refuses_train_and_evaluate(tmp_path, trained_tiny, capsys):
    work = copy_of(trained_tiny, tmp_path)
    before = sorted(p.name for p in work.iterdir())
    with WorkdirLock(work, "test"):
        for main, argv in (
            (train.main, train_args(work)),
            (evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"]),
        ):
            code, _, err = call(main, argv, capsys)
            assert code == 2 and err.count("error:") == 1
            assert "is in use by process" in err and "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == before


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, trained_tiny, caplog):
    work = copy_of(trained_tiny, tmp_path)
    (work / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "host": "gone"}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert train.main(train_args(work, "--config.num_epochs=0")) == 0
    assert "taking over the stale lock" in caplog.text and "999999999" in caplog.text
    assert not (work / LOCK_FILE).exists()


def test_stale_lock_without_a_record_is_taken_over_with_a_warning(tmp_path, trained_tiny, caplog):
    """A lock file cut short by a kill (no holder recorded) is still reported when taken over."""
    work = copy_of(trained_tiny, tmp_path)
    (work / LOCK_FILE).write_text("")
    with caplog.at_level(logging.WARNING):
        assert train.main(train_args(work, "--config.num_epochs=0")) == 0
    assert "taking over the stale lock" in caplog.text and "(unknown)" in caplog.text


def mid_epoch_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy whose newest checkpoint is step 20: epoch 2, batch 4 (2 updates per call)."""
    work = copy_of(trained, tmp_path)
    shutil.rmtree(work / "checkpoints" / "24")
    assert checkpoint_data(work, 20)["batch"] == 4
    return work


def test_resuming_with_another_global_batch_is_refused(tmp_path, trained_tiny, capsys):
    work = mid_epoch_copy(trained_tiny, tmp_path)
    code, _, err = call(train.main, train_args(work, "--config.images_per_step=2"), capsys)
    assert code == 2 and "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert "images_per_step=2" in line and "images_per_step=1" in line
    assert "allow_batch_change" in line
    assert checkpoint_steps(work)[-1] == 20  # nothing trained, nothing written


def test_allowed_batch_change_restarts_at_the_image_boundary(tmp_path, trained_tiny, caplog):
    work = mid_epoch_copy(trained_tiny, tmp_path)
    with caplog.at_level(logging.WARNING):
        code = train.main(
            train_args(
                work, "--config.images_per_step=2", "--config.checkpoint.allow_batch_change=True"
            )
        )
    assert code == 0
    # 4 images of epoch 2 done at 1 per batch -> batch 2 at 2 per batch, nothing repeated.
    assert "epoch 2 resumes at batch 2 (image 4 of the epoch's order; 0 images" in caplog.text
    last = checkpoint_data(work, checkpoint_steps(work)[-1])
    assert last["epoch"] == 2 and last["images_per_step"] == 2


def test_full_disk_is_one_line_naming_the_last_good_checkpoint(
    tmp_path, trained_tiny, capsys, monkeypatch
):
    work = mid_epoch_copy(trained_tiny, tmp_path)

    def no_space(self, step, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))

    monkeypatch.setattr(checkpoint.Checkpointer, "save", no_space)
    code, _, err = call(train.main, train_args(work), capsys)
    assert code == 2 and "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert f"no space left on {work / 'checkpoints'}" in line
    assert "the last good checkpoint is step 20" in line


@pytest.mark.slow
def test_a_really_full_disk_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, tiny_data_root):
    """A workdir on a 7 MB tmpfs fills up during the second epoch: orbax's background threads
    fail; the run ends with exactly one error line (no orbax tracebacks) and removes the
    failed save's temporary directory."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:  # not root: the monkeypatched full-disk test above remains
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = run(train_cmd(small / "w", f"--config.data.root={tiny_data_root}"))
        assert result.returncode == 2, result.stderr[-3000:]
        for noise in ("Traceback", " ERROR ", "Event loop is closed"):
            assert noise not in result.stderr, result.stderr[-3000:]
        errors = re.findall(r"error: [^\r\n]*", result.stderr)
        assert len(errors) == 1 and f"no space left on {small / 'w' / 'checkpoints'}" in errors[0]
        assert "the last good checkpoint is step" in errors[0]
        assert not list((small / "w" / "checkpoints").glob("*orbax-checkpoint-tmp*"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_zero_epochs_only_evaluates_and_evaluation_is_deterministic(tmp_path, trained_tiny, capsys):
    work = copy_of(trained_tiny, tmp_path)
    shutil.rmtree(work / "eval")
    before = checkpoint_steps(work)
    code, out, _ = call(train.main, train_args(work, "--config.num_epochs=0"), capsys)
    assert code == 0 and "AP on test" in out and "**mAP**" in out
    assert checkpoint_steps(work) == before
    table = work / "eval" / "24" / "ap_table.json"
    first = json.loads(table.read_text())["results"]
    code, _, _ = call(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], capsys)
    assert code == 0
    assert json.loads(table.read_text())["results"] == first
    # An explicit older step, into its own directory.
    code, _, _ = call(
        evaluate.main, ["voc_jax.evaluate", f"--workdir={work}", "--checkpoint=8"], capsys
    )
    assert code == 0 and (work / "eval" / "8" / "ap_table.json").is_file()


SMOKE_WIDTH = 1 / 16
SMOKE_SMALL = (
    f"--config.model.width={SMOKE_WIDTH}",
    "--config.num_epochs=1",
    "--config.data.synthetic.num_trainval=4",
    "--config.data.synthetic.num_test=4",
    "--config.data.check_images=sizes",
)


@pytest.fixture(scope="module")
def converted_random_alexnet(tmp_path_factory) -> Path:
    """A seeded randomly initialised torchvision-layout AlexNet, sixteenth-wide (the CI
    quickstart runs the real one), through the real converter."""
    import torch

    from voc_jax.convert import command, torch_models

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(torch_models.alexnet(10, width=SMOKE_WIDTH).state_dict(), root / "a.pth")
    out = root / "converted"
    assert command.main(["--pth", str(root / "a.pth"), "--out", str(out)]) == 0
    (root / "a.pth").unlink()
    yield out
    shutil.rmtree(root)


@pytest.mark.slow
def test_smoke_config_trains_only_the_head_of_converted_weights(tmp_path, converted_random_alexnet):
    """The smoke config as the quickstart runs it, on a narrow AlexNet (the CI quickstart runs
    the real one and checks it beats chance): the
    backbone from converted weights stays frozen, the head learns, evaluation is written."""
    work = tmp_path / "smoke"
    code = train.main(
        train_args(
            work, *SMOKE_SMALL, f"--config.init.weights={converted_random_alexnet}", config=SMOKE
        )
    )
    assert code == 0
    step = checkpoint_steps(work)[-1]
    assert (work / "eval" / str(step) / "ap_table.json").is_file()
    from voc_jax import weights

    _, params = final_params(work)
    converted = weights.load_converted(converted_random_alexnet)[0]["params"]
    for layer in ("conv1", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(params[layer]["kernel"], converted[layer]["kernel"])
    head = weights.init_head(21, 512, seed=0)
    assert not np.array_equal(params["head"]["fc_b"]["kernel"], head["fc_b"]["kernel"])


def test_missing_weights_are_reported_before_any_work(tmp_path, capsys):
    code, _, err = call(
        train.main,
        train_args(tmp_path / "w", f"--config.init.weights={tmp_path / 'nowhere'}", config=SMOKE),
        capsys,
    )
    assert code == 2
    assert "scripts/quickstart.sh" in err and "nowhere" in err
    assert not (tmp_path / "w").exists()  # nothing generated, nothing written
