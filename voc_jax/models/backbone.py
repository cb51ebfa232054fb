"""The one interface every backbone implements, so that the transfer model, the converter,
the weights format, the feature cache, validation and the optimizer's labels never ask which
network they hold: each ``voc_jax/models/<arch>.py`` builds one ``Backbone`` holding all that
is specific to it, and ``voc_jax.models`` registers it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from voc_jax.models.common import NoOptions, Options
from voc_jax.preprocessing import TORCHVISION, Preprocessing

# (x, options, train) -> activations; called inside a compact method, so the layers it makes
# belong to the caller (the ImageNet classifier or the transfer network alike).
Stage = Callable[[jax.Array, Options, bool], jax.Array]


@dataclasses.dataclass(frozen=True)
class TorchvisionWeights:
    """torchvision's weights entry of a backbone: ``torchvision.models.<enum>[<default>]``."""

    enum: str
    default: str


@dataclasses.dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights shipped inside a pip package (they install offline, from the registry).
    ``locate()`` imports the package and returns the file (ImportError when not installed)."""

    package: str  # the pip name: what to install
    locate: Callable[[], Path]
    name: str  # what the weights are, for the metadata and messages
    preprocessing: Preprocessing  # the normalisation they were trained with
    imagenet_top1: float | None = None


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One architecture in its torch layout.

    ``to_prefix`` runs the frozen prefix the feature cache stores (``cached`` names its
    output); ``from_prefix`` the rest up to the features the transfer head reads. The
    ImageNet classifier is ``classifier`` (a Flax module taking ``num_classes``, ``width``,
    ``dtype`` and the fields of ``options``), whose last layer is ``classifier_layer``.
    ``layers`` are the top-level parameter names of the backbone (classifier excluded),
    ``prefix_layers`` those the cache depends on. ``torch_prefix`` maps one of our module
    paths ('layer1_0/bn1') to its torch state-dict prefix ('layer1.0.bn1'); ``flatten_grid``
    names the dense layers that read a flattened C x G x G map (their rows are permuted from
    torch's (C, H, W) order); ``infer_width`` reads the width multiplier off a state dict."""

    name: str
    display: str  # "ResNet-50": for messages and tables
    classifier: type[nn.Module]
    to_prefix: Stage
    from_prefix: Stage
    layers: tuple[str, ...]
    prefix_layers: tuple[str, ...]
    classifier_layer: str
    cached: str
    prefix_width: Callable[[float], int]  # the cached activations' width at a multiplier
    head_width: Callable[[float], int]  # the width of what the transfer head reads
    torch_prefix: Callable[[str], str]
    infer_width: Callable[[Mapping[str, np.ndarray]], float]
    min_patch: int  # the smallest input side the layers accept
    has_batch_norm: bool
    flatten_grid: Mapping[str, int] = dataclasses.field(default_factory=dict)
    options: type = NoOptions  # the backbone's own options (a frozen dataclass of option())
    preprocessing: Preprocessing = TORCHVISION  # what its ImageNet weights expect by default
    torchvision: TorchvisionWeights | None = None
    package: PackageWeights | None = None
    # The torch reference, imported only when called (the converter's --verify, the tests,
    # the benchmark): (num_classes, width, options) -> the ImageNet classifier as a torch
    # module whose state dict has this layout; and (that classifier) -> (a torch module from
    # images to what the transfer head reads, its width).
    torch_classifier: Callable[..., Any] | None = None
    torch_features: Callable[[Any], tuple[Any, int]] | None = None
    cpu_grad_slice: int = 0  # grad_chunks=0 on a CPU: gradient slices of this many patches
    # The whole-image family (voc_jax.image): the backbone up to its last feature map (stride
    # 32: ResNet-50's layer4, Lite0's head convolution, AlexNet's and VGG-16's pool5) and
    # that map's width; AlexNet and VGG-16 also run fc6 and fc7 as convolutions on it
    # (``fc_map``, OverFeat's and Oquab et al. 2015's form), with the dense layers' parameters.
    to_map: Stage | None = None
    map_width: Callable[[float], int] | None = None
    fc_map: Stage | None = None
    quick_width: float = 1.0  # the width CPU-sized demos train (quickstart, pretraining)

    # ------------------------------------------------------------------ options
    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def parse_options(self, values: Mapping[str, Any] | None, where: str = "model.options"):
        """The backbone's options from a mapping (a config's ``model.options``, a metadata
        block's fields); unset fields take their defaults. ValueError lists every problem,
        each naming its key."""
        values = dict(values or {})
        problems = [
            f"{where}.{key}: {self.name} has no such option (its options: "
            f"{', '.join(self.option_names) or 'none'})"
            for key in values
            if key not in self.option_names
        ]
        for field in dataclasses.fields(self.options):
            if field.name in values and not field.metadata["check"](values[field.name]):
                problems.append(
                    f"{where}.{field.name}={values[field.name]!r}: must be {field.metadata['want']}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self.options(**values)

    def options_of(self, block: Mapping[str, Any], where: str = "architecture"):
        """The options recorded in converted weights' architecture block: every field must be
        there (the weights carry their architecture, a default could be wrong)."""
        missing = [name for name in self.option_names if name not in block]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)} ({self.name}'s options)")
        return self.parse_options({k: block[k] for k in self.option_names}, where)

    def build(self, num_classes: int = 1000, options: Any = None, **fields: Any) -> nn.Module:
        """The ImageNet classifier (``fields``: width, dtype, dropout_rate, bn_update where the
        classifier has them)."""
        specific = dataclasses.asdict(options if options is not None else self.options())
        return self.classifier(num_classes=num_classes, **specific, **fields)


def width_from(key: str, channels: int) -> Callable[[Mapping[str, np.ndarray]], float]:
    """``infer_width`` for a backbone whose layer ``key`` has ``channels`` outputs at width 1
    (a narrower instance has proportionally fewer)."""

    def infer(state: Mapping[str, np.ndarray]) -> float:
        weight = state.get(key)
        if getattr(weight, "ndim", 0) >= 2 and weight.shape[0] != channels:
            return float(weight.shape[0]) / channels
        return 1.0

    return infer
