"""From the optim settings to a partitioned optax optimizer: frozen vs trainable, schedules, decay.

Parameters are labelled by matching their path (``conv1/kernel``, ``head/fc_a/bias``, ...)
against the ``trainable`` regexes; frozen subtrees get ``optax.set_to_zero()`` through
``optax.partition``, so no optimizer state exists for them, and the train step takes
gradients only for trainable leaves so XLA prunes the backward pass through frozen layers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from voc_jax.settings import OPTIMIZERS, SCHEDULES, OptimSettings

TRAINABLE, FROZEN = "trainable", "frozen"
Params = Any


def param_paths(params: Params) -> list[str]:
    return ["/".join(k) for k in traverse_util.flatten_dict(params)]


def param_paths_and_leaves(params: Params) -> list[tuple[str, Any]]:
    """[('conv1/kernel', leaf), ...] for the non-None leaves of a (possibly partial) tree."""
    flat = traverse_util.flatten_dict(params)
    return [("/".join(k), v) for k, v in flat.items() if v is not None]


def leaf_at(params: Params, path: str) -> Any:
    node = params
    for part in path.split("/"):
        node = node[part]
    return node


def _map_paths(params: Params, fn: Callable[[str], Any]) -> Params:
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: fn("/".join(k)) for k in flat})


def trainable_labels(params: Params, patterns: Sequence[str]) -> Params:
    """'trainable' where a path fully matches one of ``patterns`` (re.fullmatch), else
    'frozen'. A pattern that matches nothing is an error: it is almost always a typo."""
    compiled = [re.compile(p) for p in patterns]
    paths = param_paths(params)
    for pattern in compiled:
        if not any(pattern.fullmatch(p) for p in paths):
            raise ValueError(
                f"trainable pattern {pattern.pattern!r} matches no parameter; "
                f"paths look like {paths[:3]}"
            )
    return _map_paths(
        params, lambda p: TRAINABLE if any(c.fullmatch(p) for c in compiled) else FROZEN
    )


def decay_mask(params: Params, exclude: Sequence[str]) -> Params:
    """True for leaves that get weight decay: all, minus paths matching ``exclude``."""
    compiled = [re.compile(p) for p in exclude]
    return _map_paths(params, lambda p: not any(c.fullmatch(p) for c in compiled))


def step_schedule(
    base: float,
    changes: Mapping[int, float] | Sequence[tuple[int, float]],
    steps_per_epoch: int,
) -> optax.Schedule:
    """The reference's semantics: the rate is ``base``, then *set to* the value of epoch ``e``
    from the first step of that epoch on (absolute values, not multipliers). ``changes``:
    ``{epoch: rate}`` or ``((epoch, rate), ...)``."""
    pairs = changes.items() if isinstance(changes, Mapping) else changes
    points = sorted((int(e) * steps_per_epoch, float(v)) for e, v in pairs)
    boundaries = jnp.array([b for b, _ in points] or [0], jnp.int32)
    values = jnp.array([base] + [v for _, v in points], jnp.float32)

    def schedule(count):
        if not points:
            return jnp.asarray(base, jnp.float32)
        return values[jnp.sum(count >= boundaries)]

    return schedule


def learning_rate_schedule(
    config: OptimSettings, steps_per_epoch: int, num_epochs: int
) -> optax.Schedule:
    """``schedule`` 'step' or 'cosine', after ``warmup_epochs`` of linear warm-up."""
    warmup = int(round(float(config.warmup_epochs) * steps_per_epoch))
    if config.schedule == "step":
        main = step_schedule(config.learning_rate, config.lr_changes, steps_per_epoch)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(
            config.learning_rate, max(1, num_epochs * steps_per_epoch - warmup)
        )
    else:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    if warmup <= 0:
        return main
    ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
    # join_schedules hands the second schedule (count - warmup): the cosine runs from there,
    # while step boundaries stay in absolute epochs.
    after = main if config.schedule == "cosine" else (lambda c: main(c + warmup))
    return optax.join_schedules([ramp, after], [warmup])


def trainable_transform(config: OptimSettings, params: Params, schedule: optax.Schedule):
    """The update rule for trainable leaves, from ``config.optimizer``.

    sgd: momentum SGD with coupled L2 weight decay (added to the gradient, as neon does).
    adamw: optax's AdamW (``b1``, ``b2``, ``eps``) with decoupled weight decay, scaled by the
    learning rate as in optax and PyTorch. Both decay only the leaves of ``decay_mask``.
    """
    name = config.optimizer
    mask = decay_mask(params, config.no_decay)
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=mask)
            if config.weight_decay
            else optax.identity(),
            optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
        )
    if name == "adamw":
        return optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=mask,
        )
    raise ValueError(f"optim.optimizer must be one of {OPTIMIZERS}, got {name!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizer:
    """The partitioned optax transformation with what the train step needs beside it: the
    labels (which leaves train) and the schedule (for the logged learning rate)."""

    tx: optax.GradientTransformation
    labels: Params  # TRAINABLE | FROZEN per leaf
    schedule: optax.Schedule

    def init(self, params: Params) -> Any:
        return self.tx.init(params)


def make_optimizer(
    config: OptimSettings, params: Params, steps_per_epoch: int, num_epochs: int
) -> Optimizer:
    """``config.optimizer`` (sgd or adamw) on the trainable leaves; frozen leaves never
    change and hold no state."""
    labels = trainable_labels(params, config.trainable)
    schedule = learning_rate_schedule(config, steps_per_epoch, num_epochs)
    trainable = trainable_transform(config, params, schedule)
    tx = optax.partition({TRAINABLE: trainable, FROZEN: optax.set_to_zero()}, labels)
    return Optimizer(tx, labels, schedule)


def split_trainable(params: Params, labels: Params) -> tuple[Params, Params]:
    """Two trees of the same structure: trainable leaves (None elsewhere) and frozen ones."""
    trainable = jax.tree.map(lambda p, lab: p if lab == TRAINABLE else None, params, labels)
    frozen = jax.tree.map(lambda p, lab: p if lab == FROZEN else None, params, labels)
    return trainable, frozen


def merge(trainable: Params, frozen: Params) -> Params:
    return jax.tree.map(
        lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None
    )
