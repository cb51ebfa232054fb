"""Helpers shared by the tests: running the commands (in-process or as subprocesses),
reading checkpoints back, the torch models the converter is checked against."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "tests" / "configs" / "tiny.py")
SMOKE = str(REPO / "voc_jax" / "configs" / "smoke.py")


def train_cmd(workdir: Path, *overrides: str, config: str = TINY) -> list[str]:
    """``python -m voc_jax.train`` as a subprocess command line."""
    return [
        sys.executable,
        "-m",
        "voc_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
    ]


def train_args(workdir: Path, *overrides: str, config: str = TINY) -> list[str]:
    """The same as arguments for an in-process ``voc_jax.train.main``."""
    return ["voc_jax.train", f"--config={config}", f"--workdir={workdir}", *overrides]


def run(cmd: Sequence[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs
    )


def call(main: Callable[[list[str]], int], argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """Run a command's ``main(argv)`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse-based commands exit on bad arguments
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def random_variables(module, *init_args, seed: int = 0) -> dict:
    """A network's variables without compiling its init (a Lite0's took 6 s): the shapes from
    ``jax.eval_shape``, the values NumPy's (He-normal kernels, so activations keep their
    scale; BatchNorm scales and variances near 1), for tests whose comparison holds for any
    parameters."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *init_args)
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1])) or 1
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(leaf.dtype)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape).astype(leaf.dtype)
        return rng.normal(0.0, 0.1, shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(value, shapes)


def checkpoint_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def final_params(workdir: Path, step: int | None = None):
    """(step, params as NumPy) of a workdir's newest good checkpoint (or ``step``)."""
    from voc_jax import workdir as workdir_lib
    from voc_jax.experiment import Experiment

    exp = Experiment.build(workdir_lib.load_config(workdir))
    found, variables = workdir_lib.restore_variables(workdir, exp.model.variables, step)
    return found, jax.tree.map(np.asarray, variables["params"])


def checkpoint_data(workdir: Path, step: int) -> dict:
    """The JSON item of one checkpoint (position, sums, digests)."""
    import json

    return json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())


def assert_trees_equal(a, b) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def directory_listing(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of everything under ``root`` (absent: {})."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def setup_step(config, unroll=None, inputs="pixels"):
    """(experiment, fresh state, jitted train step, schedule) of a config (10 updates an
    epoch). The state is a copy: the step donates it, the experiment's params stay alive."""
    from voc_jax.experiment import Experiment

    exp = Experiment.build(config)
    optimizer = exp.optimizer(10)
    state = jax.tree.map(jax.numpy.copy, exp.initial_state(optimizer))
    step = exp.train_step(optimizer, unroll=unroll, inputs=inputs)
    return exp, state, step, optimizer.schedule


def first_batch(config, records, train=True):
    """Batch 0 of epoch 0 for ``records`` under ``config`` (seed 0)."""
    from voc_jax.data.pipeline import epoch_dataset
    from voc_jax.experiment import patch_config

    ds = epoch_dataset(
        records,
        patch_config(config),
        images_per_batch=config.images_per_step,
        train=train,
        seed=0,
    )
    return ds[0]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The converter's main() in this process, output captured (no interpreter start-up per
    call; test_runs_as_a_script_and_an_installed_command covers the real process)."""
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                from voc_jax.convert import command

                code = command.main(list(args))
            except SystemExit as e:
                code = e.code
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # urllib's global opener keeps the proxies it saw first: drop it with the environment.
        urllib.request.install_opener(None)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def seeded_alexnet(seed: int = 0):
    """A torchvision AlexNet re-initialised so that fc7 and the logits are of order 1 (unit-gain
    normal init, non-zero biases). torchvision's own init gives logits of order 0.01, where an
    absolute tolerance of 1e-5 would prove little; with He init they reach ~20, where float32
    rounding alone (torch vs a float64 torch) is ~3e-5 and no float32 code can meet atol=1e-5."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.alexnet(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
            torch.nn.init.normal_(module.bias, 0.0, 0.1)
    return model.eval()
