"""The flag-parsing commands' flags and their installed entry points, in a module that imports
no JAX: ``voc-jax-train --help`` (``-h``, ``--helpfull``) prints the usage and options at
once; any other call imports the command's module and runs it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

from absl import flags
from ml_collections import config_flags

from voc_jax import cli

HELP_FLAGS = ("-h", "--help", "--helpfull", "-help")


def define_train_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("workdir", None, "where checkpoints, logs and results go", flag_values=fv)
    config_flags.DEFINE_config_file(
        "config",
        None,
        "a config file in voc_jax/configs/ (FILE or FILE:variant, e.g. voc07_lite0.py:frozen); "
        "override any field with --config.FIELD=VALUE",
        flag_values=fv,
        sys_argv=argv,
        lock_config=True,
    )


def define_evaluate_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    cli.define_workdir_flags(fv, "training workdir (its config.json and checkpoints)")
    flags.DEFINE_string(
        "split", None, "split to score (default: config.data.test_split)", flag_values=fv
    )
    config_flags.DEFINE_config_file(
        "config", None, "config file (default: WORKDIR/config.json)", flag_values=fv, sys_argv=argv
    )


def define_predict_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    cli.define_workdir_flags(fv, "training workdir (config.json, checkpoints)")
    flags.DEFINE_integer(
        "top",
        3,
        "classes to show score maps for (1..20)",
        lower_bound=1,
        upper_bound=20,
        flag_values=fv,
    )
    flags.DEFINE_string("out", None, "where PNGs go (default WORKDIR/predict)", flag_values=fv)
    flags.DEFINE_integer(
        "max_pixels", None, "the most pixels an image may have (default: the training config's "
        "data.max_image_pixels)", lower_bound=1, flag_values=fv,
    )  # fmt: skip


USAGE = {
    "voc_jax.train": (
        "voc-jax-train --config FILE --workdir DIR [--config.FIELD=VALUE ...]",
        define_train_flags,
    ),
    "voc_jax.evaluate": (
        "voc-jax-evaluate --workdir DIR [--checkpoint STEP] [--split SPLIT]",
        define_evaluate_flags,
    ),
    "voc_jax.predict": (
        "voc-jax-predict --workdir DIR [--top N] [--out DIR] IMAGE [IMAGE ...]",
        define_predict_flags,
    ),
}


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


def module_docstring(module: str) -> str:
    """A module's docstring read from its source, without importing it (nor JAX)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read())) or ""


def usage(module: str) -> str:
    """The usage line, the module's docstring and every flag with its help and default."""
    line, define = USAGE[module]
    fv = flags.FlagValues()
    define(fv, [module])
    options = []
    for name, flag in sorted(fv._flags().items()):
        if name != flag.name:  # short aliases are listed with their flag
            continue
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        options.append(f"  --{name}: {flag.help}{default}")
    options.append("  -h, --help: this message")
    return f"usage: {line}\n\n{module_docstring(module)}\n\noptions:\n" + "\n".join(options)


def print_usage(module: str) -> int:
    print(usage(module))
    return 0


def _entry(module: str) -> Callable[[Sequence[str] | None], int]:
    def main(argv: Sequence[str] | None = None) -> int:
        argv = list(sys.argv if argv is None else argv)
        if wants_help(argv[1:]):
            return print_usage(module)
        return importlib.import_module(module).main(argv)

    main.__name__ = f"{module.rsplit('.', 1)[1]}_main"
    return main


train = _entry("voc_jax.train")
evaluate = _entry("voc_jax.evaluate")
predict = _entry("voc_jax.predict")
