"""Patch probabilities -> one score per image and class (the reference's pooling, and two
cheap alternatives). Pure jnp, used inside the jitted evaluation step."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def image_scores(
    logits: jax.Array, valid: jax.Array, exponent: float = 5.0
) -> dict[str, jax.Array]:
    """[B, K, 1 + C] patch logits and [B, K] validity -> {pooling: [B, C]} scores.

    power: sum over valid patches of softmax(c)^exponent (the reference, exponent 5);
    mean: the mean patch probability; max: the largest. Background (index 0) is excluded.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1:]
    mask = valid[..., None].astype(jnp.float32)
    count = jnp.maximum(mask.sum(axis=1), 1.0)
    return {
        "power": (probs**exponent * mask).sum(axis=1),
        "mean": (probs * mask).sum(axis=1) / count,
        "max": jnp.where(mask > 0, probs, 0.0).max(axis=1),
    }
