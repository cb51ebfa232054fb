"""Read neon model files (.p / .prm): a restricted unpickler and the layer mapping.

A neon file is a Python 2 pickle (protocol 2) of plain dicts, lists and NumPy arrays (docs/reference.md).
Unpickling is restricted to exactly what such arrays need: ``numpy.core.multiarray._reconstruct``
(only for ``numpy.ndarray``), ``numpy.dtype``, ``numpy.core.multiarray.scalar`` and
``_codecs.encode``; any other global (``os.system``, ``builtins.eval``, ...) is refused before
anything is called, so a hostile file cannot execute code. gzip-compressed files are detected
by their magic bytes.

The mapping returns a torchvision-layout state dict (``features.0.weight`` ...): neon's conv
``W`` (C*R*S, K) in C order and linear ``W`` (nout, nin) with (channel, row, column) input order
are exactly torch's layouts once reshaped, so the torchvision converter does the rest. Neon's
dropout is not inverted: a linear layer fed by a neon Dropout has its weights (not its bias)
multiplied by the dropout's keep probability.
"""

from __future__ import annotations

import io
import pickle
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from voc_jax.errors import UserError, first_line
from voc_jax.models.alexnet import CONV_LAYERS, DENSE_LAYERS

# AlexNet's layer table (voc_jax.models.alexnet): conv geometry and torchvision names. conv1's padding
# is whatever the file says (3 in neon's AlexNet) and is recorded in the metadata.
TORCH_CONV = tuple(layer.torch_name for layer in CONV_LAYERS)
TORCH_LINEAR = tuple(layer.torch_name for layer in DENSE_LAYERS)
HEAD_LINEAR = ("head.fc_a", "head.fc_b")
# The real pretrained neon AlexNet file is ~490 MB (weights and momentum): anything past this,
# compressed or not, is not a neon AlexNet and would only exhaust memory.
MAX_BYTES = 2 << 30
MAX_DEPTH = 64  # nesting of dicts/lists in the pickle (neon models nest a few levels)


class NeonError(UserError):
    """A neon file that cannot be imported; the message names the file and the problem."""


class _Limits:
    """Bounds checked while unpickling, before anything is allocated."""

    data_bytes = 0


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct a {subtype!r} (only numpy.ndarray)")
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"refusing an array of shape {shape!r}")
    size = int(np.prod(dims, dtype=np.float64)) * np.dtype(dtype).itemsize
    if size > _Limits.data_bytes:  # its data must be in the file: never allocate more
        raise pickle.UnpicklingError(
            f"refusing an array of shape {tuple(dims)}: {size} bytes, more than the whole file"
        )
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _scalar(dtype: np.dtype, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing a numpy scalar of dtype {dtype!r}")
    if isinstance(data, str):
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    return text.encode(encoding)


# (module, name) -> callable. Python 2 / NumPy 1 paths and their NumPy 2 names.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("_codecs", "encode"): _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: a neon file holds only dicts, lists and "
                "NumPy arrays, so this file is not one (or was tampered with); nothing was executed"
            ) from None


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, gunzipped when gzip (by magic bytes), never more than MAX_BYTES."""
    if path.stat().st_size > MAX_BYTES:
        raise NeonError(f"{path}: {path.stat().st_size} bytes, larger than any neon AlexNet file")
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    out = bytearray()
    stream = zlib.decompressobj(wbits=31)  # gzip container
    pending, chunk = data, 64 << 20
    try:
        while pending and len(out) <= MAX_BYTES:  # 64 MB at a time: memory stays bounded
            out += stream.decompress(pending, min(chunk, MAX_BYTES + 1 - len(out)))
            pending = stream.unconsumed_tail
    except zlib.error as e:
        raise NeonError(f"{path}: a damaged gzip file ({e})") from e
    if len(out) > MAX_BYTES:
        raise NeonError(
            f"{path}: decompresses to more than {MAX_BYTES >> 30} GiB; a neon AlexNet is ~490 MB"
        )
    if not stream.eof:
        raise NeonError(f"{path}: a damaged gzip file (truncated)")
    return bytes(out)


def load_pickle(path: Path) -> Any:
    """The file's object, read with the restricted unpickler (gzip handled, sizes bounded)."""
    if not path.is_file():
        raise NeonError(f"{path}: no such file")
    data = _read_bounded(path)
    _Limits.data_bytes = len(data)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise NeonError(f"{path}: {e}") from e
    except Exception as e:  # a malformed pickle raises any type (even Memory/RecursionError)
        raise NeonError(
            f"{path}: not a readable neon pickle ({first_line(e)}); truncated or not neon?"
        ) from e
    depth = _depth(obj)
    if depth > MAX_DEPTH:
        raise NeonError(f"{path}: nested {depth} levels deep; a neon model nests a few")
    for array in _arrays(obj):
        if array.dtype.hasobject:
            raise NeonError(f"{path}: holds an object array; neon weights are numeric")
    return obj


def _depth(obj: Any) -> int:
    """Nesting depth of dicts/lists/tuples, without recursion (a hostile pickle can nest
    deeper than Python's stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children = list(item.values())
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _arrays(obj: Any) -> Iterator[np.ndarray]:
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _arrays(v)


def flat_layers(model: Any, path: Path) -> list[Mapping[str, Any]]:
    """model['config']['layers'], with nested containers (Sequential, Tree) flattened."""
    out: list[Mapping[str, Any]] = []

    def walk(layer: Any) -> None:
        if not isinstance(layer, Mapping):
            raise NeonError(f"{path}: a layer entry is a {type(layer).__name__}, not a dict")
        nested = (layer.get("config") or {}).get("layers")
        if isinstance(nested, (list, tuple)) and not layer.get("params"):
            for child in nested:
                walk(child)
        else:
            out.append(layer)

    if not isinstance(model, Mapping) or not isinstance(
        (model.get("config") or {}).get("layers"), (list, tuple)
    ):
        raise NeonError(f"{path}: no model['config']['layers'] list; is this a neon model file?")
    for layer in model["config"]["layers"]:
        walk(layer)
    return out


def _kind(layer: Mapping[str, Any]) -> str:
    return str(layer.get("type", "")).rsplit(".", 1)[-1]


def _name(layer: Mapping[str, Any], index: int) -> str:
    return str((layer.get("config") or {}).get("name", f"layer {index}"))


def _pad(value: Any) -> int | None:
    """neon's padding: an int, or a dict with pad_h/pad_w (equal for AlexNet)."""
    if isinstance(value, Mapping):
        pads = {int(v) for k, v in value.items() if k in ("pad_h", "pad_w", "pad_d") and v}
        return pads.pop() if len(pads) == 1 else (0 if not pads else None)
    return None if value is None else int(value)


def _stride(value: Any) -> int | None:
    if isinstance(value, Mapping):
        strides = {int(v) for k, v in value.items() if k in ("str_h", "str_w")}
        return strides.pop() if len(strides) == 1 else None
    return None if value is None else int(value)


def neon_to_torch_state(obj: Any, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(torch-layout state dict, facts) from an unpickled neon file; every shape validated.

    facts: conv1_padding, kind ('alexnet' | 'transfer'), num_classes, head_hidden,
    neon_version, epoch_index, dropout_scaled (layer names whose weights were scaled by keep).
    A structure that is not neon's (a list where a dict belongs, a string for a stride...)
    is a NeonError naming the file, never a stray exception.
    """
    try:
        return _neon_to_torch_state(obj, path)
    except NeonError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as e:
        raise NeonError(f"{path}: not a neon model structure ({first_line(e)})") from e


def _neon_to_torch_state(obj: Any, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not isinstance(obj, Mapping) or "model" not in obj:
        raise NeonError(f"{path}: no 'model' key at the top level; not a neon model file")
    convs, linears, problems = _weight_layers(flat_layers(obj["model"], path))
    if len(convs) != 5:
        problems.append(f"expected 5 Convolution layers (AlexNet), found {len(convs)}")
    if len(linears) not in (3, 4):
        problems.append(
            "expected 3 Linear layers (fc6, fc7, fc8: an ImageNet AlexNet) or 4 (fc6, fc7 and a "
            f"transfer head: the reference's VOC model), found {len(linears)}"
        )
    if problems:
        raise NeonError(
            f"{path}: cannot map the layers ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
    kind = "alexnet" if len(linears) == 3 else "transfer"
    conv_state, conv1_padding = _conv_state(convs, problems)
    linear_state, scaled = _linear_state(linears, kind, problems)
    if problems:
        raise NeonError(
            f"{path}: wrong shapes ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
    state = {k: np.ascontiguousarray(v, np.float32) for k, v in (conv_state | linear_state).items()}
    facts = {
        "kind": kind,
        "conv1_padding": conv1_padding,
        "num_classes": int(linears[-1]["W"].shape[0]),
        "head_hidden": int(linears[2]["W"].shape[0]) if kind == "transfer" else None,
        "dropout_scaled": scaled,
        "neon_version": _plain(obj.get("neon_version")),
        "epoch_index": _plain(obj.get("epoch_index")),
        "backend": _plain((obj.get("backend") or {}).get("type")),
    }
    return state, facts


def _weight_layers(layers: list[Any]) -> tuple[list[dict], list[dict], list[str]]:
    """(convolutions, linears, problems): each weight layer with its bias (neon stores it as
    the next layer) and, for a linear layer, the keep probability of a dropout before it."""
    problems: list[str] = []
    convs: list[dict[str, Any]] = []
    linears: list[dict[str, Any]] = []
    pending_keep: float | None = None
    last: dict[str, Any] | None = None
    for i, layer in enumerate(layers):
        kind, name = _kind(layer), _name(layer, i)
        params = layer.get("params") or {}
        if kind in ("Convolution", "Linear"):
            w = params.get("W")
            if not isinstance(w, np.ndarray):
                problems.append(f"{name}: no weight array params['W']")
                continue
            entry = {"name": name, "W": w, "b": None, "config": layer.get("config") or {}}
            if kind == "Linear":
                entry["keep"] = pending_keep
                pending_keep = None
                linears.append(entry)
            else:
                convs.append(entry)
            last = entry
        elif kind == "Bias":
            w = params.get("W")
            if last is None or last["b"] is not None:
                problems.append(f"{name}: a bias without a preceding Convolution/Linear")
            elif not isinstance(w, np.ndarray):
                problems.append(f"{name}: no bias array params['W']")
            else:
                last["b"] = w
        elif kind == "Dropout":
            keep = (layer.get("config") or {}).get("keep", 0.5)
            pending_keep = float(keep)
        # Activation, Pooling, Affine wrappers without params, data layers: no weights.
    return convs, linears, problems


def _conv_state(convs: list[dict], problems: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """torch-layout conv1..conv5 weights and conv1's padding (neon's AlexNet pads 3)."""
    state: dict[str, np.ndarray] = {}
    conv1_padding = 3
    in_channels = 3
    for k, (entry, layer) in enumerate(zip(convs, CONV_LAYERS, strict=True)):
        side, stride, pad, out_ch = layer.kernel, layer.stride, layer.padding, layer.features
        prefix = layer.torch_name
        w, b, cfg = entry["W"], entry["b"], entry["config"]
        expected = (in_channels * side * side, out_ch)
        if w.shape != expected:
            problems.append(
                f"{entry['name']} (conv{k + 1}): W shape {w.shape}, expected {expected}"
            )
        if b is None or b.size != out_ch:
            problems.append(f"{entry['name']} (conv{k + 1}): needs a bias of {out_ch} values")
        file_pad, file_stride = _pad(cfg.get("padding")), _stride(cfg.get("strides"))
        if k == 0 and file_pad is not None:
            conv1_padding = file_pad
        elif pad is not None and file_pad is not None and file_pad != pad:
            problems.append(f"{entry['name']} (conv{k + 1}): padding {file_pad}, AlexNet has {pad}")
        if file_stride is not None and file_stride != stride:
            problems.append(
                f"{entry['name']} (conv{k + 1}): stride {file_stride}, AlexNet has {stride}"
            )
        if not problems:
            # (C*R*S, K) in C order -> (C, R, S, K) -> torch OIHW (K, C, R, S)
            state[f"{prefix}.weight"] = w.reshape(in_channels, side, side, out_ch).transpose(
                3, 0, 1, 2
            )
            state[f"{prefix}.bias"] = b.reshape(out_ch)
        in_channels = out_ch
    return state, conv1_padding


def _linear_state(
    linears: list[dict], kind: str, problems: list[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """torch-layout fc6, fc7 and fc8 (or the transfer head), weights after a neon dropout
    multiplied by its keep probability; and the names of the layers so scaled."""
    state: dict[str, np.ndarray] = {}
    n_in = 256 * 6 * 6
    prefixes = TORCH_LINEAR[:2] + (TORCH_LINEAR[2:] if kind == "alexnet" else HEAD_LINEAR)
    scaled = []
    for k, (entry, prefix) in enumerate(zip(linears, prefixes, strict=False)):
        w, b = entry["W"], entry["b"]
        if w.ndim != 2 or w.shape[1] != n_in:
            problems.append(f"{entry['name']} ({prefix}): W shape {w.shape}, expected (n, {n_in})")
            continue
        if b is None or b.size != w.shape[0]:
            problems.append(f"{entry['name']} ({prefix}): needs a bias of {w.shape[0]} values")
            continue
        if k < 2 and w.shape[0] != 4096:
            problems.append(f"{entry['name']} ({prefix}): {w.shape[0]} outputs, fc6/fc7 have 4096")
        weight = w.astype(np.float32)
        if entry["keep"] is not None:
            weight = weight * np.float32(entry["keep"])
            scaled.append(entry["name"])
        state[f"{prefix}.weight"] = weight
        state[f"{prefix}.bias"] = b.reshape(-1).astype(np.float32)
        n_in = w.shape[0]
    return state, scaled


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("latin1")
    return value if isinstance(value, (str, int, float, type(None))) else str(value)
