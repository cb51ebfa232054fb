"""The pixel normalisation that a set of weights expects, carried in its metadata.

``normalised = (pixels[..., channel_order] * scale - mean) / std`` with ``pixels`` RGB uint8
(0-255). torchvision weights: RGB, scale 1/255, ImageNet mean/std. neon weights: BGR, scale 1,
mean (102.98, 115.95, 122.77), std 1. The pipeline reads this; the user never types it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(
                f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (one per channel), got {value!r}")
        values = (self.scale, *self.mean, *self.std)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ValueError(
                f"scale, mean and std must be finite numbers, got scale={self.scale!r}, "
                f"mean={self.mean!r}, std={self.std!r}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel_order": self.channel_order,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        return cls(
            channel_order=str(d["channel_order"]),
            scale=float(d["scale"]),
            mean=_triple(d["mean"]),
            std=_triple(d["std"]),
        )

    def normalize(self, rgb: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
        """RGB pixels in 0-255 (any dtype, channels last) -> the network's input."""
        x = rgb.astype(jnp.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        mean = jnp.asarray(self.mean, jnp.float32)
        inv_std = 1.0 / jnp.asarray(self.std, jnp.float32)
        return ((x * self.scale - mean) * inv_std).astype(dtype)


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


TORCHVISION = Preprocessing()
NEON = Preprocessing(
    channel_order="BGR", scale=1.0, mean=(102.98, 115.95, 122.77), std=(1.0, 1.0, 1.0)
)
