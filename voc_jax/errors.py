"""The user-error hierarchy: what a person can fix, as opposed to a bug in voc-jax.

Every entry point turns a ``UserError`` into one line ``error: <message>`` on stderr and exit
status 2 (voc_jax.cli); anything else is a bug and keeps its traceback. Messages name the
file, the config key or the step, and say what to do. One subclass per area, so that callers
and tests can tell them apart.
"""

from __future__ import annotations

import errno
import os
import traceback


class UserError(Exception):
    """Base of every error a user can fix by changing an input, a flag or the machine."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (name, range, divisibility, unknown key)."""


class DataError(UserError, ValueError):
    """A dataset, annotation or image that cannot be used as it is."""


class WeightsError(UserError, ValueError):
    """A converted-weights directory or parameter tree that cannot be used as it is."""


class CheckpointError(UserError):
    """No usable checkpoint where one is needed (missing step, nothing readable)."""


class WorkdirBusy(UserError):
    """Another run holds the workdir's lock."""


class DiskFull(UserError):
    """No space left where voc-jax had to write."""


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` or anything in its cause/context chain says the disk is full
    (orbax and tensorstore wrap ENOSPC in their own exception types)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(error: BaseException) -> str:
    """The one line for a full disk: the file (from any OSError in the chain) and the step of
    voc-jax that was writing (the innermost voc_jax function in the traceback)."""
    where, step, seen = None, None, set()
    chain: BaseException | None = error
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if where is None and isinstance(chain, OSError) and chain.filename:
            where = chain.filename
        frames = traceback.extract_tb(chain.__traceback__)
        ours = [f for f in frames if f"{os.sep}voc_jax{os.sep}" in f.filename]
        if step is None and ours:
            f = ours[-1]
            module = f.filename.rsplit(f"{os.sep}voc_jax{os.sep}", 1)[1][:-3].replace(os.sep, ".")
            step = f"voc_jax.{module}.{f.name}"
        chain = chain.__cause__ or chain.__context__
    text = f"no space left on {where or 'the disk'}"
    if step:
        text += f" while in {step}"
    return f"{text} ({first_line(error)}); free some space (or write elsewhere) and run again"


def first_line(error: BaseException, limit: int = 300) -> str:
    """A foreign exception as one short line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:limit]}" if text else type(error).__name__
