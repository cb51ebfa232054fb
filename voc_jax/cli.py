"""What every command shares: flag parsing, config overrides checked by name, logging, and
one line ``error: ...`` with exit status 2 for every user error (never a traceback).

Each command defines its flags on a fresh ``absl.flags.FlagValues`` (not the global one), so
``main(argv)`` can be called any number of times in one process: by the installed entry
points, by ``python -m``, and by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import inspect
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ml_collections
from absl import flags

from voc_jax import config_compat, teardown_noise
from voc_jax.errors import (
    ConfigError,
    DiskFull,
    UserError,
    disk_full_message,
    first_line,
    is_disk_full,
)

log = logging.getLogger(__name__)
HELD = teardown_noise.HELD  # orbax's error records, held until a command ends

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def report(message: str) -> int:
    """Print a user error as one line (details, if any, indented below) and return 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Our log format on stderr, once, whatever configured logging before (an import that
    logged implicitly installs a bare handler: it is replaced, others are kept)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(teardown_noise.drop_disk_full_noise)
        handler.addFilter(HELD)
        root.addHandler(handler)
    root.setLevel(level)
    # orbax and absl are chatty at INFO; their warnings still show.
    for name in ("absl", "orbax", "jax"):  # jax's backend probing is noise at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    warnings.showwarning = _warning_as_log_line
    if not getattr(sys.unraisablehook, "_voc_jax", False):
        sys.unraisablehook = teardown_noise.quiet_closed_loop_hook(sys.unraisablehook)


def _warning_as_log_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one log line (not the source line under it)."""
    logging.getLogger("voc_jax").warning("%s", message)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C for the whole command (one "interrupted" line, exit 130, the
    workdir lock released), not a silent death with -15; training's loop installs its own
    handler, which saves a checkpoint first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_guarded(body: Callable[[], int]) -> int:
    """Run a command body; user errors and a full disk become one ``error:`` line, exit 2;
    Ctrl-C and SIGTERM one ``interrupted`` line, exit 130."""
    HELD.start()
    disk_full = False
    try:
        with sigterm_interrupts():
            return body()
    except UserError as e:
        disk_full = isinstance(e, DiskFull)
        return report(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if is_disk_full(e):
            disk_full = True
            return report(disk_full_message(e))
        if isinstance(e, OSError) and e.filename:  # permissions, a file where a directory goes
            return report(f"{e.filename}: {e.strerror or first_line(e)}")
        raise
    finally:
        HELD.end(disk_full=disk_full)


def config_file_in(argv: Sequence[str], name: str = "config") -> str | None:
    """The value of ``--config FILE`` / ``--config=FILE`` in ``argv``, if any."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, with a clear error when it cannot be loaded."""
    file_part, _, argument = path.partition(":")
    file = Path(file_part)
    if not file.is_file():
        raise ConfigError(f"--config {file}: no such config file (see voc_jax/configs/)")
    spec = importlib.util.spec_from_file_location(f"_voc_jax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if argument and not inspect.signature(module.get_config).parameters:
            raise ConfigError(
                f"--config {path}: {file.name} takes no argument (no ':{argument}' variant); "
                f"use --config {file}"
            )
        return module.get_config(argument) if argument else module.get_config()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"--config {file}: cannot be loaded ({first_line(e)})") from e


def config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(config_keys(value, path + "."))
    return keys


def check_override_keys(
    config: ml_collections.ConfigDict, argv: Sequence[str], name: str = "config"
) -> None:
    """Every ``--config.a.b=...`` must name an existing field (the config is locked): refuse
    an unknown one, naming the closest valid key."""
    keys = config_keys(config)
    for arg in argv:
        if not arg.startswith(f"--{name}."):
            continue
        key = arg[len(name) + 3 :].split("=", 1)[0]
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            hint = f"; did you mean --{name}.{close[0]}?" if close else ""
            raise ConfigError(f"--{name}.{key}: no such config field{hint}")


def parse(
    argv: Sequence[str],
    define: Callable[[flags.FlagValues, list[str]], None],
    *,
    program: str,
) -> tuple[flags.FlagValues, list[str]]:
    """Define the command's flags on a fresh FlagValues and parse ``argv`` (program name
    first). Unknown flags, bad values and unknown config keys raise ConfigError."""
    argv = [program, *config_compat.rename_overrides(argv[1:])] if argv else [program]
    fv = flags.FlagValues()
    define(fv, argv)  # config_flags reads the overrides from argv itself
    config_path = config_file_in(argv[1:])
    if config_path is not None:
        check_override_keys(load_config_file(config_path), argv[1:])
    try:
        rest = fv(argv)
    except flags.Error as e:
        raise ConfigError(str(e).splitlines()[0]) from e
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"bad flag value: {first_line(e)}") from e
    if not flags.FLAGS.is_parsed():  # grain's worker processes read the global absl flags
        flags.FLAGS.mark_as_parsed()
    return fv, rest


def command(
    argv: Sequence[str] | None,
    define: Callable[[flags.FlagValues, list[str]], None],
    body: Callable[[flags.FlagValues, list[str]], int],
    *,
    program: str,
) -> int:
    """What every command's ``main`` does: our logging, the flags parsed on a fresh
    FlagValues, then ``body(flags, positional arguments)`` with user errors as one line."""
    argv = list(sys.argv if argv is None else argv)
    from voc_jax import commands  # (it imports this module)

    if program in commands.USAGE and commands.wants_help(argv[1:]):
        return commands.print_usage(program)
    setup_logging()

    def run() -> int:
        fv, rest = parse(argv, define, program=program)
        return body(fv, rest[1:])

    return run_guarded(run)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands that take paths and no config file (data.check,
    data.download, the converter): absl flags have no positional arguments, no ``choices``
    on strings with help, and no ``--long-name`` with dashes, which those commands document.
    A bad argument is a user error like any other: one ``error:`` line, exit 2."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def argparse_command(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
) -> int:
    """``command`` for an argparse parser (``--help`` still prints and exits 0)."""
    setup_logging()

    def run() -> int:
        return body(parser.parse_args(None if argv is None else list(argv)))

    return run_guarded(run)


def define_workdir_flags(fv: flags.FlagValues, workdir_help: str) -> None:
    """--workdir and --checkpoint, as the commands that read a training workdir take them."""
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv)
    flags.DEFINE_integer(
        "checkpoint", None, "checkpoint step (default: the latest)", lower_bound=0, flag_values=fv
    )
