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


def _orbax_error(message: str) -> None:
    logging.getLogger("orbax.checkpoint").error("background save failed: %s", message)


def test_orbax_errors_are_held_and_dropped_when_the_command_ends_with_a_full_disk(stderr_log):
    def body() -> int:
        _orbax_error("No ArrayMetadata found for process_index=0")
        raise cli.DiskFull("no space left on /w/checkpoints while saving step 20")

    assert cli.run_guarded(body) == 2
    err = stderr_log()
    assert err.strip().splitlines() == [
        "error: no space left on /w/checkpoints while saving step 20"
    ]
    _orbax_error("a thread finishing after the command")  # still dropped
    assert stderr_log() == ""


def test_orbax_errors_are_printed_when_the_command_ends_otherwise(stderr_log):
    def body() -> int:
        _orbax_error("a failure voc-jax did not report")
        return 0

    assert cli.run_guarded(body) == 0
    assert "a failure voc-jax did not report" in stderr_log()
    _orbax_error("later")  # not held once the command is over
    assert "later" in stderr_log()


def test_a_config_variant_is_refused_in_a_sentence_where_the_config_has_none():
    from voc_jax.cli import load_config_file
    from voc_jax.errors import ConfigError

    assert load_config_file("voc_jax/configs/voc07_alexnet.py:frozen").optim.trainable == (
        "head/.*",
    )
    with pytest.raises(ConfigError) as e:
        load_config_file("voc_jax/configs/smoke.py:frozen")
    assert str(e.value) == (
        "--config voc_jax/configs/smoke.py:frozen: smoke.py takes no argument (no ':frozen' "
        "variant); use --config voc_jax/configs/smoke.py"
    )
    with pytest.raises(ConfigError, match="expected finetune or frozen"):
        load_config_file("voc_jax/configs/voc07_alexnet.py:frost")


@pytest.mark.slow  # a fresh interpreter each (0.1 s)
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_options_without_importing_jax(command, flag):
    """The installed entry points (voc_jax.commands) answer --help at once: usage, the
    command's docstring and every flag, exit 0, with JAX never imported."""
    import subprocess
    import sys

    code = (
        "import sys; from voc_jax import commands; "
        f"rc = commands.{command}(['voc-jax-{command}', '{flag}']); "
        "assert 'jax' not in sys.modules, 'jax imported'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: voc-jax-{command} ") and "--workdir" in done.stdout
    assert "error" not in done.stderr.lower()


def test_help_through_main_prints_usage(capsys):
    """``python -m voc_jax.train --help`` (the module's main) prints the same usage, exit 0."""
    from voc_jax import commands, train

    assert train.main(["voc_jax.train", "--help"]) == 0
    assert capsys.readouterr().out.strip() == commands.usage("voc_jax.train").strip()


def test_a_full_disk_names_the_file_and_the_step(capsys):
    """A full disk anywhere (not one of the places that word it themselves) is one line that
    names the file from the OSError in the chain and the voc-jax function that was writing."""

    def write_scores() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/w/eval/20/scores.npz")
        except OSError as e:
            raise RuntimeError("tensorstore: write failed") from e

    def body() -> int:
        write_scores()
        return 0

    assert cli.run_guarded(body) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no space left on /w/eval/20/scores.npz")
    assert "while in tests" not in err  # only voc_jax's own frames name a step
    from voc_jax.errors import disk_full_message

    try:
        from voc_jax import atomic

        with atomic.atomic_directory("/proc/voc-jax-cannot-write-here"):
            pass
    except OSError as e:
        e.errno = errno.ENOSPC
        message = disk_full_message(e)
    assert "while in voc_jax.atomic.atomic_directory" in message
