"""The jitted training and evaluation steps.

One call handles G images (a pipeline batch): it crops and normalises all their patches on
the device, then a ``lax.scan`` runs the SGD updates. Update t uses micro-batch t of every
image, ``batch_size`` patches each, so with G = 1 this is exactly the reference (448 patches,
7 sequential updates of 64, each from one image) and with G images on G devices each device
holds its own image's micro-batch (data parallel, gradients averaged over the G x 64 patches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from voc_jax import optim
from voc_jax.data.crops import crop_batch
from voc_jax.preprocessing import Preprocessing
from voc_jax.scoring import image_scores

Params = Any
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # SGD updates done (the schedule's count)
    params: Params
    opt_state: Any
    rng: jax.Array  # raw uint32 key; dropout uses fold_in(rng, step)
    batch_stats: Any  # BatchNorm's running statistics ({} for a network without BatchNorm)


def create_state(
    params: Params, optimizer: optim.Optimizer, seed: int, batch_stats: Any = None
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
        batch_stats=batch_stats or {},
    )


def variables(params: Params, batch_stats: Any) -> dict[str, Any]:
    """The collections ``apply`` takes: params, and BatchNorm statistics where there are any
    (an AlexNet's variables stay ``{"params": ...}``)."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def network_input(batch: Batch, patch_size: int, preprocessing: Preprocessing, dtype) -> jax.Array:
    """[G, K, P, P, 3] normalised patches: cropped here (images + boxes) or by the host
    (``patches``, uint8)."""
    if "patches" in batch:
        return preprocessing.normalize(batch["patches"], dtype)
    return preprocessing.normalize(crop_batch(batch, patch_size), dtype)


def _micro_batches(x: jax.Array, batch_size: int) -> jax.Array:
    """[G, K, ...] -> [K / batch_size, G * batch_size, ...]: update t takes micro-batch t of
    every image."""
    g, k = x.shape[:2]
    steps = k // batch_size
    x = x.reshape(g, steps, batch_size, *x.shape[2:]).swapaxes(0, 1)
    return x.reshape(steps, g * batch_size, *x.shape[3:])


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the patches that count (label >= 0 and valid)."""
    use = valid & (labels >= 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(ce * use) / jnp.maximum(use.sum(), 1)


def _chunked_grads(model: flax.linen.Module, labels: Params, start: str, chunks: int) -> Callable:
    """make_grads over ``chunks`` slices of the batch, one after the other: each slice's
    summed loss is differentiated and the gradients added, then divided by the whole batch's
    count of patches that count, which is the whole batch's gradient (to float rounding; the
    dropout masks are drawn per slice). On a CPU the slices' activations stay in cache."""

    def grads_of(params, batch_stats, x, y, valid, rng):
        trainable, frozen = optim.split_trainable(params, labels)
        use = valid & (y >= 0)
        count = jnp.maximum(use.sum(), 1)

        def slice_loss(trainable_params, xs, ys, uses, key):
            inputs = variables(optim.merge(trainable_params, frozen), batch_stats)
            logits = model.apply(inputs, xs, train=True, rngs={"dropout": key}, start=start)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(ys, 0))
            return jnp.sum(ce * uses) / count, logits

        total, grads, outputs = 0.0, None, []
        for i, (xs, ys, uses) in enumerate(
            zip(jnp.split(x, chunks), jnp.split(y, chunks), jnp.split(use, chunks), strict=True)
        ):
            (loss, logits), g = jax.value_and_grad(slice_loss, has_aux=True)(
                trainable, xs, ys, uses, jax.random.fold_in(rng, i)
            )
            total, outputs = total + loss, [*outputs, logits]
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        return (total, (jnp.concatenate(outputs), batch_stats)), grads

    return grads_of


def make_grads(
    model: flax.linen.Module, labels: Params, start: str = "image", chunks: int = 1
) -> Callable:
    """(params, batch_stats, x, y, valid, dropout rng) -> ((loss, (logits, batch_stats)),
    gradients of the trainable leaves): the gradients are taken for trainable leaves only, so
    XLA drops the backward pass through frozen layers. ``start="prefix"``: x are the frozen
    prefix's cached activations (feature cache). BatchNorm statistics come back updated when
    the model updates them (``bn_update``), unchanged otherwise.

    ``chunks`` > 1 runs the batch as that many sequential slices whose gradients are summed
    (``grad_chunks``: the same update, smaller working sets); refused with ``bn_update``,
    whose batch statistics would become per slice."""
    update_stats = bool(getattr(model, "bn_update", False)) and start == "image"
    if chunks > 1:
        if update_stats:
            raise ValueError("grad_chunks > 1 with bn_update: batch statistics would be per chunk")
        return _chunked_grads(model, labels, start, chunks)

    def grads_of(params, batch_stats, x, y, valid, rng):
        trainable, frozen = optim.split_trainable(params, labels)

        def loss_fn(trainable_params):
            inputs = variables(optim.merge(trainable_params, frozen), batch_stats)
            kwargs = {"train": True, "rngs": {"dropout": rng}, "start": start}
            if update_stats and batch_stats:
                logits, changed = model.apply(inputs, x, mutable=["batch_stats"], **kwargs)
                stats = changed["batch_stats"]
            else:
                logits, stats = model.apply(inputs, x, **kwargs), batch_stats
            return masked_cross_entropy(logits, y, valid), (logits, stats)

        return jax.value_and_grad(loss_fn, has_aux=True)(trainable)

    return grads_of


def make_train_step(
    model: flax.linen.Module,
    optimizer: optim.Optimizer,
    preprocessing: Preprocessing,
    *,
    patch_size: int,
    batch_size: int,
    unroll: bool | None = None,
    inputs: str = "pixels",
    grad_chunks: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step; jit it with the state donated.

    ``inputs="prefix"``: the batch holds the frozen prefix's cached activations (``features``
    [G, K, D]) instead of images and boxes; the same updates run from there on
    (voc_jax.feature_cache).

    ``unroll`` traces the micro-batch updates as straight-line code instead of a
    ``lax.scan``. Default: on the CPU backend only, where XLA runs a loop body several times
    slower (measured here: one AlexNet update of 64 patches, 0.42 s as plain code, 2.87 s as
    a one-iteration scan); with 7 micro-batches the longer program costs only compile time.
    """
    if unroll is None:
        unroll = jax.default_backend() == "cpu"

    labels, schedule = optimizer.labels, optimizer.schedule
    if inputs not in ("pixels", "prefix"):
        raise ValueError(f"inputs must be pixels or prefix, not {inputs!r}")
    start = "prefix" if inputs == "prefix" else "image"
    grads_of = make_grads(model, labels, start=start, chunks=grad_chunks)

    def update(carry, micro):
        params, opt_state, step, rng, stats = carry
        x, y, valid = micro
        key = jax.random.fold_in(rng, step)
        (loss, (logits, stats)), grads = grads_of(params, stats, x, y, valid, key)
        _, frozen = optim.split_trainable(params, labels)
        zeros = jax.tree.map(jnp.zeros_like, frozen)
        updates, opt_state = optimizer.tx.update(optim.merge(grads, zeros), opt_state, params)
        new_trainable, _ = optim.split_trainable(optax.apply_updates(params, updates), labels)
        params = optim.merge(new_trainable, frozen)  # frozen leaves: bitwise the same arrays
        use = valid & (y >= 0)
        n = jnp.maximum(use.sum(), 1)
        metrics = {
            "loss": loss,
            "accuracy": jnp.sum((logits.argmax(-1) == y) & use) / n,
            "positive_fraction": jnp.sum((y > 0) & use) / n,
            "learning_rate": schedule(step),
            "grad_norm": optax.tree.norm(grads),
        }
        return (params, opt_state, step + 1, rng, stats), metrics

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        if inputs == "prefix":
            x = batch["features"].astype(model.dtype)
        else:
            x = network_input(batch, patch_size, preprocessing, model.dtype)
        micro = (
            _micro_batches(x, batch_size),
            _micro_batches(batch["labels"], batch_size),
            _micro_batches(batch["valid"], batch_size),
        )
        carry = (state.params, state.opt_state, state.step, state.rng, state.batch_stats)
        if unroll:
            outputs = []
            for t in range(micro[0].shape[0]):
                carry, out = update(carry, jax.tree.map(lambda a, t=t: a[t], micro))
                outputs.append(out)
            metrics = jax.tree.map(lambda *v: jnp.stack(v), *outputs)
        else:
            carry, metrics = jax.lax.scan(update, carry, micro)
        params, opt_state, step, rng, stats = carry
        summary = {k: v.mean() for k, v in metrics.items()}
        summary["learning_rate"] = metrics["learning_rate"][-1]
        return TrainState(step, params, opt_state, rng, stats), summary

    return train_step


def chunked(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int, unroll: bool):
    """``fn`` over the rows of ``x`` [N, ...], ``chunk`` rows at a time (``lax.map``) to bound
    memory, or as straight-line code when ``unroll`` (XLA's CPU loops are slow)."""
    chunks = x.reshape(-1, chunk, *x.shape[1:])
    out = jnp.stack([fn(c) for c in chunks]) if unroll else jax.lax.map(fn, chunks)
    return out.reshape(x.shape[0], *out.shape[2:])


def make_eval_step(
    model: flax.linen.Module,
    preprocessing: Preprocessing,
    *,
    patch_size: int,
    batch_size: int,
    exponent: float,
    unroll: bool | None = None,
    probabilities: bool = False,
) -> Callable[[Params, Batch], dict[str, jax.Array]]:
    """(variables, batch) -> {'power'|'mean'|'max': [G, C] image scores, 'image_index': [G]}
    and, with ``probabilities``, the patch softmax 'probs' [G, K, 1 + C] (predictions and
    score maps use it: one code path scores patches). ``unroll`` (default: on CPU, as for the
    train step) traces the chunks as straight-line code, since XLA's CPU loops run an
    AlexNet body several times slower."""
    if unroll is None:
        unroll = jax.default_backend() == "cpu"

    def eval_step(variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
        g, k = batch["labels"].shape
        x = network_input(batch, patch_size, preprocessing, model.dtype)
        x = x.reshape(g * k, *x.shape[2:])
        logits = chunked(lambda c: model.apply(variables, c), x, batch_size, unroll)
        logits = logits.reshape(g, k, -1)
        out = image_scores(logits, batch["valid"], exponent) | {"image_index": batch["image_index"]}
        if probabilities:
            out["probs"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return out

    return eval_step


def make_prefix_step(
    model: flax.linen.Module,
    preprocessing: Preprocessing,
    *,
    patch_size: int,
    batch_size: int,
    dtype: Any = jnp.float16,
    unroll: bool | None = None,
) -> Callable[[Params, Batch], jax.Array]:
    """(variables, batch) -> [G, K, D] activations of the backbone's frozen prefix (AlexNet,
    VGG-16: fc6 after its ReLU; ResNet-50: the pooled features) for every patch of the batch,
    in ``dtype``: what the feature cache stores. The evaluation step's crops and chunked
    forward, stopped at the prefix."""
    if unroll is None:
        unroll = jax.default_backend() == "cpu"

    def prefix_step(variables: dict[str, Any], batch: Batch) -> jax.Array:
        g, k = batch["labels"].shape
        x = network_input(batch, patch_size, preprocessing, model.dtype)

        def forward(c):
            return model.apply(variables, c, stop="prefix").astype(dtype)

        return chunked(forward, x.reshape(g * k, *x.shape[2:]), batch_size, unroll).reshape(
            g, k, -1
        )

    return prefix_step
