"""The command-line preamble's log handling: another library's teardown noise after a full
disk is dropped; every other error still shows."""

from __future__ import annotations

import errno
import logging

import pytest

from voc_jax import cli


def _log_error(logger: str, error: BaseException) -> None:
    try:
        raise error
    except BaseException:
        logging.getLogger(logger).exception("_SignalingThread.run() raised an exception: %s", error)


@pytest.fixture
def stderr_log(capsys):
    cli.setup_logging()
    yield lambda: capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints"),
        RuntimeError("cannot schedule new futures after shutdown"),
        RuntimeError("cannot schedule new futures after interpreter shutdown"),
    ],
    ids=["disk-full", "pool-shut-down", "interpreter-shut-down"],
)
def test_a_libraries_teardown_noise_is_dropped(stderr_log, error):
    _log_error("absl", error)
    assert stderr_log() == ""


def test_other_library_errors_still_show(stderr_log):
    _log_error("absl", RuntimeError("tensorstore: permission denied"))
    err = stderr_log()
    assert "permission denied" in err and "Traceback" in err


def test_voc_jax_errors_are_never_filtered(stderr_log):
    _log_error("voc_jax.train", RuntimeError("cannot schedule new futures after shutdown"))
    assert "cannot schedule new futures" in stderr_log()
