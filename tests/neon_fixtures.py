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


def _py2_str(data: bytes | memoryview, out: list) -> None:
    if len(data) < 256:
        out += [SHORT_BINSTRING + bytes([len(data)]), data]
    else:
        out += [BINSTRING + struct.pack("<i", len(data)), data]


def _dtype(dtype: np.dtype, out: list) -> None:
    order = "|" if dtype.itemsize == 1 else "<"
    out += [_global("numpy", "dtype"), MARK]
    _py2_str(dtype.str[1:].encode(), out)
    _emit(0, out)
    _emit(1, out)
    out += [TUPLE, REDUCE, MARK]
    _emit(3, out)
    _py2_str(order.encode(), out)
    out += [NONE, NONE, NONE]
    for value in (-1, -1, 0):
        _emit(value, out)
    out += [TUPLE, BUILD]


def _array(a: np.ndarray, out: list) -> None:
    # The array's own buffer (little-endian, C order) goes in as a view: a 490 MB file is
    # written without copying its arrays again at every nesting level.
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    out += [_global("numpy.core.multiarray", "_reconstruct"), MARK, _global("numpy", "ndarray")]
    out += [MARK]
    _emit(0, out)
    out += [TUPLE]
    _py2_str(b"b", out)
    out += [TUPLE, REDUCE, MARK]
    _emit(1, out)
    _emit(tuple(a.shape), out)
    _dtype(a.dtype, out)
    out += [NEWFALSE]
    _py2_str(memoryview(a).cast("B"), out)
    out += [TUPLE, BUILD]


def _emit(obj: Any, out: list) -> None:
    if obj is None:
        out.append(NONE)
    elif obj is True:
        out.append(NEWTRUE)
    elif obj is False:
        out.append(NEWFALSE)
    elif isinstance(obj, int):
        out.append(BININT + struct.pack("<i", obj))
    elif isinstance(obj, float):
        out.append(BINFLOAT + struct.pack(">d", obj))
    elif isinstance(obj, str):
        _py2_str(obj.encode("latin1"), out)
    elif isinstance(obj, np.ndarray):
        _array(obj, out)
    elif isinstance(obj, tuple) and not obj:
        out.append(EMPTY_TUPLE)
    elif isinstance(obj, tuple | list):
        if isinstance(obj, list):
            out.append(EMPTY_LIST)
        if obj:
            out.append(MARK)
            for item in obj:
                _emit(item, out)
            out.append(TUPLE if isinstance(obj, tuple) else APPENDS)
    elif isinstance(obj, dict):
        out.append(EMPTY_DICT)
        if obj:
            out.append(MARK)
            for key, value in obj.items():
                _emit(key, out)
                _emit(value, out)
            out.append(SETITEMS)
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


def py2_chunks(obj: Any) -> list:
    """The pickle of ``obj`` as a list of byte strings and array views, in order."""
    out: list = [PROTO + b"\x02"]
    _emit(obj, out)
    out.append(STOP)
    return out


def py2_pickle(obj: Any) -> bytes:
    return b"".join(py2_chunks(obj))


def evil_pickle(command: str, module: str = "posix", name: str = "system") -> bytes:
    """A pickle that calls ``module.name(command)`` when loaded by an unrestricted unpickler."""
    out = [PROTO + b"\x02", EMPTY_DICT, MARK]
    _emit("model", out)
    out += [_global(module, name), MARK]
    _emit(command, out)
    out += [TUPLE, REDUCE, SETITEMS, STOP]
    return b"".join(out)


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
    chunks = py2_chunks(neon_file(layers, **kw))
    with gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb") as f:
        f.writelines(chunks)
    return path


def huge_array_pickle() -> bytes:
    """A pickle whose array asks ``_reconstruct`` for a 10^12-element shape (a MemoryError,
    or swap, if allocated before looking)."""
    out = [PROTO + b"\x02", EMPTY_DICT, MARK]
    _emit("model", out)
    out += [_global("numpy.core.multiarray", "_reconstruct"), MARK, _global("numpy", "ndarray")]
    _emit((1_000_000, 1_000_000), out)
    _py2_str(b"b", out)
    out += [TUPLE, REDUCE, SETITEMS, STOP]
    return b"".join(out)


def deep_pickle(depth: int) -> bytes:
    """Lists nested ``depth`` levels deep (deeper than Python's recursion limit allows a
    recursive walk), built with MARK ... LIST opcodes so no pickler recursion is needed."""
    return PROTO + b"\x02" + MARK * depth + EMPTY_LIST + b"l" * depth + STOP
