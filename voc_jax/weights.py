"""Converted weights on disk: one directory with ``params.msgpack`` and ``metadata.json``.

This module is the only place that reads or writes that format. The converter writes it,
training and evaluation read it. Loading is strict: every tensor the model needs must be
present with the right shape and nothing else may be there, and all problems are reported at
once by name, because a silently half-loaded backbone trains for hours and then disappoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from voc_jax.atomic import atomic_directory
from voc_jax.errors import WeightsError
from voc_jax.model import BACKBONE_LAYERS, AlexNet, TransferHead
from voc_jax.preprocessing import Preprocessing

PARAMS_FILE = "params.msgpack"
METADATA_FILE = "metadata.json"
FORMAT_NAME = "voc-jax-converted-weights"
FORMAT_VERSION = 1

Params = dict[str, Any]
MAX_CONV1_PADDING = 5  # torchvision uses 2, neon 3; a kernel of 11 makes more meaningless


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict -> {'conv1/kernel': array, ...}."""
    return traverse_util.flatten_dict(dict(params), sep="/")


def shape_problems(params: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every missing, unexpected and mis-shaped entry of a flat tree, one line each."""
    flat = flatten(params)
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


def expected_alexnet_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Flat parameter shapes of AlexNet (independent of the input size and conv1 padding)."""
    shapes = jax.eval_shape(
        AlexNet(num_classes=num_classes).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
    )
    return {k: tuple(v.shape) for k, v in flatten(shapes["params"]).items()}


def expected_head_shapes(num_classes: int, hidden: int) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(
        TransferHead(num_classes=num_classes, hidden=hidden).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 4096), jnp.float32),
    )
    return {f"head/{k}": tuple(v.shape) for k, v in flatten(shapes["params"]).items()}


def expected_shapes(architecture: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes for the architecture block of a metadata file ('alexnet' or 'transfer')."""
    name = architecture.get("name")
    if name == "alexnet":
        return expected_alexnet_shapes(int(architecture.get("num_classes", 1000)))
    if name == "transfer":
        backbone = {
            k: v for k, v in expected_alexnet_shapes().items() if k.split("/")[0] in BACKBONE_LAYERS
        }
        head = expected_head_shapes(
            int(architecture["num_classes"]), int(architecture.get("head_hidden", 4096))
        )
        return backbone | head
    raise WeightsError(f"unknown architecture name {name!r}; expected 'alexnet' or 'transfer'")


def save_converted(
    out_dir: str | os.PathLike[str],
    params: Mapping[str, Any],
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
    problems = shape_problems(params, expected_shapes(metadata["architecture"]))
    if problems:
        raise WeightsError(
            f"{out}: refusing to write inconsistent params:\n  " + "\n  ".join(problems)
        )
    with atomic_directory(out, overwrite=overwrite) as tmp:
        numpy_params = jax.tree.map(lambda a: np.asarray(a, np.float32), dict(params))
        (tmp / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(numpy_params))
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
    padding = arch.get("conv1_padding")
    if not isinstance(padding, int) or not 0 <= padding <= MAX_CONV1_PADDING:
        raise WeightsError(
            f"{meta_path}: architecture.conv1_padding={padding!r} is out of range "
            f"(0..{MAX_CONV1_PADDING}; torchvision 2, neon 3)"
        )
    try:
        prep = Preprocessing.from_dict(metadata["preprocessing"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{meta_path}: bad preprocessing block: {e}") from e
    if not 0 < prep.scale <= 1:
        raise WeightsError(
            f"{meta_path}: preprocessing.scale={prep.scale!r} is out of range (0, 1]: it "
            "multiplies 0-255 pixels (1/255 for torchvision weights, 1 for neon)"
        )


def load_converted(path: str | os.PathLike[str]) -> tuple[Params, dict[str, Any]]:
    """Read a converter output directory: (params as nested NumPy dict, metadata)."""
    root = Path(path)
    meta_path, params_path = root / METADATA_FILE, root / PARAMS_FILE
    for p in (meta_path, params_path):
        if not p.is_file():
            raise WeightsError(
                f"{p}: not found; point to a directory written by convert/alexnet_to_flax.py"
            )
    metadata = read_metadata(meta_path)
    try:
        params = serialization.msgpack_restore(params_path.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
        raise WeightsError(f"{params_path}: cannot be decoded ({type(e).__name__}: {e})") from e
    if not isinstance(params, dict):
        raise WeightsError(f"{params_path}: expected a parameter tree, got {type(params).__name__}")
    try:
        expected = expected_shapes(metadata["architecture"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{meta_path}: bad architecture block ({e})") from e
    problems = shape_problems(params, expected)
    if problems:
        raise WeightsError(
            f"{params_path}: does not match its metadata:\n  " + "\n  ".join(problems)
        )
    return params, metadata


def preprocessing_of(metadata: Mapping[str, Any]) -> Preprocessing:
    return Preprocessing.from_dict(metadata["preprocessing"])


def classifier_from_metadata(metadata: Mapping[str, Any], **overrides: Any) -> AlexNet:
    """The ImageNet AlexNet that converted 'alexnet' weights plug into."""
    arch = metadata["architecture"]
    if arch["name"] != "alexnet":
        raise WeightsError(f"weights are a {arch['name']!r} model, not the ImageNet classifier")
    fields = {"num_classes": int(arch["num_classes"]), "conv1_padding": int(arch["conv1_padding"])}
    return AlexNet(**(fields | overrides))


def init_head(num_classes: int, hidden: int, seed: int) -> Params:
    """A freshly initialised transfer head (the reference's initialisers), from a seed."""
    variables = jax.jit(TransferHead(num_classes=num_classes, hidden=hidden).init)(
        jax.random.key(seed), jnp.zeros((1, 4096), jnp.float32)
    )
    return jax.tree.map(np.asarray, variables["params"])


def transfer_params(
    converted: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    num_classes: int = 21,
    head_hidden: int = 4096,
    seed: int = 0,
    keep_head: bool | None = None,
    keep_fc8: bool = False,
) -> Params:
    """TransferNet params: backbone from converted weights, head fresh from ``seed``.

    ``keep_head`` (default: when the file has one) takes the head from a converted transfer
    model instead, e.g. the reference's published VOC model; its shape must match.
    ``keep_fc8`` also carries the ImageNet fc8 along (unused by TransferNet, handy for
    comparing the two classifiers from one tree).
    """
    has_head = "head" in converted
    keep_head = has_head if keep_head is None else keep_head
    if keep_head and not has_head:
        raise WeightsError("keep_head=True but the converted weights have no transfer head")
    params: Params = {name: dict(converted[name]) for name in BACKBONE_LAYERS}
    if keep_head:
        head = {k: dict(v) for k, v in converted["head"].items()}
    else:
        head = init_head(num_classes, head_hidden, seed)
    params["head"] = head
    expected = expected_shapes(
        {"name": "transfer", "num_classes": num_classes, "head_hidden": head_hidden}
    )
    problems = shape_problems(params, expected)
    if problems:
        raise WeightsError("transfer params do not fit TransferNet:\n  " + "\n  ".join(problems))
    if keep_fc8:
        if "fc8" not in converted:
            raise WeightsError("keep_fc8=True but the converted weights have no fc8")
        params["fc8"] = dict(converted["fc8"])
    return params
