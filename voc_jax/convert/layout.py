"""torch state dicts <-> our Flax variables, for every backbone, from one rule set.

Each of our modules maps to one torch prefix (``Backbone.torch_prefix``), and its kind follows
from its variables: a 4-D kernel is a convolution (OIHW -> HWIO), a 2-D kernel a dense layer
((out, in) -> (in, out); rows permuted from torch's (C, H, W) flatten order where the layer
reads a flattened map), a ``scale`` a BatchNorm (weight -> scale, bias -> bias, running_mean
and running_var -> the ``batch_stats`` collection; ``num_batches_tracked`` is dropped). Every
torch key is checked: missing, unexpected and mis-shaped entries are all reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from voc_jax import weights
from voc_jax.errors import UserError
from voc_jax.models import Backbone

Variables = dict[str, Any]
DROPPED = ("num_batches_tracked",)  # BatchNorm's counter: torch's bookkeeping, no weight


class LayoutError(UserError):
    """A state dict that is not the architecture it is said to be (``problems``: every one,
    for a report file; the message names the first few)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


def flax_shapes(
    b: Backbone, num_classes: int, width: float, options: Any = None
) -> dict[str, dict[str, tuple]]:
    """{collection: {'module/path/leaf': shape}} of the ImageNet classifier: the one shape
    table (voc_jax.weights.classifier_shapes) split by collection."""
    stats = f"{weights.STATS}/"
    flat = weights.classifier_shapes(b, num_classes, width, options)
    shapes = {"params": {k: v for k, v in flat.items() if not k.startswith(stats)}}
    if any(k.startswith(stats) for k in flat):
        shapes[weights.STATS] = {k[len(stats) :]: v for k, v in flat.items() if k.startswith(stats)}
    return shapes


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(tree), sep="/")


def modules_of(params: Mapping[str, tuple]) -> dict[str, dict[str, tuple]]:
    """{'layer1_0/bn1': {'scale': shape, 'bias': shape}, ...} in the model's order."""
    modules: dict[str, dict[str, tuple]] = {}
    for path, shape in params.items():
        module, leaf = path.rsplit("/", 1)
        modules.setdefault(module, {})[leaf] = shape
    return modules


def torch_shapes(b: Backbone, shapes: Mapping[str, Mapping[str, tuple]]) -> dict[str, tuple]:
    """The torch keys and shapes our variables correspond to (``num_batches_tracked`` aside)."""
    expected: dict[str, tuple] = {}
    for module, leaves in modules_of(shapes["params"]).items():
        prefix = b.torch_prefix(module)
        if "scale" in leaves:  # BatchNorm
            for name in ("weight", "bias", "running_mean", "running_var"):
                expected[f"{prefix}.{name}"] = leaves["scale"]
            continue
        kernel = leaves["kernel"]
        if len(kernel) == 4:
            expected[f"{prefix}.weight"] = (kernel[3], kernel[2], kernel[0], kernel[1])
        else:
            expected[f"{prefix}.weight"] = kernel[::-1]
        if "bias" in leaves:
            expected[f"{prefix}.bias"] = leaves["bias"]
    return expected


def infer(b: Backbone, state: Mapping[str, np.ndarray]) -> tuple[int, float]:
    """(num_classes, width) of a state dict, read off its classifier and the layer the
    backbone reads its width from."""
    classifier = state.get(f"{b.torch_prefix(b.classifier_layer)}.weight")
    num_classes = int(classifier.shape[0]) if getattr(classifier, "ndim", 0) == 2 else 1000
    return num_classes, b.infer_width(state)


def problems(expected: Mapping[str, tuple], state: Mapping[str, np.ndarray]) -> list[str]:
    found = {k: tuple(np.shape(v)) for k, v in state.items() if k.rsplit(".", 1)[-1] not in DROPPED}
    lines = [f"missing {k}: expected shape {expected[k]}" for k in sorted(expected.keys() - found)]
    lines += [f"unexpected {k}: shape {found[k]}" for k in sorted(found.keys() - expected.keys())]
    lines += [
        f"wrong shape {k}: expected {expected[k]}, got {found[k]}"
        for k in sorted(expected.keys() & found.keys())
        if found[k] != tuple(expected[k])
    ]
    return lines


def check_values(state: Mapping[str, np.ndarray], source: str) -> None:
    found = weights.value_problems(state)
    if found:
        raise LayoutError(
            f"{source}: {len(found)} tensors hold values no trained network has (a damaged or "
            f"diverged file?): " + "; ".join(found[:5]) + ("; ..." if len(found) > 5 else "")
        )


def report(source: str, what: str, found: list[str], shown: int = 5) -> str:
    """One line for a list of layout problems: the counts by kind and the first few keys."""
    kinds = {
        k: sum(1 for line in found if line.startswith(k))
        for k in ("missing", "unexpected", "wrong shape")
    }
    counts = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
    first = "; ".join(found[:shown]) + ("; ..." if len(found) > shown else "")
    return (
        f"{source}: not a state dict of {what} ({counts}; --arch names the architecture): {first}"
    )


def torch_to_flax(
    b: Backbone, state: Mapping[str, np.ndarray], source: str, options: Any = None
) -> tuple[Variables, int, float]:
    """(variables, num_classes, width) of a torch-layout state dict of backbone ``b``; every
    tensor used, every shape checked, every value finite."""
    num_classes, width = infer(b, state)
    shapes = flax_shapes(b, num_classes, width, options)
    found = problems(torch_shapes(b, shapes), state)
    if found:
        raise LayoutError(report(source, b.display, found), found)
    check_values(state, source)
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for module, leaves in modules_of(shapes["params"]).items():
        prefix = b.torch_prefix(module)
        if "scale" in leaves:
            params[f"{module}/scale"] = _f32(state[f"{prefix}.weight"])
            params[f"{module}/bias"] = _f32(state[f"{prefix}.bias"])
            stats[f"{module}/mean"] = _f32(state[f"{prefix}.running_mean"])
            stats[f"{module}/var"] = _f32(state[f"{prefix}.running_var"])
            continue
        grid = b.flatten_grid.get(module)
        params[f"{module}/kernel"] = kernel_to_flax(state[f"{prefix}.weight"], grid)
        if "bias" in leaves:
            params[f"{module}/bias"] = _f32(state[f"{prefix}.bias"])
    variables = {"params": traverse_util.unflatten_dict(params, sep="/")}
    if stats:
        variables["batch_stats"] = traverse_util.unflatten_dict(stats, sep="/")
    return variables, num_classes, width


def kernel_to_flax(w: np.ndarray, grid: int | None = None) -> np.ndarray:
    """A torch weight as a Flax kernel; ``grid``: the layer reads a flattened C x grid x grid
    map, whose rows torch orders (C, H, W) and we (H, W, C)."""
    w = np.asarray(w, np.float32)
    if w.ndim == 4:  # OIHW -> HWIO
        return _f32(w.transpose(2, 3, 1, 0))
    if grid:
        out = w.shape[0]
        w = w.reshape(out, -1, grid, grid).transpose(0, 2, 3, 1).reshape(out, -1)
    return _f32(w.T)


def _f32(a: Any) -> np.ndarray:
    """An owned float32 copy (never a view into a torch tensor that may change later)."""
    return np.array(a, np.float32, order="C", copy=True)
