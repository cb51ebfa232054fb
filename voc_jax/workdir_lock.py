"""One run at a time in a workdir: an exclusive ``flock`` on ``WORKDIR/.lock``.

Two trainings (or a training and an evaluation) writing the same checkpoints, ``config.json``
and ``eval/`` would silently mix their outputs. The lock is held for the life of the run; the
file records who holds it (pid, host, command) so that a second run fails at once naming
them. The kernel releases a ``flock`` when its process dies, however it dies, so a lock left
by a killed run is simply taken over (with a warning naming the dead holder). In a
multi-process job only process 0 takes it: the processes of one job must not lock each other
out.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import TracebackType

from voc_jax.errors import WorkdirBusy

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def busy_holder(workdir: str | Path) -> dict | None:
    """Who holds ``workdir``'s lock right now (its record), or None when nobody does: a
    probe that takes and at once releases the lock, changing nothing."""
    path = Path(workdir) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path) or {"pid": "?"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class WorkdirLock:
    """``with WorkdirLock(workdir, "train"):`` ... ; raises WorkdirBusy if another run holds it."""

    def __init__(
        self,
        workdir: str | Path,
        purpose: str,
        *,
        enabled: bool = True,
        busy_hint: str = "wait for it to finish or use another --workdir",
    ):
        self.workdir = Path(workdir)
        self.busy_hint = busy_hint
        self.path = self.workdir / LOCK_FILE
        self.purpose = purpose
        self.enabled = enabled
        self._fd: int | None = None
        self._created_workdir = False

    def acquire(self) -> None:
        if not self.enabled:
            return
        self._created_workdir = not self.workdir.exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        stale = self.path.exists()  # released locks remove their file
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _holder(self.path)
                raise WorkdirBusy(
                    f"{self.workdir} is in use by process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} ({holder.get('purpose', 'a run')} since "
                    f"{holder.get('since', '?')}); {self.busy_hint}"
                ) from None
            # The holder we waited on may have removed the file as it released it: then
            # this lock is on a deleted inode and worthless; take the new file instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _holder(self.path)
        ours = (os.getpid(), socket.gethostname())
        if stale and (previous.get("pid"), previous.get("host")) != ours:
            # A lock file left behind: its holder died without releasing it (a record cut
            # short by the kill says nothing about who it was).
            log.warning(
                "taking over the stale lock of %s: process %s on %s is no longer running",
                self.workdir,
                previous.get("pid", "(unknown)"),
                previous.get("host", "(unknown)"),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (released cleanly: nobody to warn about next time) and the
        workdir too when this run created it and left nothing else in it."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            if self._created_workdir and not any(self.workdir.iterdir()):
                self.workdir.rmdir()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
