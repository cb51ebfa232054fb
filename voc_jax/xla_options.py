"""The XLA compile options voc-jax applies to its own jitted functions; the one module that
knows about them.

On the CPU backend, XLA routes individual convolutions through YNNPACK by default
(``xla_cpu_experimental_ynn_fusion_type`` defaults to INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION
and REDUCE in this jaxlib). YNNPACK's convolution gradients are the slow part of an AlexNet
step on CPU (conv2's weight gradient: 2.2 s against Eigen's 0.19 s) and the less accurate one
(conv weight gradients off by ~4e-3 relative to float64 at 224 px, against ~1e-6): so our jitted
functions keep YNNPACK for dots and reductions (dense layers' input gradients halve with it)
and leave convolutions to XLA's own emitter. The option is passed per function
(``jax.jit(..., compiler_options=...)``), which in this jaxlib takes full enum names and
replaces the default list; nothing process-wide is changed.

Programs that run once, the parameter initialisers (``jit_once``), are compiled at XLA's
backend optimisation level 1 on the CPU: LLVM's optimisation of their many threefry kernels
is most of a network's start-up (a sixteenth-wide AlexNet's init compiles in 1.2 s instead of
4.7, ResNet-26's in 3.3 instead of 7.4), buys nothing for a program run once, and level 1 gives
bitwise the same values (tests/test_xla_options.py; level 0 does not: 6e-8 apart).

None of it is applied on GPU/TPU, nor over a user's own ``XLA_FLAGS`` setting of the same
option, and ``VOC_JAX_XLA_DEFAULTS=xla`` turns it off (compile exactly as XLA would). A jaxlib
that does not know the option compiles without it, saying so once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax

log = logging.getLogger(__name__)

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_YNN_TYPES = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE")
LEVEL_OPTION = "xla_backend_optimization_level"
ONCE_LEVEL = "1"  # the level of programs run once (jit_once)
SWITCH = "VOC_JAX_XLA_DEFAULTS"  # "ours" (default) or "xla"


def enabled() -> bool:
    return os.environ.get(SWITCH, "ours").strip().lower() != "xla"


def user_sets_it(option: str = YNN_OPTION) -> bool:
    return option in os.environ.get("XLA_FLAGS", "")


@functools.cache
def _supported() -> bool:
    options = {YNN_OPTION: ",".join(CPU_YNN_TYPES)}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
        return True
    except Exception as e:  # an older or newer jaxlib without the option or its values
        log.warning(
            "this jaxlib does not accept %s=%s (%s); compiling with XLA's defaults",
            YNN_OPTION,
            options[YNN_OPTION],
            str(e).splitlines()[0][:200],
        )
        return False


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The options for a jitted voc-jax function on ``backend`` (default: JAX's)."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or not enabled() or user_sets_it() or not _supported():
        return {}
    return {YNN_OPTION: ",".join(CPU_YNN_TYPES)}


def jit(fun: Callable, **kwargs: Any) -> Any:
    """``jax.jit`` with voc-jax's compile options for the current backend."""
    options = compiler_options()
    return jax.jit(fun, compiler_options=options or None, **kwargs)


def once_options(backend: str | None = None) -> dict[str, str]:
    """The options for a voc-jax program that runs once (``jit_once``) on ``backend``."""
    backend = backend or jax.default_backend()
    options = compiler_options(backend)
    if backend == "cpu" and enabled() and not user_sets_it(LEVEL_OPTION):
        options = options | {LEVEL_OPTION: ONCE_LEVEL}
    return options


def jit_once(fun: Callable) -> Any:
    """``jax.jit`` for a program that runs once, such as a network's initialisation: compiled
    for a short compile rather than a fast run, with the same results. The method of an equal
    module (flax modules compare by their fields) gets the same jitted function back, so a
    process that builds one network twice traces and compiles its init once."""
    options = tuple(sorted(once_options().items()))
    owner, method = getattr(fun, "__self__", None), getattr(fun, "__func__", None)
    if method is not None:
        try:
            return _jitted_method(method, owner, options)
        except TypeError:  # an unhashable owner: no reuse
            pass
    return jax.jit(fun, compiler_options=dict(options) or None)


@functools.lru_cache(maxsize=32)
def _jitted_method(method: Callable, owner: Any, options: tuple) -> Any:
    return jax.jit(method.__get__(owner), compiler_options=dict(options) or None)


@contextlib.contextmanager
def defaults(which: str) -> Iterator[None]:
    """Jit with ``which`` ("ours" or "xla") inside the block, whatever the environment says:
    for side-by-side measurements. The switch is read when a function is jitted."""
    previous = os.environ.get(SWITCH)
    os.environ[SWITCH] = which
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SWITCH)
        else:
            os.environ[SWITCH] = previous


def describe() -> dict[str, Any]:
    """What is in effect, for benchmark reports."""
    return {
        "backend": jax.default_backend(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "voc_jax_compiler_options": compiler_options(),
        "switch": f"{SWITCH}={os.environ.get(SWITCH, 'ours')}",
    }
