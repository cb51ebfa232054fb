"""Train the transfer model: ``python -m voc_jax.train --config CONFIG.py --workdir DIR``.

Resumes automatically from the newest good checkpoint in ``DIR/checkpoints`` (params,
optimizer state, step, rng, the data pipeline's position and the epoch's running sums),
validates the whole config and the dataset before the first step, holds ``DIR/.lock`` for the
life of the run, logs to ``DIR/metrics.jsonl`` and TensorBoard (``DIR/tensorboard``), saves
the resolved config as ``DIR/config.json`` and evaluates the test split at the end.
``--config.num_epochs=0`` only evaluates (the reference's test mode). A NaN or infinite loss
stops the run (exit 1) without saving over the last good checkpoint; Ctrl-C or SIGTERM save a
checkpoint and exit (130); every user error is one ``error:`` line and exit 2.
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
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from voc_jax import cli, distributed, experiment, validation
from voc_jax import evaluate as evaluate_lib
from voc_jax.checkpoint import Checkpointer, abstract_like
from voc_jax.data.pipeline import epoch_dataset, iterate
from voc_jax.errors import ConfigError, DiskFull, is_disk_full
from voc_jax.metric_writer import MetricWriter

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


@dataclasses.dataclass
class EpochSums:
    """Running sums of the epoch's per-call means, saved with each checkpoint so that the
    epoch summary of a resumed run equals an uninterrupted run's."""

    loss: float = 0.0
    accuracy: float = 0.0
    calls: int = 0

    def add(self, metrics: dict[str, float]) -> None:
        self.loss += metrics["loss"]
        self.accuracy += metrics["accuracy"]
        self.calls += 1


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


@dataclasses.dataclass
class Run:
    """Everything one training run needs, built once by ``prepare``."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: jax.sharding.Mesh
    setup: experiment.ModelSetup
    data: experiment.Splits
    state: Any
    train_step: Any
    checkpointer: Checkpointer
    writer: MetricWriter
    position: Position
    sums: EpochSums
    calls_per_epoch: int
    updates_per_call: int
    features: Any = None  # the training split's feature cache, when config.feature_cache
    # SGD updates done, counted on the host (reading state.step would wait for the device).
    step: int = 0


def prepare(config: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh) -> Run:
    """Data, model, optimizer and the restored (or fresh) state of a run."""
    splits = experiment.load_splits(config, workdir)
    setup = experiment.build_model(config)
    experiment.save_config(config, workdir)
    g, k, bs = config.images_per_step, config.patches.per_image, config.batch_size
    calls_per_epoch = len(splits.train) // g
    updates_per_call = k // bs
    if config.num_epochs > 0 and calls_per_epoch == 0:
        raise ConfigError(f"{len(splits.train)} training images are fewer than images_per_step={g}")
    steps_per_epoch = calls_per_epoch * updates_per_call
    state, optimizer, labels, schedule = experiment.make_train_state(config, setup, steps_per_epoch)
    # From host values (identical on every process): device_put then builds global arrays.
    state = jax.device_put(jax.device_get(state), experiment.replicated(mesh))
    features = None
    if config.feature_cache.enabled and config.num_epochs > 0:
        from voc_jax import feature_cache

        features = feature_cache.ensure(config, setup, splits.train, workdir)
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep)
    writer = MetricWriter(workdir, enabled=distributed.is_main())
    inputs = "fc6" if features is not None else "pixels"
    run = Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        setup=setup,
        data=splits,
        state=state,
        train_step=experiment.jit_train_step(
            config, setup, optimizer, labels, schedule, inputs=inputs
        ),
        checkpointer=checkpointer,
        writer=writer,
        position=Position(),
        sums=EpochSums(),
        calls_per_epoch=calls_per_epoch,
        updates_per_call=updates_per_call,
        features=features,
    )
    restore(run)
    return run


def restore(run: Run) -> None:
    """Resume from the newest good checkpoint: state, position, epoch sums; metrics rows past
    it dropped; a changed global batch refused unless the config allows it."""
    checkpointer, state = run.checkpointer, run.state
    if checkpointer.steps():
        abstract = {
            "params": abstract_like(state.params),
            "train": abstract_like(train_part(state)),
        }
        step, restored = checkpointer.restore(abstract)
        run.state = state.replace(params=restored["params"], **restored["train"])
        data = restored["data"]
        run.position = resume_position(run.config, data)
        run.sums = EpochSums(**data.get("sums", {})) if run.position.batch else EpochSums()
        run.step = step
        log.info(
            "resuming from checkpoint step %d (epoch %d, batch %d) in %s",
            step,
            run.position.epoch,
            run.position.batch,
            checkpointer.directory,
        )
    if distributed.is_main():
        checkpointer.move_damaged_aside()
    dropped = run.writer.truncate_after(run.step)
    if dropped:
        log.info(
            "dropped %d metrics rows past step %d (from the interrupted run)", dropped, run.step
        )


def train_part(state: Any) -> dict[str, Any]:
    """The train state less its params: what the 'train' checkpoint item holds."""
    return {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def resume_position(config: ml_collections.ConfigDict, data: dict[str, Any]) -> Position:
    """The position to resume from; refuses a changed global batch (``images_per_step``)
    unless ``checkpoint.allow_batch_change``, which then restarts the epoch at the batch
    holding the first image not yet trained on (no image skipped)."""
    epoch, batch = int(data["epoch"]), int(data["batch"])
    saved = int(data.get("images_per_step", config.images_per_step))
    now = config.images_per_step
    if saved == now:
        return Position(epoch, batch)
    if not config.checkpoint.allow_batch_change:
        raise ConfigError(
            f"images_per_step={now} but the checkpoint was written with images_per_step="
            f"{saved}: resuming would skip or repeat part of epoch {epoch + 1}. Keep "
            f"--config.images_per_step={saved}, or pass "
            "--config.checkpoint.allow_batch_change=True to restart the epoch at the nearest "
            "image boundary"
        )
    images_done = batch * saved
    new_batch = images_done // now
    log.warning(
        "images_per_step changed from %d to %d: epoch %d resumes at batch %d (image %d of the "
        "epoch's order; %d images trained on again); the schedule's epoch boundaries are "
        "converted at the new batch size",
        saved,
        now,
        epoch + 1,
        new_batch,
        new_batch * now,
        images_done - new_batch * now,
    )
    return Position(epoch, new_batch)


def save(run: Run) -> None:
    """A checkpoint of the current state and position (collective: every process calls it)."""
    state = run.state
    data = {
        "epoch": run.position.epoch,
        "batch": run.position.batch,
        "images_per_step": run.config.images_per_step,
        "sums": dataclasses.asdict(run.sums),
    }
    try:
        run.checkpointer.save(run.step, state.params, train_part(state), data)
    except Exception as e:
        if is_disk_full(e):
            raise DiskFull(no_space_message(run, e)) from e
        raise


def no_space_message(run: Run, error: BaseException) -> str:
    good = [s for s in run.checkpointer.steps() if s != run.step]
    last = f"the last good checkpoint is step {good[-1]}" if good else "no checkpoint was saved"
    return f"no space left on {run.checkpointer.directory} while saving step {run.step}; {last}"


class Pending:
    """Per-call metrics still on the device. They are fetched only when needed (a log row,
    a checkpoint, the end of an epoch): every fetch waits for the device, so fetching each
    call would serialise the host pipeline and the device."""

    def __init__(self):
        self.items: list[tuple[int, int, Any]] = []  # (step after the call, batch, metrics)

    def add(self, step: int, batch: int, metrics: Any) -> None:
        self.items.append((step, batch, metrics))

    def fetch(self, run: Run, epoch: int) -> dict[str, float] | None:
        """Host values in call order; the sums updated; NaN/inf stops the run. Returns the
        latest call's metrics (None when nothing was pending)."""
        if not self.items:
            return None
        values = jax.device_get([m for _, _, m in self.items])
        latest = None
        for (step, batch, _), metrics in zip(self.items, values, strict=True):
            metrics = {k: float(v) for k, v in metrics.items()}
            if not all(math.isfinite(v) for v in metrics.values()):
                raise NonFiniteLoss(
                    f"non-finite loss {metrics['loss']} at step {step} "
                    f"(epoch {epoch + 1}, batch {batch})"
                )
            run.sums.add(metrics)
            latest = metrics
        self.items = []
        return latest


def run_epoch(run: Run, epoch: int, stop: _StopFlag) -> None:
    config = run.config
    dataset = epoch_dataset(
        run.data.train.records,
        run.data.patch_config,
        images_per_batch=experiment.local_images(config.images_per_step),
        train=True,
        seed=config.seed,
        epoch=epoch,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        features=run.features,
    )
    start = run.position.batch if run.position.epoch == epoch else 0
    if start == 0:
        run.sums = EpochSums()
    # Batch b depends only on (seed, epoch, b): resume by skipping, on any process count.
    iterator = iterate(dataset[start:], workers=config.data.workers)
    sharding = experiment.batch_sharding(run.mesh)
    bar = tqdm(
        total=run.calls_per_epoch,
        initial=start,
        desc=f"epoch {epoch + 1}/{config.num_epochs}",
        unit="call",
        disable=not distributed.is_main(),
    )
    pending = Pending()
    last_log_time, calls_since_log = time.perf_counter(), 0
    for batch_index in range(start, run.calls_per_epoch):
        batch = next(iterator)
        before = run.step
        run.state, metrics = run.train_step(run.state, experiment.put_batch(batch, sharding))
        run.step += run.updates_per_call
        run.position = Position(epoch, batch_index + 1)
        pending.add(run.step, batch_index, metrics)
        calls_since_log += 1
        bar.update(1)
        last = batch_index + 1 == run.calls_per_epoch
        log_now = crossed(before, run.step, config.log_every_steps) or last
        save_now = crossed(before, run.step, config.checkpoint.every_steps) and not last
        if log_now or save_now or stop.requested:
            latest = pending.fetch(run, epoch)
            if log_now:
                elapsed = time.perf_counter() - last_log_time
                images = calls_since_log * config.images_per_step
                rates = {
                    "images_per_s": images / elapsed,
                    "patches_per_s": images * config.patches.per_image / elapsed,
                }
                run.writer.write(run.step, latest | rates, epoch=epoch + 1)
                bar.set_postfix(
                    step=run.step,
                    loss=f"{latest['loss']:.3f}",
                    patches_s=f"{rates['patches_per_s']:.0f}",
                )
                last_log_time, calls_since_log = time.perf_counter(), 0
        if save_now:
            save(run)
        if stop.requested:
            bar.close()
            if last:
                run.position = Position(epoch + 1, 0)
            raise StopRequested()
    bar.close()
    pending.fetch(run, epoch)
    if run.sums.calls:
        run.writer.write(
            run.step,
            {"epoch_loss": run.sums.loss / run.sums.calls,
             "epoch_accuracy": run.sums.accuracy / run.sums.calls},
            epoch=epoch + 1,
        )  # fmt: skip
    run.position = Position(epoch + 1, 0)
    run.sums = EpochSums()
    save(run)
    run.writer.flush()


def crossed(before: int, after: int, every: int) -> bool:
    """A multiple of ``every`` lies in (before, after]: the schedule of logs and saves
    depends on the step alone, so a resumed run logs and saves where the original did."""
    return bool(every) and after // every > before // every


def run_evaluation(run: Run, dataset: Any | None = None) -> dict[str, Any]:
    return evaluate_lib.evaluate_and_report(
        run.state.params, run.setup, dataset or run.data.test, run.config, run.mesh,
        run.workdir, run.step,
    )  # fmt: skip


def train(run: Run) -> int:
    config = run.config
    with _StopFlag() as stop:
        try:
            for epoch in range(run.position.epoch, config.num_epochs):
                run_epoch(run, epoch, stop)
                every = config.eval.every_epochs
                if every and (epoch + 1) % every == 0 and epoch + 1 < config.num_epochs:
                    run_evaluation(run)
        except StopRequested:
            log.warning("interrupted: saving a checkpoint at step %d", run.step)
            save(run)
            return cli.EXIT_INTERRUPTED
        except NonFiniteLoss as e:
            run.checkpointer.wait()
            log.error("%s; stopping. The last good checkpoint is step %s.", e,
                      run.checkpointer.latest_step())  # fmt: skip
            return 1
        finally:
            try:
                run.checkpointer.close()
            except Exception as e:
                if is_disk_full(e):
                    raise DiskFull(no_space_message(run, e)) from e
                raise
            run.writer.close()
    run_evaluation(run)
    return 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> int:
    """Validate, lock the workdir, prepare and train; evaluate at the end."""
    workdir = Path(workdir)
    validation.validate(config, jax.device_count(), jax.process_count())
    mesh = experiment.make_mesh()
    with distributed.workdir_lock(workdir, "train"):
        run = prepare(config, workdir, mesh)
        return train(run)


# ----------------------------------------------------------------------------- CLI


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("workdir", None, "where checkpoints, logs and results go", flag_values=fv)
    config_flags.DEFINE_config_file(
        "config",
        None,
        "a config file in voc_jax/configs/",
        flag_values=fv,
        sys_argv=argv,
        lock_config=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    cli.setup_logging()

    def body() -> int:
        fv, _ = cli.parse(argv, define_flags, program="voc_jax.train")
        if fv.workdir is None or fv.config is None:
            raise ConfigError("--config FILE and --workdir DIR are both required")
        config = fv.config
        distributed.initialize(config)  # before anything touches a device
        if not distributed.is_main():
            logging.getLogger().setLevel(logging.WARNING)
        return train_and_evaluate(config, fv.workdir)

    return cli.run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
