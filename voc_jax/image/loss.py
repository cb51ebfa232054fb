"""Per-class losses on image labels. Targets are VOC's: 1 positive, -1 negative, 0 an image
whose only objects of the class are difficult, which the official protocol ignores and so do
these losses (weight 0). Each loss is the mean over the (image, class) pairs that count.

``asl``: the asymmetric loss of Ridnik et al. (ICCV 2021), what ASL and ML-Decoder train with:
positives ``(1 - p)^gamma_pos log p``, negatives ``p_m^gamma_neg log(1 - p_m)`` with the
probability shifted down by ``clip`` (``p_m = max(p - clip, 0)``), so that easy negatives,
the bulk of a multi-label batch, weigh little. With gamma_pos = gamma_neg = clip = 0 it is
the binary cross-entropy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LOSSES = ("bce", "asl")


@dataclasses.dataclass(frozen=True)
class Loss:
    kind: str = "bce"
    gamma_pos: float = 0.0  # asl only
    gamma_neg: float = 4.0  # asl only
    clip: float = 0.05  # asl only: the negatives' probability margin, in [0, 1)

    def __post_init__(self):
        if self.kind not in LOSSES:
            raise ValueError(f"loss {self.kind!r}: expected one of {', '.join(LOSSES)}")
        if not (self.gamma_pos >= 0 and self.gamma_neg >= 0 and 0 <= self.clip < 1):
            raise ValueError("asl: gamma_pos and gamma_neg must be >= 0, clip in [0, 1)")


def per_pair(logits: jax.Array, targets: jax.Array, loss: Loss) -> jax.Array:
    """[B, C] losses of each (image, class) pair (0 where the target is 0)."""
    x = logits.astype(jnp.float32)
    positive = targets > 0
    log_p = jax.nn.log_sigmoid(x)
    log_not_p = jax.nn.log_sigmoid(-x)
    if loss.kind == "bce":
        out = -jnp.where(positive, log_p, log_not_p)
    else:
        p = jax.nn.sigmoid(x)
        pos = -((1.0 - p) ** loss.gamma_pos) * log_p if loss.gamma_pos else -log_p
        if loss.clip > 0:
            p_m = jnp.maximum(p - loss.clip, 0.0)
            log_not_pm = jnp.log(jnp.maximum(1.0 - p_m, 1e-8))
        else:
            p_m, log_not_pm = p, log_not_p
        neg = -(p_m**loss.gamma_neg) * log_not_pm if loss.gamma_neg else -log_not_pm
        out = jnp.where(positive, pos, neg)
    return jnp.where(targets != 0, out, 0.0)


def mean_loss(logits: jax.Array, targets: jax.Array, loss: Loss) -> jax.Array:
    """The mean over the pairs that count (targets != 0); 0 when none does."""
    counted = (targets != 0).sum()
    return per_pair(logits, targets, loss).sum() / jnp.maximum(counted, 1)
