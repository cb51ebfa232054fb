"""Class scores at every position pooled into one logit per class, over the valid positions
only (a photo letterboxed into a square canvas has positions that see padding; several scales
put their positions side by side).

``lse`` is the log-sum-exp pooling of Pinheiro & Collobert (2015) and Durand et al.: with
sharpness ``r`` it is ``(1/r) log(mean(exp(r x)))``, the average at r -> 0 and the maximum at
r -> inf. ``topk`` (WELDON's top instances) is the mean of the ``k`` highest positions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

POOLINGS = ("avg", "max", "lse", "topk")


@dataclasses.dataclass(frozen=True)
class Pooling:
    kind: str = "lse"  # one of POOLINGS
    r: float = 5.0  # lse's sharpness (> 0)
    k: int = 3  # topk's number of positions (>= 1; fewer valid positions: all of them)

    def __post_init__(self):
        if self.kind not in POOLINGS:
            raise ValueError(f"pooling {self.kind!r}: expected one of {', '.join(POOLINGS)}")
        if self.kind == "lse" and not self.r > 0:
            raise ValueError(f"pooling r={self.r}: must be > 0")
        if self.kind == "topk" and not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"pooling k={self.k}: must be an integer >= 1")


def pool(logits: jax.Array, valid: jax.Array, pooling: Pooling) -> jax.Array:
    """[B, P, C] position logits and [B, P] valid flags (each photo has at least one valid
    position) -> [B, C] image logits, in float32."""
    x = logits.astype(jnp.float32)
    m = valid.astype(bool)[..., None]
    count = m.sum(axis=1).astype(jnp.float32)  # [B, 1]
    if pooling.kind == "avg":
        return jnp.where(m, x, 0.0).sum(axis=1) / count
    low = jnp.finfo(jnp.float32).min
    if pooling.kind == "max":
        return jnp.where(m, x, low).max(axis=1)
    if pooling.kind == "lse":
        top = jax.lax.stop_gradient(jnp.where(m, x, low).max(axis=1, keepdims=True))
        # Padded positions out BEFORE the exponential: exp of a padded logit above the valid
        # maximum overflows, and where(m, inf, 0)'s gradient is NaN.
        e = jnp.exp(pooling.r * jnp.where(m, x - top, -jnp.inf))
        return top[:, 0] + jnp.log(e.sum(axis=1) / count) / pooling.r
    # topk: the k best valid positions of each class, averaged (fewer when fewer are valid)
    k = min(pooling.k, x.shape[1])
    best, _ = jax.lax.top_k(jnp.moveaxis(jnp.where(m, x, low), 1, -1), k)  # [B, C, k]
    used = jnp.arange(k) < jnp.minimum(count, k)  # [B, k]
    used = used[:, None, :]
    return jnp.where(used, best, 0.0).sum(axis=-1) / used.sum(axis=-1)
