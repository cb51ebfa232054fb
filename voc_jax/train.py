"""Train the transfer model: ``python -m voc_jax.train --config CONFIG.py --workdir DIR``.

Resumes automatically from the newest readable checkpoint in ``DIR/checkpoints`` (params,
optimizer state, step, rng and the data pipeline's position), validates the dataset before
the first step, logs to ``DIR/metrics.jsonl`` and TensorBoard (``DIR/tensorboard``), saves the
resolved config as ``DIR/config.json`` and evaluates the test split at the end.
``--config.num_epochs=0`` only evaluates (the reference's test mode). A NaN or infinite loss
stops the run (exit 1) without saving over the last good checkpoint; Ctrl-C or SIGTERM save a
checkpoint and exit (130).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from voc_jax import distributed, experiment
from voc_jax import evaluate as evaluate_lib
from voc_jax.checkpoint import Checkpointer, abstract_like
from voc_jax.data.pipeline import ImageError, epoch_dataset, iterate
from voc_jax.data.voc import VocError
from voc_jax.experiment import ConfigError
from voc_jax.metric_writer import MetricWriter
from voc_jax.weights import WeightsError

log = logging.getLogger("voc_jax.train")


class NonFiniteLoss(RuntimeError):
    pass


@dataclasses.dataclass
class Position:
    """Where the data pipeline stands: the next (global) batch to train on. The batches of an
    epoch are a function of (seed, epoch, index), so this is all a resume needs, on any number
    of processes."""

    epoch: int = 0
    batch: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}


class StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived; the loop stops at the next call boundary."""


class _StopFlag:
    """Signal handlers only set a flag: an exception raised at an arbitrary point (inside
    orbax's or grain's threads and event loops) would leave nothing safe to save. A second
    signal interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        log.warning("signal %d: stopping after the current step (again to abort)", signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def restore_or_init(
    config: ml_collections.ConfigDict,
    setup: experiment.ModelSetup,
    checkpointer: Checkpointer,
    steps_per_epoch: int,
    mesh: jax.sharding.Mesh,
    step: int | None = None,
):
    state, optimizer, labels, schedule = experiment.make_train_state(config, setup, steps_per_epoch)
    # From host values (identical on every process): device_put then builds global arrays.
    state = jax.device_put(jax.device_get(state), experiment.replicated(mesh))
    position = Position()
    if checkpointer.steps():
        restored_step, state, data = checkpointer.restore(abstract_like(state), step)
        position = Position(data["epoch"], data["batch"])
        log.info(
            "resuming from checkpoint step %d (epoch %d, batch %d) in %s",
            restored_step,
            position.epoch,
            position.batch,
            checkpointer.directory,
        )
    return state, optimizer, labels, schedule, position


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> int:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = experiment.make_mesh()
    experiment.validate(config, jax.device_count())
    experiment.save_config(config, workdir)

    root = experiment.resolve_data_root(config, workdir)
    train_set = experiment.load_split(
        config, root, config.data.train_split, config.data.max_train_images
    )
    test_set = experiment.load_split(
        config, root, config.data.test_split, config.data.max_test_images
    )
    log.info(
        "data %s: %d %s images, %d %s images",
        root,
        len(train_set),
        config.data.train_split,
        len(test_set),
        config.data.test_split,
    )
    setup = experiment.build_model(config)
    patch_cfg = experiment.patch_config(config)
    g, k, bs = config.images_per_step, config.patches.per_image, config.batch_size
    calls_per_epoch = len(train_set) // g
    steps_per_epoch = calls_per_epoch * (k // bs)
    if config.num_epochs > 0 and calls_per_epoch == 0:
        raise experiment.ConfigError(
            f"{len(train_set)} training images are fewer than images_per_step={g}"
        )

    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep)
    state, optimizer, labels, schedule, position = restore_or_init(
        config, setup, checkpointer, steps_per_epoch, mesh
    )
    train_step = experiment.jit_train_step(config, setup, optimizer, labels, schedule)
    writer = MetricWriter(workdir, enabled=distributed.is_main())
    sharding = experiment.batch_sharding(mesh)
    with _StopFlag() as stop:
        try:
            for epoch in range(position.epoch, config.num_epochs):
                state, position = run_epoch(
                    config,
                    epoch,
                    position,
                    state,
                    train_step,
                    train_set.records,
                    patch_cfg,
                    sharding,
                    checkpointer,
                    writer,
                    calls_per_epoch,
                    stop,
                )
                every = config.eval.every_epochs
                if every and (epoch + 1) % every == 0 and epoch + 1 < config.num_epochs:
                    run_evaluation(config, setup, state, test_set, mesh, workdir)
        except StopRequested as e:
            state, position = e.args
            log.warning("interrupted: saving a checkpoint at step %d", int(state.step))
            checkpointer.save(int(state.step), state, position.to_json())
            return 130
        except NonFiniteLoss as e:
            checkpointer.wait()
            last = checkpointer.latest_step()
            log.error("%s; stopping. The last good checkpoint is step %s.", e, last)
            return 1
        finally:
            checkpointer.close()
            writer.close()
    run_evaluation(config, setup, state, test_set, mesh, workdir)
    return 0


def run_epoch(
    config,
    epoch,
    position,
    state,
    train_step,
    records,
    patch_cfg,
    sharding,
    checkpointer,
    writer,
    calls_per_epoch,
    stop,
):
    dataset = epoch_dataset(
        records,
        patch_cfg,
        images_per_batch=experiment.local_images(config.images_per_step),
        train=True,
        seed=config.seed,
        epoch=epoch,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    start_batch = 0
    if position.epoch == epoch and position.batch > 0:
        # Batch b depends only on (seed, epoch, b): resume by skipping, on any process count.
        start_batch = position.batch
        dataset = dataset[start_batch:]
    iterator = iterate(dataset, workers=config.data.workers)
    patches_per_call = config.images_per_step * config.patches.per_image
    bar = tqdm(
        total=calls_per_epoch,
        initial=start_batch,
        desc=f"epoch {epoch + 1}/{config.num_epochs}",
        unit="call",
        disable=not distributed.is_main(),
    )
    every = config.checkpoint.every_steps
    last_log = int(state.step)
    tick = time.perf_counter()
    sums = {"loss": 0.0, "accuracy": 0.0}  # epoch means over the calls run in this process
    calls = 0
    for batch_index in range(start_batch, calls_per_epoch):
        batch = next(iterator)
        step_before = int(state.step)
        state, metrics = train_step(state, experiment.put_batch(batch, sharding))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        step = int(state.step)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise NonFiniteLoss(
                f"non-finite loss {metrics['loss']} at step {step} "
                f"(epoch {epoch + 1}, batch {batch_index})"
            )
        calls += 1
        for k in sums:
            sums[k] += metrics[k]
        elapsed = time.perf_counter() - tick
        tick = time.perf_counter()
        rates = {
            "images_per_s": config.images_per_step / elapsed,
            "patches_per_s": patches_per_call / elapsed,
        }
        bar.update(1)
        bar.set_postfix(
            step=step, loss=f"{metrics['loss']:.3f}", patches_s=f"{rates['patches_per_s']:.0f}"
        )
        position = Position(epoch, batch_index + 1)
        if step - last_log >= config.log_every_steps or batch_index + 1 == calls_per_epoch:
            writer.write(step, metrics | rates, epoch=epoch + 1)
            last_log = step
        if every and step // every > step_before // every and batch_index + 1 < calls_per_epoch:
            checkpointer.save(step, state, position.to_json())
        if stop.requested:
            bar.close()
            if batch_index + 1 == calls_per_epoch:
                position = Position(epoch + 1, 0)
            raise StopRequested(state, position)
    bar.close()
    position = Position(epoch + 1, 0)
    if calls:
        writer.write(
            int(state.step), {f"epoch_{k}": v / calls for k, v in sums.items()}, epoch=epoch + 1
        )
    checkpointer.save(int(state.step), state, position.to_json())
    writer.flush()
    return state, position


def run_evaluation(config, setup, state, dataset, mesh, workdir: Path) -> dict[str, Any]:
    step = int(state.step)
    out_dir = workdir / "eval" / str(step)
    main = distributed.is_main()
    summary = evaluate_lib.evaluate(
        state.params, setup, dataset, config, mesh, out_dir, progress=main, write=main
    )
    if main:
        print(f"\nAP on {summary['split']} ({summary['images']} images), step {step}:")
        print(summary["table"])
        print(f"written to {out_dir}")
    return summary


def restore_state(
    config: ml_collections.ConfigDict,
    setup: experiment.ModelSetup,
    workdir: Path,
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Any:
    """The train state of a checkpoint of ``workdir`` (initial weights when there is none)."""
    mesh = mesh or experiment.make_mesh()
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep)
    if not checkpointer.steps():
        log.warning("no checkpoint in %s: using the initial weights", workdir)
    state, *_ = restore_or_init(config, setup, checkpointer, 1, mesh, step)
    checkpointer.close()
    return state


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: Path,
    *,
    step: int | None = None,
    split: str | None = None,
) -> int:
    """Evaluate a checkpoint of ``workdir`` (or the initial weights when there is none)."""
    mesh = experiment.make_mesh()
    experiment.validate(config, jax.device_count())
    root = experiment.resolve_data_root(config, workdir)
    split = split or config.data.test_split
    dataset = experiment.load_split(config, root, split, config.data.max_test_images)
    setup = experiment.build_model(config)
    state = restore_state(config, setup, workdir, step, mesh)
    run_evaluation(config, setup, state, dataset, mesh, workdir)
    return 0


# ----------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "where checkpoints, logs and results go", required=True)
    config_flags.DEFINE_config_file("config", None, "a config file in voc_jax/configs/")
    flags.mark_flags_as_required(["config"])


def main(argv: Sequence[str]) -> None:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        distributed.initialize(FLAGS.config)  # before anything touches a device
        if not distributed.is_main():
            logging.getLogger().setLevel(logging.WARNING)
        code = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ConfigError, VocError, WeightsError, ImageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    define_flags()
    app.run(main)
