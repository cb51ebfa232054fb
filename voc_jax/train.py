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

import contextlib
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
from tqdm import tqdm

from voc_jax import (
    class_config,
    cli,
    commands,
    distributed,
    experiment,
    feature_cache,
    settings,
    steps,
)
from voc_jax import evaluate as evaluate_lib
from voc_jax import workdir as workdir_lib
from voc_jax.checkpoint import Checkpointer, abstract_like
from voc_jax.data.pipeline import iterating
from voc_jax.data.splits import load_splits
from voc_jax.data.voc import VocDataset
from voc_jax.errors import ConfigError, DiskFull, is_disk_full
from voc_jax.experiment import Experiment
from voc_jax.metric_writer import MetricWriter

log = logging.getLogger("voc_jax.train")


class NonFiniteLoss(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Position:
    """Where the data pipeline stands: the next (global) batch to train on. The batches of an
    epoch are a function of (seed, epoch, index), so this is all a resume needs, on any number
    of processes."""

    epoch: int = 0
    batch: int = 0


@dataclasses.dataclass(frozen=True)
class EpochSums:
    """Running sums of the epoch's per-call means, saved with each checkpoint so that the
    epoch summary of a resumed run equals an uninterrupted run's."""

    loss: float = 0.0
    accuracy: float = 0.0
    calls: int = 0

    def plus(self, calls: list[dict[str, float]]) -> EpochSums:
        loss, accuracy = self.loss, self.accuracy
        for metrics in calls:  # one at a time, in call order: the same float sums on resume
            loss += metrics["loss"]
            accuracy += metrics["accuracy"]
        return EpochSums(loss, accuracy, self.calls + len(calls))

    def means(self) -> dict[str, float]:
        return {"epoch_loss": self.loss / self.calls, "epoch_accuracy": self.accuracy / self.calls}


class StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived; the loop stopped at a call boundary, at ``progress``."""

    def __init__(self, progress: Any):
        super().__init__("stop requested")
        self.progress = progress


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


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where training stands after a call: the train state, the SGD updates done (counted
    on the host: reading ``state.step`` would wait for the device), the data position and
    the epoch's running sums. A checkpoint saves exactly this."""

    state: Any
    step: int = 0
    position: Position = Position()
    sums: EpochSums = EpochSums()


@dataclasses.dataclass(frozen=True)
class Loop:
    """What the epoch loop needs, fixed for the whole run."""

    exp: Experiment
    train_set: VocDataset
    train_step: Any
    checkpointer: Checkpointer
    writer: MetricWriter
    calls_per_epoch: int
    updates_per_call: int
    features: Any = None  # the training split's feature cache, when feature_cache.enabled


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> int:
    """One run: validate, load the data, assemble the experiment, restore (nothing is written
    before the run is known to proceed), train epoch by epoch (saving as it goes), evaluate
    the test split at the end."""
    workdir = Path(workdir)
    if config.get("method", "patches") == "image":  # the whole-image family (voc_jax.image)
        from voc_jax.image import run as image_run

        return image_run.train_and_evaluate(config, workdir)
    experiment.validate(config)
    config = class_config.resolve(config)  # the dataset's classes, saved in config.json
    with distributed.workdir_lock(workdir, "train"):
        workdir_lib.check_before_training(config, workdir)
        # The data first: a bad annotation is refused before the network is initialised or
        # its weights loaded (seconds to minutes).
        s = settings.read(config)
        splits = load_splits(s.data, workdir, train=s.train.num_epochs > 0)
        exp = Experiment.build(config)
        calls, updates = calls_per_epoch(exp, len(splits.train))
        optimizer = exp.optimizer(calls * updates)
        checkpointer = Checkpointer(
            workdir / workdir_lib.CHECKPOINTS, max_to_keep=exp.checkpoint.max_to_keep
        )
        progress = restore(exp, checkpointer, Progress(exp.initial_state(optimizer)))
        # The run proceeds: from here on it writes.
        workdir_lib.save_config(config, workdir)
        splits.remember_decoded()
        if distributed.is_main():
            checkpointer.move_damaged_aside()
        writer = MetricWriter(workdir, enabled=distributed.is_main())
        drop_rows_past(writer, progress.step)
        features = None
        if exp.cache.enabled and exp.train.num_epochs > 0:
            features = feature_cache.ensure(exp, splits.train, workdir)
        loop = Loop(
            exp=exp,
            train_set=splits.train,
            train_step=exp.train_step(optimizer, inputs="pixels" if features is None else "prefix"),
            checkpointer=checkpointer,
            writer=writer,
            calls_per_epoch=calls,
            updates_per_call=updates,
            features=features,
        )
        outcome, progress = train_epochs(loop, progress, splits.test, workdir)
        if outcome != 0:
            return outcome
        evaluate_lib.evaluate_and_report(exp, model_variables(progress.state), splits.test,
                                         workdir, progress.step)  # fmt: skip
        return 0


def calls_per_epoch(exp: Experiment, train_images: int) -> tuple[int, int]:
    """(jitted calls per epoch, SGD updates per call). Every image trains every epoch: the
    last call is padded when ``images_per_step`` does not divide the images."""
    calls = -(-train_images // exp.train.images_per_step)
    return calls, exp.patches.patches_per_image // exp.train.batch_size


def train_epochs(
    loop: Loop, progress: Progress, test_set: VocDataset, workdir: Path
) -> tuple[int, Progress]:
    """The epochs still to run, with evaluations between them when asked for: (exit status,
    where training stopped). Ctrl-C/SIGTERM save and return 130; a non-finite loss 1."""
    exp = loop.exp
    with _StopFlag() as stop:
        try:
            for epoch in range(progress.position.epoch, exp.train.num_epochs):
                progress = run_epoch(loop, progress, epoch, stop)
                every = exp.eval.every_epochs
                if every and (epoch + 1) % every == 0 and epoch + 1 < exp.train.num_epochs:
                    evaluate_lib.evaluate_and_report(
                        exp, model_variables(progress.state), test_set, workdir, progress.step
                    )
        except StopRequested as stopped:
            log.warning("interrupted: saving a checkpoint at step %d", stopped.progress.step)
            save(loop, stopped.progress)
            return cli.EXIT_INTERRUPTED, stopped.progress
        except NonFiniteLoss as e:
            loop.checkpointer.wait()
            log.error("%s; stopping. The last good checkpoint is step %s.", e,
                      loop.checkpointer.latest_step())  # fmt: skip
            return 1, progress
        finally:
            close(loop, progress)
    return 0, progress


def close(loop: Loop, progress: Progress) -> None:
    """Wait for the last save and close the writers; a full disk is one line."""
    try:
        loop.checkpointer.close()
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(loop, progress.step) from e
        raise
    loop.writer.close()


def restore(exp: Experiment, checkpointer: Checkpointer, fresh: Progress) -> Progress:
    """The newest good checkpoint's progress (or ``fresh``), read only: damaged steps are
    recorded for ``move_damaged_aside``; a changed global batch, seed or batch size in the
    middle of an epoch refused."""
    if not checkpointer.steps():
        return with_head_from(exp, fresh)
    state = fresh.state
    abstract = {"params": abstract_like(state.params), "train": abstract_like(train_part(state))}
    if state.batch_stats:
        abstract["batch_stats"] = abstract_like(state.batch_stats)
    step, restored = checkpointer.restore(abstract)
    data = restored["data"]
    workdir_lib.check_checkpoint_classes(data, exp.data.classes, checkpointer.directory)
    stats = restored.get("batch_stats", state.batch_stats)
    progress = Progress(
        state=state.replace(params=restored["params"], batch_stats=stats, **restored["train"]),
        step=step,
        position=resume_position(exp, data),
        sums=EpochSums(**data.get("sums", {})),  # run_epoch resets them at batch 0
    )
    log.info(
        "resuming from checkpoint step %d (epoch %d, batch %d) in %s",
        step,
        progress.position.epoch,
        progress.position.batch,
        checkpointer.directory,
    )
    return progress


def with_head_from(exp: Experiment, fresh: Progress) -> Progress:
    """A fresh run with ``init.head_from``: the head trained there, in place of a random one."""
    source = exp.settings.init.head_from
    if not source:
        return fresh
    state = fresh.state
    step, head = workdir_lib.restore_head(Path(source), state.params)
    params = {**state.params, "head": jax.device_put(head, exp.replicated)}
    log.info("the head starts as trained in %s (checkpoint step %d)", source, step)
    return dataclasses.replace(fresh, state=state.replace(params=params))


def drop_rows_past(writer: MetricWriter, step: int) -> None:
    """Metrics rows past the restored step were written by a run that died before its next
    checkpoint: a resumed run writes them again."""
    dropped = writer.truncate_after(step)
    if dropped:
        log.info("dropped %d metrics rows past step %d (from the interrupted run)", dropped, step)


def model_variables(state: Any) -> dict[str, Any]:
    """What evaluation applies the model to: the params and any BatchNorm statistics."""
    return steps.variables(state.params, state.batch_stats)


def train_part(state: Any) -> dict[str, Any]:
    """The train state less its params: what the 'train' checkpoint item holds."""
    return {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def resume_position(exp: Experiment, data: dict[str, Any]) -> Position:
    """The position to resume from; refuses a changed global batch (``images_per_step``)
    unless ``checkpoint.allow_batch_change``, which then restarts the epoch at the batch
    holding the first image not yet trained on (no image skipped)."""
    epoch, batch = int(data["epoch"]), int(data["batch"])
    if batch:  # mid-epoch: the rest of the epoch's order depends on these
        for key, now_value in (("seed", exp.train.seed), ("batch_size", exp.train.batch_size)):
            was = data.get(key, now_value)
            if was != now_value:
                raise ConfigError(
                    f"{key}={now_value} but the checkpoint (epoch {epoch + 1}, batch {batch}) was "
                    f"written with {key}={was}: the rest of the epoch would not be the batches "
                    f"the run began with. Keep --config.{key}={was} until the epoch ends, or "
                    "train in a new --workdir"
                )
    now = exp.train.images_per_step
    saved = int(data.get("images_per_step", now))
    if saved == now:
        return Position(epoch, batch)
    if not exp.checkpoint.allow_batch_change:
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


def save(loop: Loop, progress: Progress) -> None:
    """A checkpoint of ``progress`` (collective: every process calls it)."""
    state = progress.state
    data = {
        "epoch": progress.position.epoch,
        "batch": progress.position.batch,
        "images_per_step": loop.exp.train.images_per_step,
        "seed": loop.exp.train.seed,
        "batch_size": loop.exp.train.batch_size,
        "sums": dataclasses.asdict(progress.sums),
        "classes": list(loop.exp.data.classes),  # what the head's outputs mean
    }
    try:
        loop.checkpointer.save(
            progress.step, state.params, train_part(state), data, batch_stats=state.batch_stats
        )
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(loop, step=progress.step) from e
        raise


def disk_full(loop: Loop, step: int) -> DiskFull:
    """The one-line error for a full disk; the failed save's temporary files removed."""
    loop.checkpointer.discard_unfinished()
    good = [s for s in loop.checkpointer.steps() if s != step]
    last = f"the last good checkpoint is step {good[-1]}" if good else "no checkpoint was saved"
    return DiskFull(
        f"no space left on {loop.checkpointer.directory} while saving step {step}; {last}"
    )


class Pending:
    """Per-call metrics still on the device. They are fetched only when needed (a log row,
    a checkpoint, the end of an epoch): every fetch waits for the device, so fetching each
    call would serialise the host pipeline and the device."""

    def __init__(self):
        self.items: list[tuple[int, int, Any]] = []  # (step after the call, batch, metrics)

    def add(self, step: int, batch: int, metrics: Any) -> None:
        self.items.append((step, batch, metrics))

    def fetch(self, epoch: int) -> list[dict[str, float]]:
        """Host values of every pending call, in call order, and nothing pending after;
        a NaN or infinite value stops the run."""
        values = jax.device_get([m for _, _, m in self.items])
        fetched = []
        for (step, batch, _), metrics in zip(self.items, values, strict=True):
            metrics = {k: float(v) for k, v in metrics.items()}
            if not all(math.isfinite(v) for v in metrics.values()):
                raise NonFiniteLoss(
                    f"non-finite loss {metrics['loss']} at step {step} "
                    f"(epoch {epoch + 1}, batch {batch})"
                )
            fetched.append(metrics)
        self.items = []
        return fetched


class RateMeter:
    """Images and patches per second between two log rows."""

    def __init__(self, images_per_call: int, patches_per_image: int):
        self.images_per_call, self.patches_per_image = images_per_call, patches_per_image
        self.start, self.calls = time.perf_counter(), 0

    def tick(self) -> None:
        self.calls += 1

    def rates(self) -> dict[str, float]:
        """The rates since the last call of this method (which restarts the count)."""
        elapsed = time.perf_counter() - self.start
        images = self.calls * self.images_per_call
        self.start, self.calls = time.perf_counter(), 0
        return {
            "images_per_s": images / elapsed,
            "patches_per_s": images * self.patches_per_image / elapsed,
        }


def run_epoch(loop: Loop, progress: Progress, epoch: int, stop: _StopFlag) -> Progress:
    """One epoch from ``progress`` (mid-epoch after a resume): log rows and checkpoints at
    step multiples, a checkpoint at the end; returns the progress at the next epoch's start."""
    exp = loop.exp
    start = progress.position.batch if progress.position.epoch == epoch else 0
    state, step = progress.state, progress.step
    sums = progress.sums if start else EpochSums()
    # Batch b depends only on (seed, epoch, b): resume by skipping, on any process count.
    dataset = exp.dataset(loop.train_set.records, train=True, epoch=epoch, features=loop.features)
    # The bar and the iterator closed on every way out: a full disk's error line stays the
    # last, and the workers' prefetched shared memory is unlinked.
    pending, meter = Pending(), RateMeter(exp.train.images_per_step, exp.patches.patches_per_image)
    with contextlib.ExitStack() as closing:
        iterator = closing.enter_context(iterating(dataset[start:], workers=exp.data.workers))
        bar = tqdm(total=loop.calls_per_epoch, initial=start, unit="call",
                   desc=f"epoch {epoch + 1}/{exp.train.num_epochs}",
                   disable=not distributed.is_main())  # fmt: skip
        closing.callback(bar.close)
        for batch_index in range(start, loop.calls_per_epoch):
            before = step
            state, metrics = loop.train_step(state, exp.put_batch(next(iterator)))
            step += loop.updates_per_call
            pending.add(step, batch_index, metrics)
            meter.tick()
            bar.update(1)
            last = batch_index + 1 == loop.calls_per_epoch
            log_now = crossed(before, step, exp.train.log_every_steps) or last
            save_now = crossed(before, step, exp.checkpoint.every_steps) and not last
            if log_now or save_now or stop.requested:
                fetched = pending.fetch(epoch)
                sums = sums.plus(fetched)
                if log_now:
                    write_row(loop.writer, bar, step, epoch, fetched[-1] | meter.rates())
            position = (
                Position(epoch + 1, 0)
                if last and stop.requested
                else Position(epoch, batch_index + 1)
            )
            progress = Progress(state, step, position, sums)
            if save_now:
                save(loop, progress)
            if stop.requested:
                raise StopRequested(progress)
    sums = sums.plus(pending.fetch(epoch))
    if sums.calls:
        loop.writer.write(step, sums.means(), epoch=epoch + 1)
    progress = Progress(state, step, Position(epoch + 1, 0), EpochSums())
    save(loop, progress)
    loop.writer.flush()
    return progress


def write_row(writer: MetricWriter, bar: tqdm, step: int, epoch: int, row: dict) -> None:
    writer.write(step, row, epoch=epoch + 1)
    bar.set_postfix(step=step, loss=f"{row['loss']:.3f}", patches_s=f"{row['patches_per_s']:.0f}")


def crossed(before: int, after: int, every: int) -> bool:
    """A multiple of ``every`` lies in (before, after]: the schedule of logs and saves
    depends on the step alone, so a resumed run logs and saves where the original did."""
    return bool(every) and after // every > before // every


# ----------------------------------------------------------------------------- CLI


define_flags = commands.define_train_flags


def run_command(fv: flags.FlagValues, positional: list[str]) -> int:
    if fv.workdir is None or fv.config is None:
        raise ConfigError("--config FILE and --workdir DIR are both required")
    distributed.initialize(fv.config)  # before anything touches a device
    if not distributed.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    return train_and_evaluate(fv.config, fv.workdir)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.command(argv, define_flags, run_command, program="voc_jax.train")


if __name__ == "__main__":
    sys.exit(main())
