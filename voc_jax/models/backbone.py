"""The one interface every backbone implements, so that the transfer model, the converter,
the feature cache and the optimizer's labels never ask which network they hold."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from voc_jax.models.common import Options

# (x, options, train) -> activations; called inside a compact method, so the layers it makes
# belong to the caller (the ImageNet classifier or the transfer network alike).
Stage = Callable[[jax.Array, Options, bool], jax.Array]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One architecture, torchvision's layout.

    ``to_prefix`` runs the frozen prefix the feature cache stores (``cached`` names its
    output); ``from_prefix`` the rest up to the features the transfer head reads. The
    classifier is ``classifier_layer`` on those features. ``layers`` are the top-level
    parameter names of the backbone (classifier excluded), ``prefix_layers`` those the cache
    depends on. ``torch_prefix`` maps one of our module paths ('layer1_0/bn1') to its torch
    state-dict prefix ('layer1.0.bn1'); ``flatten_grid`` names the dense layers that read a
    flattened C x G x G map (their rows are permuted from torch's (C, H, W) order)."""

    name: str
    to_prefix: Stage
    from_prefix: Stage
    layers: tuple[str, ...]
    prefix_layers: tuple[str, ...]
    classifier_layer: str
    cached: str
    prefix_width: Callable[[float], int]  # the cached activations' width at a multiplier
    head_width: Callable[[float], int]  # the width of what the transfer head reads
    torch_prefix: Callable[[str], str]
    flatten_grid: dict[str, int]
    first_conv: str  # torch key of the first convolution's weight (infers the width)
    first_channels: int  # its output channels at width 1.0
    min_patch: int  # the smallest input side the layers accept
    has_batch_norm: bool
