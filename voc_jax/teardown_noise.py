"""What orbax and tensorstore print while a failed command tears down, filtered: after a
failure that voc-jax reports itself in one ``error:`` line (a full disk, above all), their
background threads log one traceback each, in forms that vary from run to run, and
tensorstore reports "Event loop is closed" as unraisable. These filters drop exactly that
noise (and hold orbax's error records until the command ends, to print them only when the
command did not end with a full disk); every other record and error still shows. voc_jax.cli
installs them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from voc_jax.errors import is_disk_full


def quiet_closed_loop_hook(original: Callable) -> Callable:
    """tensorstore completes a failed background write's future from its own thread and,
    when orbax's asyncio loop is already closed, reports the error as "unraisable": dozens of
    "Event loop is closed" tracebacks after an error voc-jax reports in one line (a full
    disk). Those, and only those, are dropped; everything else goes to the original hook."""

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        original(unraisable)

    hook._voc_jax = True
    return hook


# What a thread pool says when work reaches it after it was shut down: a consequence of an
# earlier failure (orbax's background threads racing the teardown after a full disk), never
# the cause, which voc-jax reports itself.
_AFTER_SHUTDOWN = "cannot schedule new futures after"


def drop_disk_full_noise(record: logging.LogRecord) -> bool:
    """Drop another library's error records about a full disk (orbax logs one traceback per
    background thread that failed to write) and about work refused by a pool already shut
    down in the teardown that follows: the command ends with one ``error:`` line that says
    it, naming the directory and the last good checkpoint. Other errors still show."""
    if record.levelno < logging.ERROR or record.name.startswith("voc_jax"):
        return True
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and (is_disk_full(error) or _after_shutdown(error)):
        return False
    message = record.getMessage()
    return not (is_disk_full(Exception(message)) or _AFTER_SHUTDOWN in message)


def _after_shutdown(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and str(error).startswith(_AFTER_SHUTDOWN)


class _HeldLibraryErrors(logging.Filter):
    """Holds orbax's error records until the command ends. orbax's background threads log
    every failure of an asynchronous save (a full disk: one traceback per thread, in forms
    that vary from run to run: ENOSPC, missing array metadata, a pool already shut down), and
    the same failure reaches voc-jax as an exception at the next save or wait. When the
    command ends with a full disk (one ``error:`` line naming the last good checkpoint), the
    held records, and any that follow, are dropped; otherwise they are printed then."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.active = False  # inside a command
        self.dropping = False  # after a command that ended with a full disk

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not _from_orbax(record):
            return True
        if self.active:
            self.held.append(record)
            return False
        return not self.dropping

    def start(self) -> None:
        self.held, self.active, self.dropping = [], True, False

    def end(self, *, disk_full: bool) -> None:
        held, self.held, self.active = self.held, [], False
        if disk_full:
            self.dropping = True
            return
        for record in held:
            logging.getLogger(record.name).handle(record)


def _from_orbax(record: logging.LogRecord) -> bool:
    return record.name.startswith("orbax") or f"{os.sep}orbax{os.sep}" in (record.pathname or "")


HELD = _HeldLibraryErrors()
