"""Converted weights on disk: one directory with ``params.msgpack`` and ``metadata.json``.

This module is the only place that reads or writes that format. The converter writes it,
training and evaluation read it. ``params.msgpack`` holds the model's variables: ``params``
and, for a network with BatchNorm, ``batch_stats`` (format 1, AlexNet only, held the params
tree alone and still loads). Loading is strict: every tensor the model needs must be present
with the right shape and nothing else may be there, and all problems are reported at once by
name, because a silently half-loaded backbone trains for hours and then disappoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from voc_jax import models, xla_options
from voc_jax.atomic import atomic_directory
from voc_jax.errors import WeightsError
from voc_jax.models import Backbone
from voc_jax.models.transfer import HEAD_HIDDEN, TransferHead
from voc_jax.preprocessing import Preprocessing

PARAMS_FILE = "params.msgpack"
METADATA_FILE = "metadata.json"
FORMAT_NAME = "voc-jax-converted-weights"
FORMAT_VERSION = 2  # 2: the file holds {params, batch_stats}; 1: the params tree alone

Params = dict[str, Any]
Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...} (batch_stats only with BN)
STATS = "batch_stats"


def flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Variables (or a params tree) -> {'conv1/kernel': array, 'batch_stats/bn1/mean': ...}:
    parameter paths bare, the statistics under their collection's name."""
    tree = dict(variables)
    if "params" in tree:
        stats = tree.get(STATS) or {}
        flat = traverse_util.flatten_dict(dict(tree["params"]), sep="/")
        return flat | {
            f"{STATS}/{k}": v for k, v in traverse_util.flatten_dict(dict(stats), sep="/").items()
        }
    return traverse_util.flatten_dict(tree, sep="/")


def shape_problems(tree: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every missing, unexpected and mis-shaped entry of a flat tree, one line each."""
    flat = flatten(tree)
    problems = []
    for name in sorted(expected.keys() - flat.keys()):
        problems.append(f"missing {name}: expected shape {tuple(expected[name])}")
    for name in sorted(flat.keys() - expected.keys()):
        problems.append(f"unexpected {name}: shape {tuple(np.shape(flat[name]))}")
    for name in sorted(expected.keys() & flat.keys()):
        got, want = tuple(np.shape(flat[name])), tuple(expected[name])
        if got != want:
            problems.append(f"wrong shape {name}: expected {want}, got {got}")
    return problems


def value_problems(tensors: Mapping[str, Any]) -> list[str]:
    """Tensors no network should hold: NaN or infinite values anywhere, a negative BatchNorm
    variance (its square root is taken). One line each, naming the tensor (a flat variable
    path, or a torch state-dict key)."""
    found = []
    for key, value in tensors.items():
        a = np.asarray(value)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            found.append(f"{key}: {bad} of {a.size} values are NaN or infinite")
        elif key.endswith(("running_var", "/var")) and (a < 0).any():
            negative = int((a < 0).sum())
            found.append(f"{key}: negative variance ({negative} values, min {a.min():.3g})")
    return found


def classifier_shapes(
    b: Backbone, num_classes: int = 1000, width: float = 1.0, options: Any = None
) -> dict[str, tuple[int, ...]]:
    """Flat variable shapes of an ImageNet classifier (independent of the input size)."""
    side = max(b.min_patch, 64)
    shapes = jax.eval_shape(
        b.build(num_classes, options, width=width).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32),
    )
    return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def expected_head_shapes(num_classes: int, hidden: int, features: int = 4096) -> dict:
    shapes = jax.eval_shape(
        TransferHead(num_classes=num_classes, hidden=hidden).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, features), jnp.float32),
    )
    return {f"head/{k}": tuple(v.shape) for k, v in flatten(shapes["params"]).items()}


def backbone_of(architecture: Mapping[str, Any]) -> Backbone:
    """The backbone of an architecture block (a transfer model names it; format 1: AlexNet)."""
    name = architecture.get("name")
    arch = architecture.get("backbone", "alexnet") if name == "transfer" else name
    try:
        return models.backbone(arch)
    except ValueError:
        raise WeightsError(
            f"architecture {name!r} (backbone {arch!r}) is not one of "
            f"{', '.join(models.ARCHITECTURES)} or 'transfer'"
        ) from None


def options_of(architecture: Mapping[str, Any]) -> Any:
    """The backbone's own options recorded in an architecture block (AlexNet: conv1_padding)."""
    try:
        return backbone_of(architecture).options_of(architecture)
    except ValueError as e:
        raise WeightsError(str(e)) from e


def backbone_shapes(b: Backbone, width: float, options: Any = None) -> dict[str, tuple[int, ...]]:
    """The classifier's shapes without its classifier layer: what a transfer model keeps."""
    shapes = classifier_shapes(b, 1000, width, options)
    return {k: v for k, v in shapes.items() if _layer(k) in b.layers}


def _layer(flat_name: str) -> str:
    parts = flat_name.split("/")
    return parts[1] if parts[0] == STATS else parts[0]


def expected_shapes(architecture: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes for the architecture block of a metadata file (a classifier or 'transfer')."""
    b = backbone_of(architecture)
    width = float(architecture.get("width", 1.0))
    options = options_of(architecture)
    if architecture.get("name") != "transfer":
        return classifier_shapes(b, int(architecture.get("num_classes", 1000)), width, options)
    head = expected_head_shapes(
        int(architecture["num_classes"]),
        int(architecture.get("head_hidden", HEAD_HIDDEN)),
        b.head_width(width),
    )
    return backbone_shapes(b, width, options) | head


def as_variables(tree: Mapping[str, Any]) -> Variables:
    """Variables from variables or from a bare params tree (format 1, older callers)."""
    tree = dict(tree)
    return tree if "params" in tree else {"params": tree}


def save_converted(
    out_dir: str | os.PathLike[str],
    variables: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write atomically: a temporary sibling directory renamed into place when complete.

    An existing directory is only replaced when ``overwrite`` is set, and only after the new
    one has been written in full, so a failure never leaves a half-written or lost output.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --force to replace it")
    check_metadata(metadata, out / METADATA_FILE)
    variables = as_variables(variables)
    problems = shape_problems(variables, expected_shapes(metadata["architecture"]))
    if problems:
        raise WeightsError(
            f"{out}: refusing to write inconsistent params:\n  " + "\n  ".join(problems)
        )
    with atomic_directory(out, overwrite=overwrite) as tmp:
        numpy_variables = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)
        (tmp / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(numpy_variables))
        full_metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **metadata}
        (tmp / METADATA_FILE).write_text(json.dumps(full_metadata, indent=2) + "\n")
    return out


def read_metadata(meta_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A converter output's metadata.json, every field checked (format, version, blocks,
    architecture, preprocessing) before any parameter is read."""
    meta_path = Path(meta_path)
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        found = metadata.get("format") if isinstance(metadata, dict) else metadata
        raise WeightsError(f"{meta_path}: not a voc-jax weights file (format={found!r})")
    if int(metadata.get("format_version", -1)) > FORMAT_VERSION:
        raise WeightsError(
            f"{meta_path}: format_version {metadata['format_version']} is newer than this "
            f"voc-jax understands ({FORMAT_VERSION}); upgrade voc-jax"
        )
    check_metadata(metadata, meta_path)
    return metadata


def check_metadata(metadata: Mapping[str, Any], where: str | os.PathLike[str]) -> None:
    """The blocks a converted model needs, in range: checked when reading and when writing
    (a converter given ``--std nan 1 1`` must not write NaN into the metadata)."""
    meta_path = where
    for key in ("architecture", "preprocessing", "source"):
        if not isinstance(metadata.get(key), dict):
            raise WeightsError(f"{meta_path}: missing the '{key}' block")
    arch = metadata["architecture"]
    try:
        backbone_of(arch).options_of(arch)
    except (WeightsError, ValueError) as e:
        raise WeightsError(f"{meta_path}: {e}") from e
    width = arch.get("width", 1.0)
    if not isinstance(width, int | float) or not (math.isfinite(width) and 0 < width <= 1):
        raise WeightsError(f"{meta_path}: architecture.width={width!r} is out of range (0, 1]")
    try:
        prep = Preprocessing.from_dict(metadata["preprocessing"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{meta_path}: bad preprocessing block: {e}") from e
    if not 0 < prep.scale <= 1:
        raise WeightsError(
            f"{meta_path}: preprocessing.scale={prep.scale!r} is out of range (0, 1]: it "
            "multiplies 0-255 pixels (1/255 for torchvision weights, 1 for neon)"
        )


def load_converted(path: str | os.PathLike[str]) -> tuple[Variables, dict[str, Any]]:
    """Read a converter output directory: (variables as nested NumPy dicts, metadata)."""
    root = Path(path)
    meta_path, params_path = root / METADATA_FILE, root / PARAMS_FILE
    for p in (meta_path, params_path):
        if not p.is_file():
            raise WeightsError(
                f"{p}: not found; point to a directory written by convert/alexnet_to_flax.py"
            )
    metadata = read_metadata(meta_path)
    try:
        tree = serialization.msgpack_restore(params_path.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
        raise WeightsError(f"{params_path}: cannot be decoded ({type(e).__name__}: {e})") from e
    if not isinstance(tree, dict):
        raise WeightsError(f"{params_path}: expected a parameter tree, got {type(tree).__name__}")
    variables = (
        as_variables(tree) if int(metadata.get("format_version", 1)) >= 2 else {"params": tree}
    )
    try:
        expected = expected_shapes(metadata["architecture"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{meta_path}: bad architecture block ({e})") from e
    problems = shape_problems(variables, expected)
    if problems:
        raise WeightsError(
            f"{params_path}: does not match its metadata:\n  " + "\n  ".join(problems)
        )
    bad = value_problems(flatten(variables))
    if bad:
        raise WeightsError(
            f"{params_path}: {len(bad)} tensors hold values no trained network has (a damaged "
            "file, or weights converted before voc-jax checked them; convert again): "
            + "; ".join(bad[:5])
        )
    return variables, metadata


def preprocessing_of(metadata: Mapping[str, Any]) -> Preprocessing:
    return Preprocessing.from_dict(metadata["preprocessing"])


def classifier_from_metadata(metadata: Mapping[str, Any], **overrides: Any):
    """The ImageNet classifier that converted weights plug into."""
    arch = metadata["architecture"]
    if arch["name"] == "transfer":
        raise WeightsError(f"weights are a {arch['name']!r} model, not an ImageNet classifier")
    fields = {"width": float(arch.get("width", 1.0))} | overrides
    return backbone_of(arch).build(int(arch["num_classes"]), options_of(arch), **fields)


def init_head(num_classes: int, hidden: int, seed: int, features: int = 4096) -> Params:
    """A freshly initialised transfer head (the reference's initialisers), from a seed."""
    variables = xla_options.jit_once(TransferHead(num_classes=num_classes, hidden=hidden).init)(
        jax.random.key(seed), jnp.zeros((1, features), jnp.float32)
    )
    return jax.tree.map(np.asarray, variables["params"])


def transfer_variables(
    converted: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    num_classes: int = 21,
    head_hidden: int = 4096,
    seed: int = 0,
    keep_head: bool | None = None,
    keep_classifier: bool = False,
    classes: Sequence[str] | None = None,
) -> Variables:
    """TransferNet variables: the backbone (and its BatchNorm statistics) from converted
    weights, the head fresh from ``seed``.

    ``keep_head`` (default: when the file has one) takes the head from a converted transfer
    model instead, e.g. the reference's published VOC model; its shape must match, and its
    classes (when the file names them) must be ``classes``, the run's.
    ``keep_classifier`` also carries the ImageNet classifier (fc8, fc) along (unused by
    TransferNet, handy for comparing the two classifiers from one tree).
    """
    converted = as_variables(converted)
    source = converted["params"]
    arch_block = metadata["architecture"]
    b, width = backbone_of(arch_block), float(arch_block.get("width", 1.0))
    has_head = "head" in source
    keep_head = has_head if keep_head is None else keep_head
    if keep_head and not has_head:
        raise WeightsError("keep_head=True but the converted weights have no transfer head")
    params: Params = {name: source[name] for name in b.layers}
    if keep_head:
        params["head"] = {k: dict(v) for k, v in source["head"].items()}
        outputs = np.shape(params["head"].get("fc_b", {}).get("bias", ()))
        if outputs and outputs[0] != num_classes:
            raise WeightsError(
                f"init.keep_head: the converted head has {outputs[0]} outputs (a VOC model's "
                f"are background + VOC's 20), and this run's dataset needs {num_classes}; "
                "a head is kept only for the classes it was trained on (keep_head=False "
                "starts a fresh one)"
            )
        named = arch_block.get("classes")
        if named and classes is not None and list(named) != list(classes):
            raise WeightsError(
                f"init.keep_head: the converted head's classes are {', '.join(named[:4])}, ... "
                f"({len(named)}), and this run's dataset has {', '.join(list(classes)[:4])}, "
                f"... ({len(classes)}): the same number of outputs would mean other classes; "
                "keep_head=False starts a fresh head"
            )
    else:
        params["head"] = init_head(num_classes, head_hidden, seed, b.head_width(width))
    variables: Variables = {"params": params}
    if converted.get(STATS):
        variables[STATS] = {k: v for k, v in converted[STATS].items() if k in b.layers}
    expected = expected_shapes(
        {
            "name": "transfer",
            "backbone": b.name,
            "width": width,
            "num_classes": num_classes,
            "head_hidden": head_hidden,
        }
        | dataclasses.asdict(options_of(arch_block))
    )
    problems = shape_problems(variables, expected)
    if problems:
        raise WeightsError("transfer params do not fit TransferNet:\n  " + "\n  ".join(problems))
    if keep_classifier:
        if b.classifier_layer not in source:
            raise WeightsError(
                f"keep_classifier=True but the converted weights have no {b.classifier_layer}"
            )
        params[b.classifier_layer] = dict(source[b.classifier_layer])
    return variables
