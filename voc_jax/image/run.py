"""One whole-image run (``python -m voc_jax.train`` with a ``method = "image"`` config):
validate, assemble, load the data, restore (nothing written before the run is known to
proceed), build the map caches of a frozen backbone, train epoch by epoch with checkpoints
(a killed run resumes bitwise: batch b of epoch e depends only on the seed, e and b), and
score the test split with VOC's AP protocols (``WORKDIR/eval/<step>/``, as the patches do)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from voc_jax import class_config, cli, distributed, evaluate, xla_options
from voc_jax import workdir as workdir_lib
from voc_jax.checkpoint import Checkpointer, abstract_like
from voc_jax.data.splits import load_splits
from voc_jax.data.voc import VocDataset
from voc_jax.errors import ConfigError, is_disk_full
from voc_jax.feature_cache import cache_root
from voc_jax.image import cache as map_cache
from voc_jax.image import device_crops, validation
from voc_jax.image import steps as image_steps
from voc_jax.image.data import Source, batches_per_epoch
from voc_jax.image.experiment import ImageExperiment, read
from voc_jax.image.inputs import pad_value
from voc_jax.metric_writer import MetricWriter

log = logging.getLogger(__name__)
EXTRA_SHAPE_FIELDS = ("method", "image.fc_as_conv")


@dataclasses.dataclass
class Position:
    epoch: int = 0
    batch: int = 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> int:
    workdir = Path(workdir)
    validation.validate(config)
    config = class_config.resolve(config)  # the dataset's classes, saved in config.json
    with distributed.workdir_lock(workdir, "train"):
        workdir_lib.check_before_training(config, workdir)
        check_same_family(config, workdir)
        s = read(config)  # the data first: refused before the network is built
        splits = load_splits(s.data, workdir, train=s.num_epochs > 0)
        exp = ImageExperiment.build(config)
        s = exp.settings
        per_epoch = (batches_per_epoch(splits.train.records, s.image.inputs, s.batch_size)
                     if s.num_epochs else 1)  # fmt: skip
        optimizer = exp.optimizer(per_epoch)
        checkpointer = Checkpointer(workdir / workdir_lib.CHECKPOINTS, max_to_keep=s.max_to_keep)
        state = image_steps.create_state(exp.params, exp.batch_stats, optimizer, s.seed,
                                         ema=s.image.ema > 0)  # fmt: skip
        state, step, position = restore(exp, checkpointer, state)
        workdir_lib.save_config(config, workdir)
        splits.remember_decoded()
        checkpointer.move_damaged_aside()
        writer = MetricWriter(workdir)
        writer.truncate_after(step)
        outcome = 0
        if s.num_epochs and position.epoch < s.num_epochs:
            train_source = source(exp, splits.train, workdir, train=True)
            start = "map" if train_source.cache is not None else "image"
            fitter = (
                device_crops.make_fitter(train_source.pad) if train_source.device_crops else None
            )
            train_step = xla_options.jit(
                image_steps.make_train_step(exp.module, optimizer, s.image.pooling, s.image.loss,
                                            exp.preprocessing, start=start,
                                            ema_decay=s.image.ema,
                                            grad_chunks=s.image.grad_chunks, fit_views=fitter),
                donate_argnums=0,
            )  # fmt: skip
            loop = Loop(exp, train_source, train_step, checkpointer, writer, per_epoch, workdir,
                        splits.test)  # fmt: skip
            outcome, state, step = train_epochs(loop, state, step, position)
        else:
            checkpointer.close()
            writer.close()
        if outcome:
            return outcome
        evaluate_and_report(exp, eval_variables(exp, state), splits.test, workdir, step)
        return 0


def check_same_family(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """A resume or an init.head_from of another family or network form is refused."""
    if workdir_lib.checkpoint_steps(workdir):
        workdir_lib.check_unchanged(config, workdir, EXTRA_SHAPE_FIELDS, "resume")
    source = config.init.get("head_from")
    if source and workdir_lib.checkpoint_steps(Path(source)):
        saved = workdir_lib.load_config(Path(source))
        for key in EXTRA_SHAPE_FIELDS:
            block, _, name = key.partition(".")
            theirs = saved.get(block, "patches") if not name else saved.get(block, {}).get(name)
            ours = config.get(block) if not name else config[block].get(name)
            if theirs != ours:
                raise ConfigError(
                    f"init.head_from={source}: its {key} is {theirs!r}, this run's {ours!r}; "
                    "start from a whole-image run of the same network"
                )


def source(exp: ImageExperiment, dataset: VocDataset, workdir: Path, *, train: bool) -> Source:
    """The split's batches: from the map cache when it is enabled (built or verified here),
    else from the photos."""
    s = exp.settings
    batch = s.batch_size if train else s.image.eval_batch
    pad = pad_value(exp.preprocessing)
    plain = Source(dataset.records, s.image.inputs, exp.grids, pad, batch, grid_of=exp.grid_of)
    if not s.cache.enabled:
        return plain
    inputs = s.image.inputs
    flips = (False, True) if (inputs.flip if train else inputs.test_flip) else (False,)
    layout = map_cache.Layout(
        tuple(map_cache.View(side, f, grid)
              for side, grid in zip(inputs.sides, exp.grids, strict=True) for f in flips),
        exp.map_width,
    )  # fmt: skip
    network = {"arch": s.model.arch, "width": s.model.width, "dtype": s.model.dtype,
               "fc_as_conv": exp.module.uses_fc(), "options": repr(exp.module.options)}  # fmt: skip
    description = map_cache.describe(
        network=network, variables=exp.variables, layers=exp.module.backbone.layers,
        preprocessing=exp.preprocessing, inputs=inputs, layout=layout, dtype=s.cache.dtype,
        split=dataset.split, records=dataset.records,
    )  # fmt: skip
    cache = map_cache.ensure(
        cache_root(s.cache, workdir), dataset.split, dataset.records, description, layout,
        s.cache.dtype, exp.forward_maps(), inputs, exp.preprocessing, batch=s.image.eval_batch,
    )  # fmt: skip
    return dataclasses.replace(plain, cache=cache, layout=layout)


def restore(exp: ImageExperiment, checkpointer: Checkpointer, state: Any) -> tuple:
    """(state, step, position): the newest good checkpoint's, or the fresh state (with the
    head of init.head_from when set)."""
    if not checkpointer.steps():
        head_from = exp.settings.init.head_from
        if head_from:
            found, head = workdir_lib.restore_head(Path(head_from), state.params)
            state = state.replace(params={**state.params, "head": head})
            if exp.settings.image.ema:
                state = state.replace(ema=jax.tree.map(np.asarray, state.params))
            log.info("the head starts as trained in %s (checkpoint step %d)", head_from, found)
        return state, 0, Position()
    abstract = {"params": abstract_like(state.params), "train": abstract_like(train_part(state))}
    if state.batch_stats:
        abstract["batch_stats"] = abstract_like(state.batch_stats)
    step, restored = checkpointer.restore(abstract)
    data = restored["data"]
    workdir_lib.check_checkpoint_classes(data, exp.settings.data.classes, checkpointer.directory)
    if (data.get("seed"), data.get("batch_size")) != (exp.settings.seed, exp.settings.batch_size):
        raise ConfigError(
            f"{checkpointer.directory}: saved with seed {data.get('seed')} and batch_size "
            f"{data.get('batch_size')}; this run has {exp.settings.seed} and "
            f"{exp.settings.batch_size}: resuming would see other batches. Use the saved values "
            "or another --workdir"
        )
    state = state.replace(params=restored["params"],
                          batch_stats=restored.get("batch_stats", state.batch_stats),
                          **restored["train"])  # fmt: skip
    log.info("resuming from checkpoint step %d (epoch %d, batch %d)", step, data["epoch"],
             data["batch"])  # fmt: skip
    return state, step, Position(int(data["epoch"]), int(data["batch"]))


def train_part(state: Any) -> dict[str, Any]:
    return {"opt_state": state.opt_state, "step": state.step, "rng": state.rng, "ema": state.ema}


def eval_variables(exp: ImageExperiment, state: Any) -> dict[str, Any]:
    params = state.ema if exp.settings.image.ema else state.params
    return image_steps.variables_of(params, state.batch_stats)


@dataclasses.dataclass(frozen=True)
class Loop:
    exp: ImageExperiment
    source: Source
    train_step: Any
    checkpointer: Checkpointer
    writer: MetricWriter
    per_epoch: int
    workdir: Path
    test_set: VocDataset


def save(loop: Loop, state: Any, step: int, position: Position) -> None:
    s = loop.exp.settings
    data = {"epoch": position.epoch, "batch": position.batch, "seed": s.seed,
            "batch_size": s.batch_size, "classes": list(s.data.classes)}  # fmt: skip
    try:
        loop.checkpointer.save(step, state.params, train_part(state), data,
                               batch_stats=state.batch_stats)  # fmt: skip
    except Exception as e:
        if is_disk_full(e):
            raise ConfigError(f"no space left for checkpoint {step} in "
                              f"{loop.checkpointer.directory}; free some and rerun") from e  # fmt: skip
        raise


def train_epochs(loop: Loop, state: Any, step: int, position: Position) -> tuple[int, Any, int]:
    """(exit status, state, step). Ctrl-C/SIGTERM save and return 130; a non-finite loss 1."""
    from voc_jax.train import _StopFlag

    s = loop.exp.settings
    try:
        with _StopFlag() as stop, concurrent.futures.ThreadPoolExecutor(1) as pool:
            for epoch in range(position.epoch, s.num_epochs):
                first = position.batch if position.epoch == epoch else 0
                state, step, stopped = run_epoch(loop, state, step, epoch, first, stop, pool)
                if stopped is not None:
                    log.warning("interrupted: saving a checkpoint at step %d", step)
                    save(loop, state, step, stopped)
                    return cli.EXIT_INTERRUPTED, state, step
                if s.eval_every and (epoch + 1) % s.eval_every == 0 and epoch + 1 < s.num_epochs:
                    evaluate_and_report(loop.exp, eval_variables(loop.exp, state), loop.test_set,
                                        loop.workdir, step)  # fmt: skip
    except NonFinite as e:
        loop.checkpointer.wait()
        log.error("%s; stopping. The last good checkpoint is step %s.", e,
                  loop.checkpointer.latest_step())  # fmt: skip
        return 1, state, step
    finally:
        loop.checkpointer.close()
        loop.writer.close()
    return 0, state, step


class NonFinite(Exception):
    pass


def run_epoch(loop: Loop, state: Any, step: int, epoch: int, first: int, stop: Any,
              pool: concurrent.futures.Executor) -> tuple[Any, int, Position | None]:  # fmt: skip
    """One epoch from batch ``first``; the next batch is prepared while this one trains."""
    s = loop.exp.settings
    bar = tqdm(total=loop.per_epoch, initial=first, unit="batch",
               desc=f"epoch {epoch + 1}/{s.num_epochs}")  # fmt: skip
    started, seen = time.perf_counter(), 0
    pending = (
        pool.submit(loop.source.train_batch, s.seed, epoch, first)
        if first < loop.per_epoch
        else None
    )
    try:
        for b in range(first, loop.per_epoch):
            batch = pending.result()
            if b + 1 < loop.per_epoch:
                pending = pool.submit(loop.source.train_batch, s.seed, epoch, b + 1)
            count = batch.pop("count")
            batch.pop("indices")
            state, row = loop.train_step(state, batch)
            step, seen = step + 1, seen + count
            bar.update(1)
            last = b + 1 == loop.per_epoch
            if step % s.log_every_steps == 0 or last:
                row = {k: float(v) for k, v in row.items()}
                if not np.isfinite(row["loss"]):
                    raise NonFinite(f"non-finite loss at step {step}")
                row["images_per_s"] = seen / (time.perf_counter() - started)
                loop.writer.write(step, row, epoch=epoch + 1)
                bar.set_postfix(step=step, loss=f"{row['loss']:.4f}")
            position = Position(epoch + 1, 0) if last else Position(epoch, b + 1)
            if stop.requested:
                return state, step, position
            if s.checkpoint_every and step % s.checkpoint_every == 0 and not last:
                save(loop, state, step, position)
    finally:
        bar.close()
    save(loop, state, step, Position(epoch + 1, 0))
    loop.writer.flush()
    return state, step, None


def scores(exp: ImageExperiment, variables: Any, dataset: VocDataset, workdir: Path) -> np.ndarray:
    """[N, classes] probabilities of the split's photos (float64 sigmoid of the logits)."""
    s = exp.settings
    src = source(exp, dataset, workdir, train=False)
    start = "map" if src.cache is not None else "image"
    logits_of = xla_options.jit(
        lambda v, b: image_steps.image_logits(exp.module, v, b, s.image.pooling,
                                              exp.preprocessing, start=start)[0]
    )  # fmt: skip
    variables = jax.device_put(variables)
    out = np.zeros((len(dataset.records), exp.settings.model.num_classes))
    for b in tqdm(range(len(src.test_batches())), desc="evaluating", unit="batch"):
        batch = src.test_batch(b)
        count = batch.pop("count")
        indices = batch.pop("indices")
        batch.pop("targets")
        logits = np.asarray(logits_of(variables, batch), np.float64)[:count]
        out[indices] = 1.0 / (1.0 + np.exp(-logits))
    return out


def evaluate_and_report(exp: ImageExperiment, variables: Any, dataset: VocDataset,
                        workdir: Path, step: int) -> dict[str, Any]:  # fmt: skip
    """Score the split into ``WORKDIR/eval/<step>/``, as the patch family's evaluation does
    (the same AP protocols, table, devkit result files and plots), and print the table."""
    s = exp.settings
    records = dataset.records
    probabilities = scores(exp, variables, dataset, workdir)
    targets = np.stack([r.targets() for r in records])
    results = evaluate.ap_results(probabilities, targets, s.protocols, dataset.classes)
    classes = dataset.classes
    with_reference = evaluate.is_voc2007_test(dataset.root, dataset.split, len(records), classes)
    labels = evaluate.label_results(probabilities, targets, "the image probability")
    table = (evaluate.format_table(results, with_reference, classes) + "\n\n"
             + evaluate.format_labels(labels))  # fmt: skip
    summary = {
        "split": dataset.split,
        "images": len(records),
        "classes": list(classes),
        "method": "image",
        "score": "sigmoid of the pooled logit (" + s.image.pooling.kind + ")",
        "results": results,
        "labels": labels,
        "table": table,
    }
    out_dir = workdir / "eval" / str(step)
    ids = [r.image_id for r in records]
    evaluate.write_outputs(out_dir, summary, ids, targets, {"probability": probabilities},
                           ranked="probability")  # fmt: skip
    if s.plots:
        evaluate.write_plots(out_dir, probabilities, targets, results, with_reference, classes)
    evaluate.log_metrics(workdir, summary, step)
    evaluate.announce(summary, step, out_dir)
    return summary


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: Path,
    *,
    step: int | None = None,
    split: str | None = None,
) -> int:
    """``voc_jax.evaluate`` of a whole-image workdir: its newest good checkpoint (or ``step``)
    on ``split`` (default: the config's test split); the EMA weights when the run kept them."""
    validation.validate(config)
    if split is not None:
        config = config.copy_and_resolve_references()
        config.data.test_split = split
    config = class_config.resolve(config)
    with distributed.workdir_lock(workdir, "evaluate"):
        workdir_lib.check_before_evaluating(config, workdir)
        workdir_lib.check_unchanged(config, workdir,
                                    workdir_lib.SHAPE_FIELDS + EXTRA_SHAPE_FIELDS, "evaluate")  # fmt: skip
        exp = ImageExperiment.build(config)
        found, variables = restore_for_evaluation(exp, workdir, step)
        splits = load_splits(exp.settings.data, workdir, train=False)
        splits.remember_decoded()
        evaluate_and_report(exp, variables, splits.test, workdir, found)
    return 0


def restore_for_evaluation(exp: ImageExperiment, workdir: Path, step: int | None) -> tuple:
    """(step, variables): the checkpoint's params, or its EMA when the run kept one; the
    initial variables (step 0) where there is no checkpoint (converted weights, fresh head)."""
    if not exp.settings.image.ema:
        return workdir_lib.restore_variables(workdir, exp.variables, step)
    state = image_steps.create_state(exp.params, exp.batch_stats, exp.optimizer(1),
                                     exp.settings.seed, ema=True)  # fmt: skip
    abstract = {"params": abstract_like(state.params), "train": abstract_like(train_part(state))}
    if state.batch_stats:
        abstract["batch_stats"] = abstract_like(state.batch_stats)
    checkpointer = Checkpointer(workdir / workdir_lib.CHECKPOINTS, asynchronous=False)
    try:
        if step is None and not checkpointer.steps():
            log.warning("no checkpoint in %s: evaluating the initial weights", workdir)
            return 0, exp.variables
        found, restored = checkpointer.restore(abstract, step)
    finally:
        checkpointer.close()
    ema = restored["train"]["ema"]
    return found, image_steps.variables_of(ema, restored.get("batch_stats", {}))
