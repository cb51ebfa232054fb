"""The whole-image family's jitted steps: photos (or cached maps) -> position logits ->
pooled image logits -> the loss; the partitioned optimizer's update on the trainable leaves
only (XLA drops the backward pass through frozen layers); an optional exponential moving
average of the weights; the evaluation's image scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from voc_jax import optim
from voc_jax.image.loss import Loss, mean_loss, per_pair
from voc_jax.image.model import WholeImageNet
from voc_jax.image.pooling import Pooling, pool
from voc_jax.preprocessing import Preprocessing

Batch = dict[str, Any]  # views: tuple of [B, S, S, 3] uint8 or [B, gh, gw, C]; valid; targets


@flax.struct.dataclass
class ImageState:
    step: jax.Array  # updates done (the schedule's count)
    params: Any
    opt_state: Any
    rng: jax.Array  # dropout uses fold_in(rng, step)
    batch_stats: Any  # {} without BatchNorm
    ema: Any  # the weights' moving average ({} when off)


def create_state(params: Any, batch_stats: Any, optimizer: optim.Optimizer, seed: int,
                 ema: bool) -> ImageState:  # fmt: skip
    return ImageState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
        batch_stats=batch_stats or {},
        ema=jax.tree.map(jnp.asarray, params) if ema else {},
    )


def variables_of(params: Any, batch_stats: Any) -> dict[str, Any]:
    return {"params": params} | ({"batch_stats": batch_stats} if batch_stats else {})


def pools_first(module: WholeImageNet, pooling: Pooling, train: bool) -> bool:
    """Average pooling of a linear classifier is the classifier of the averaged map (the
    mean of W x + b is W mean(x) + b): the map is pooled first, 1/P of the head's work.
    Not with dropout on the head's input in training (a mask per position) or two layers."""
    linear = module.head_hidden == 0 and (not train or module.head_dropout == 0)
    return pooling.kind == "avg" and linear


def image_logits(
    module: WholeImageNet,
    variables: dict[str, Any],
    batch: Batch,
    pooling: Pooling,
    preprocessing: Preprocessing,
    *,
    start: str,
    train: bool = False,
    rng: jax.Array | None = None,
    update_stats: bool = False,
) -> tuple[jax.Array, Any]:
    """([B, classes] pooled logits, BatchNorm statistics after the batch)."""
    stats = variables.get("batch_stats", {})
    first = pools_first(module, pooling, train)
    outputs = []
    for i, view in enumerate(batch["views"]):
        x = preprocessing.normalize(view, module.dtype) if start == "image" else view
        kwargs: dict[str, Any] = {"train": train, "start": start}
        if first:
            kwargs["stop"] = "map"
        if rng is not None:
            kwargs["rngs"] = {"dropout": jax.random.fold_in(rng, i)}
        if first and start == "map":
            out = x
        elif update_stats:
            out, changed = module.apply(
                variables_of(variables["params"], stats), x, mutable=["batch_stats"], **kwargs
            )
            stats = changed["batch_stats"]
        else:
            out = module.apply(variables, x, **kwargs)
        outputs.append(out.reshape(out.shape[0], -1, out.shape[-1]))
    pooled = pool(jnp.concatenate(outputs, axis=1), batch["valid"], pooling)
    if not first:
        return pooled, stats
    head = {"train": train, "start": "map"}
    if rng is not None:
        head["rngs"] = {"dropout": jax.random.fold_in(rng, len(outputs))}
    logits = module.apply(variables, pooled[:, None, None, :], **head)
    return logits[:, 0, 0, :], stats


def make_grads(
    module: WholeImageNet,
    pooling: Pooling,
    loss: Loss,
    preprocessing: Preprocessing,
    *,
    start: str,
    update_stats: bool,
    grad_chunks: int,
) -> Callable:
    """(trainable, frozen, state, batch, key) -> ((loss, (logits, BatchNorm statistics)),
    gradients): the whole batch at once, or ``grad_chunks`` sequential slices summed."""

    def whole_grads(trainable, frozen, state, batch, key):
        def loss_fn(t):
            variables = variables_of(optim.merge(t, frozen), state.batch_stats)
            logits, stats = image_logits(module, variables, batch, pooling, preprocessing,
                                         start=start, train=True, rng=key,
                                         update_stats=update_stats)  # fmt: skip
            return mean_loss(logits, batch["targets"], loss), (logits, stats)

        return jax.value_and_grad(loss_fn, has_aux=True)(trainable)

    def sliced_grads(trainable, frozen, state, batch, key):
        counted = jnp.maximum((batch["targets"] != 0).sum(), 1)
        variables = {"batch_stats": state.batch_stats} if state.batch_stats else {}

        def slice_loss(t, part, i):
            logits, _ = image_logits(module, {"params": optim.merge(t, frozen), **variables},
                                     part, pooling, preprocessing, start=start, train=True,
                                     rng=jax.random.fold_in(key, i))  # fmt: skip
            return per_pair(logits, part["targets"], loss).sum() / counted, logits

        def body(carry, xs):
            total, acc = carry
            part, i = xs
            (value, logits), g = jax.value_and_grad(slice_loss, has_aux=True)(trainable, part, i)
            return (total + value, jax.tree.map(jnp.add, acc, g)), logits

        parts = jax.tree.map(
            lambda a: a.reshape(grad_chunks, a.shape[0] // grad_chunks, *a.shape[1:]), batch
        )
        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
        (value, grads), logits = jax.lax.scan(body, zero, (parts, jnp.arange(grad_chunks)))
        logits = logits.reshape(-1, logits.shape[-1])
        return (value, (logits, state.batch_stats)), grads

    return sliced_grads if grad_chunks > 1 else whole_grads


def make_train_step(
    module: WholeImageNet,
    optimizer: optim.Optimizer,
    pooling: Pooling,
    loss: Loss,
    preprocessing: Preprocessing,
    *,
    start: str = "image",
    ema_decay: float = 0.0,
    grad_chunks: int = 1,
    fit_views: Callable[[Batch], tuple[jax.Array, ...]] | None = None,
) -> Callable[[ImageState, Batch], tuple[ImageState, dict[str, jax.Array]]]:
    """The un-jitted step (jit it with the state donated). ``grad_chunks`` > 1: the batch's
    gradient in that many sequential slices, summed (the same update to float rounding, a
    smaller working set; dropout masks drawn per slice); refused with BatchNorm updates,
    whose batch statistics would become per slice. ``fit_views``: the batch holds frames and
    crop boxes (``device_crops.make_fitter``), resampled into the views here."""
    labels, schedule = optimizer.labels, optimizer.schedule
    update_stats = module.bn_update and not module.frozen_backbone and start == "image"
    if grad_chunks > 1 and update_stats:
        raise ValueError("gradient slices with model.bn_update: batch statistics per slice")
    grads_of = make_grads(module, pooling, loss, preprocessing, start=start,
                          update_stats=update_stats, grad_chunks=grad_chunks)  # fmt: skip

    def train_step(state: ImageState, batch: Batch):
        if fit_views is not None:
            batch = {"views": fit_views(batch), "valid": batch["valid"],
                     "targets": batch["targets"]}  # fmt: skip
        trainable, frozen = optim.split_trainable(state.params, labels)
        key = jax.random.fold_in(state.rng, state.step)
        (value, (logits, stats)), grads = grads_of(trainable, frozen, state, batch, key)
        zeros = jax.tree.map(jnp.zeros_like, frozen)
        updates, opt_state = optimizer.tx.update(
            optim.merge(grads, zeros), state.opt_state, state.params
        )
        new_trainable, _ = optim.split_trainable(optax.apply_updates(state.params, updates), labels)
        params = optim.merge(new_trainable, frozen)  # frozen leaves: bitwise the same
        ema = state.ema
        if ema_decay:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        counted = batch["targets"] != 0
        correct = (logits > 0) == (batch["targets"] > 0)
        metrics = {
            "loss": value,
            "accuracy": jnp.sum(correct & counted) / jnp.maximum(counted.sum(), 1),
            "learning_rate": schedule(state.step),
            "grad_norm": optax.tree.norm(grads),
        }
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            batch_stats=stats, ema=ema)  # fmt: skip
        return new, metrics

    return train_step


def make_score_step(
    module: WholeImageNet, pooling: Pooling, preprocessing: Preprocessing, *, start: str
) -> Callable[[dict[str, Any], Batch], jax.Array]:
    """(variables, batch) -> [B, classes] probabilities (the sigmoid of the pooled logits)."""

    def score(variables, batch):
        logits, _ = image_logits(module, variables, batch, pooling, preprocessing, start=start)
        return jax.nn.sigmoid(logits)

    return score


def stack_views(views: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """Per-photo lists of views -> one batch array per view."""
    return tuple(jnp.stack(v) for v in zip(*views, strict=True))
