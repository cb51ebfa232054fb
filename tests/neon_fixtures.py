"""Write neon model files the way neon 1.x under Python 2 / NumPy 1 did, for the import tests.

Python 3's pickler cannot produce a Python 2 pickle (it writes bytes through
``_codecs.encode`` and strings as unicode), so this emits protocol-2 opcodes by hand: Python 2
``str`` as SHORT_BINSTRING/BINSTRING, and arrays exactly as NumPy 1 reduced them,
``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` then BUILD with
``(1, shape, dtype, is_fortran, raw bytes)``, dtypes as ``numpy.dtype('f4', 0, 1)`` with
their 8-tuple state. The layer list follows docs/reference.md (separate Convolution / Bias / Activation /
Pooling / Linear / Dropout entries, conv ``W`` (C*R*S, K), linear ``W`` (nout, nin), bias
``(n, 1)``, momentum ``states``), built from a torch model with conv1 padding 3.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROTO, STOP, MARK = b"\x80", b".", b"("
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"}", b"]", b")"
SETITEMS, APPENDS, TUPLE, BUILD, REDUCE = b"u", b"e", b"t", b"b", b"R"
GLOBAL, NONE, NEWTRUE, NEWFALSE = b"c", b"N", b"\x88", b"\x89"
BININT, BINFLOAT = b"J", b"G"
SHORT_BINSTRING, BINSTRING = b"U", b"T"


class Py2Str(str):
    """Marks text to be written as a Python 2 ``str`` (the default for every str here)."""


def _global(module: str, name: str) -> bytes:
    return GLOBAL + f"{module}\n{name}\n".encode()


def _py2_str(data: bytes) -> bytes:
    if len(data) < 256:
        return SHORT_BINSTRING + bytes([len(data)]) + data
    return BINSTRING + struct.pack("<i", len(data)) + data


def _dtype(dtype: np.dtype) -> bytes:
    order = "|" if dtype.itemsize == 1 else "<"
    code = dtype.str[1:]
    return (
        _global("numpy", "dtype")
        + MARK
        + _py2_str(code.encode())
        + _emit(0)
        + _emit(1)
        + TUPLE
        + REDUCE
        + MARK
        + _emit(3)
        + _py2_str(order.encode())
        + NONE
        + NONE
        + NONE
        + _emit(-1)
        + _emit(-1)
        + _emit(0)
        + TUPLE
        + BUILD
    )


def _array(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    return (
        _global("numpy.core.multiarray", "_reconstruct")
        + MARK
        + _global("numpy", "ndarray")
        + MARK
        + _emit(0)
        + TUPLE
        + _py2_str(b"b")
        + TUPLE
        + REDUCE
        + MARK
        + _emit(1)
        + _emit(tuple(a.shape))
        + _dtype(a.dtype)
        + NEWFALSE
        + _py2_str(a.astype(a.dtype.newbyteorder("<")).tobytes())
        + TUPLE
        + BUILD
    )


def _emit(obj: Any) -> bytes:
    if obj is None:
        return NONE
    if obj is True:
        return NEWTRUE
    if obj is False:
        return NEWFALSE
    if isinstance(obj, int):
        return BININT + struct.pack("<i", obj)
    if isinstance(obj, float):
        return BINFLOAT + struct.pack(">d", obj)
    if isinstance(obj, str):
        return _py2_str(obj.encode("latin1"))
    if isinstance(obj, np.ndarray):
        return _array(obj)
    if isinstance(obj, tuple):
        return EMPTY_TUPLE if not obj else MARK + b"".join(map(_emit, obj)) + TUPLE
    if isinstance(obj, list):
        return EMPTY_LIST + (MARK + b"".join(map(_emit, obj)) + APPENDS if obj else b"")
    if isinstance(obj, dict):
        items = b"".join(_emit(k) + _emit(v) for k, v in obj.items())
        return EMPTY_DICT + (MARK + items + SETITEMS if obj else b"")
    raise TypeError(f"cannot emit {type(obj).__name__}")


def py2_pickle(obj: Any) -> bytes:
    return PROTO + b"\x02" + _emit(obj) + STOP


def evil_pickle(command: str, module: str = "posix", name: str = "system") -> bytes:
    """A pickle that calls ``module.name(command)`` when loaded by an unrestricted unpickler."""
    call = _global(module, name) + MARK + _emit(command) + TUPLE + REDUCE
    return PROTO + b"\x02" + EMPTY_DICT + MARK + _emit("model") + call + SETITEMS + STOP


# ----------------------------------------------------------------------------- neon layout

LAYER = "neon.layers.layer."


def _layer(
    kind: str,
    name: str,
    config: dict | None = None,
    w: np.ndarray | None = None,
    momentum: bool = False,
) -> dict:
    entry: dict[str, Any] = {"type": LAYER + kind, "config": {"name": name, **(config or {})}}
    if w is not None:
        entry["params"] = {"W": w}
        # Momentum buffers, ignored on import: full size as in real files, or a token array
        # (the tests that do not look at them stay fast).
        entry["states"] = [np.full_like(w, 0.01) if momentum else np.zeros(1, np.float32)]
    return entry


def neon_layers(
    convs: list[tuple[np.ndarray, np.ndarray]],
    linears: list[tuple[np.ndarray, np.ndarray]],
    keep: float = 0.5,
    momentum: bool = False,
) -> list[dict]:
    """Torch-layout weights -> neon's flat layer list (fc layers after the first are fed by a
    non-inverted Dropout, so their stored W is the torch weight divided by keep)."""
    layers: list[dict] = []
    pads = (3, 2, 1, 1, 1)
    strides = (4, 1, 1, 1, 1)
    for k, (w, b) in enumerate(convs):
        kk, c, r, s = w.shape
        neon_w = w.transpose(1, 2, 3, 0).reshape(c * r * s, kk)
        padding: Any = {"pad_h": pads[k], "pad_w": pads[k], "pad_d": 0} if k == 0 else pads[k]
        layers.append(
            _layer(
                "Convolution",
                f"Convolution_{k}",
                {"fshape": (r, s, kk), "strides": strides[k], "padding": padding},
                neon_w,
                momentum,
            )
        )
        layers.append(_layer("Bias", f"Convolution_{k}_bias", None, b.reshape(-1, 1), momentum))
        layers.append(_layer("Activation", f"Convolution_{k}_Rectlin", {"transform": "Rectlin"}))
        if k in (0, 1, 4):
            layers.append(_layer("Pooling", f"Pooling_{k}", {"fshape": 3, "strides": 2}))
    for k, (w, b) in enumerate(linears):
        if k > 0:
            layers.append(_layer("Dropout", f"Dropout_{k - 1}", {"keep": keep}))
        stored = w / keep if k else w
        layers.append(_layer("Linear", f"Linear_{k}", {"nout": w.shape[0]}, stored, momentum))
        layers.append(_layer("Bias", f"Linear_{k}_bias", None, b.reshape(-1, 1), momentum))
        last = k == len(linears) - 1
        act = "Softmax" if last else "Rectlin"
        layers.append(_layer("Activation", f"Linear_{k}_{act}", {"transform": act}))
    return layers


def neon_file(layers: list[dict], *, epoch_index: int = 9) -> dict:
    return {
        "neon_version": "1.4.0",
        "backend": {"type": "neon.backends.nervanagpu.NervanaGPU", "rng_seed": None},
        "epoch_index": epoch_index,
        "model": {"type": "neon.models.model.Model", "config": {"layers": layers}},
        "callback_data": {},
    }


def torch_weights(model: torch.nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (m.weight.detach().numpy().astype(np.float32), m.bias.detach().numpy().astype(np.float32))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]


def write_neon(
    path: Path,
    model_weights: list,
    *,
    compress: bool = False,
    momentum: bool = False,
    **kw: Any,
) -> Path:
    """``model_weights``: torch-layout (W, b) pairs, 5 convs then 3 or 4 linears."""
    layers = neon_layers(model_weights[:5], model_weights[5:], momentum=momentum)
    data = py2_pickle(neon_file(layers, **kw))
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def huge_array_pickle() -> bytes:
    """A pickle whose array asks ``_reconstruct`` for a 10^12-element shape (a MemoryError,
    or swap, if allocated before looking)."""
    body = (
        _global("numpy.core.multiarray", "_reconstruct")
        + MARK
        + _global("numpy", "ndarray")
        + _emit((1_000_000, 1_000_000))
        + _py2_str(b"b")
        + TUPLE
        + REDUCE
    )
    return PROTO + b"\x02" + EMPTY_DICT + MARK + _emit("model") + body + SETITEMS + STOP


def deep_pickle(depth: int) -> bytes:
    """Lists nested ``depth`` levels deep (deeper than Python's recursion limit allows a
    recursive walk), built with MARK ... LIST opcodes so no pickler recursion is needed."""
    return PROTO + b"\x02" + MARK * depth + EMPTY_LIST + b"l" * depth + STOP
