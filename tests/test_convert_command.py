"""voc_jax/convert/command.py, the converter's command (convert/alexnet_to_flax.py and
voc-jax-convert; voc_jax.convert.alexnet_to_flax is its old module name, an alias): parity with
torchvision, strictness, bad inputs, atomic output. The library's own functions (safetensors,
the package source, each backbone's torch reference) are in tests/test_converter.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import torchvision

from tests.helpers import REPO, run_cli, seeded_alexnet
from voc_jax import models, weights
from voc_jax.convert import command, converter
from voc_jax.models import alexnet

SCRIPT = REPO / "convert" / "alexnet_to_flax.py"


@pytest.mark.slow
def test_runs_as_a_script_and_an_installed_command(tmp_path):
    """`python convert/alexnet_to_flax.py` (no sys.path edits: voc_jax and convert come from
    the installed package) and the voc-jax-convert entry point, in real processes."""
    script = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=300
    )
    assert script.returncode == 0 and "--torchvision" in script.stdout, script.stderr
    command = Path(sys.executable).parent / "voc-jax-convert"
    installed = subprocess.run(
        [str(command), "--pth", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: the installed package is what runs
    )
    assert installed.returncode == 2 and "nope.pth: no such file" in installed.stderr
    # The converter installs inside voc_jax: no top-level `convert` package in site-packages.
    probe = (
        "import importlib.util as u; print(u.find_spec('convert'), u.find_spec('voc_jax.convert'))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert found.stdout.startswith("None ModuleSpec"), found.stdout + found.stderr


@pytest.fixture(scope="module")
def torch_model() -> torch.nn.Module:
    return seeded_alexnet()


@pytest.fixture(scope="module")
def pth(tmp_path_factory, torch_model) -> Path:
    path = tmp_path_factory.mktemp("src") / "alexnet.pth"
    torch.save(torch_model.state_dict(), path)
    yield path
    shutil.rmtree(path.parent)  # 244 MB: gone with the module, not at the end of the run


@pytest.fixture(scope="module")
def converted(tmp_path_factory, pth) -> Path:
    out = tmp_path_factory.mktemp("conv") / "alexnet_flax"
    result = run_cli("--pth", str(pth), "--out", str(out), "--verify")
    assert result.returncode == 0, result.stderr
    assert "verify at 224x224" in result.stdout
    yield out
    shutil.rmtree(out.parent)


def torch_outputs(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        pooled = torch.flatten(model.avgpool(model.features(t)), 1)
        fc7 = model.classifier[:6](pooled)
        return model.classifier[6](fc7).numpy(), fc7.numpy()


@pytest.mark.parametrize(
    "size",
    [
        (224, 224),
        pytest.param((256, 256), marks=pytest.mark.slow),
        pytest.param((227, 241), marks=pytest.mark.slow),
    ],
)
def test_logits_and_fc7_match_torch(converted, torch_model, size):
    variables, metadata = weights.load_converted(converted)
    params = variables["params"]
    model = weights.classifier_from_metadata(metadata)
    x = np.random.default_rng(1).standard_normal((2, *size, 3)).astype(np.float32)
    want_logits, want_fc7 = torch_outputs(torch_model, x)

    @jax.jit  # one program a size (op by op, the pooling's slices compiled 150 programs)
    def logits_and_fc7(params, x):
        variables = {"params": params}
        return model.apply(variables, x), model.apply(variables, x, features_only=True)

    with jax.default_matmul_precision("highest"):
        logits, fc7 = logits_and_fc7(params, x)
    assert np.abs(want_logits).max() > 1.0  # the comparison is not between near-zeros
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(fc7), want_fc7, rtol=1e-4, atol=1e-5)
    # Against float64 torch, the exact answer: error at float32 rounding of the output's scale.
    exact_logits, exact_fc7 = torch_outputs(torch_model.double(), x.astype(np.float64))
    torch_model.float()
    for got, exact in ((logits, exact_logits), (fc7, exact_fc7)):
        assert np.abs(np.asarray(got) - exact).max() <= 2e-6 * np.abs(exact).max()


def test_metadata(converted, pth):
    meta = json.loads((converted / "metadata.json").read_text())
    assert meta["source"]["kind"] == "pth"
    assert meta["source"]["sha256"] == converter.sha256_of(pth)
    assert meta["architecture"] == {
        "name": "alexnet",
        "conv1_padding": 2,
        "input_size": 224,
        "num_classes": 1000,
        "width": 1.0,
    }
    assert meta["preprocessing"]["channel_order"] == "RGB"
    np.testing.assert_allclose(meta["preprocessing"]["mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(meta["preprocessing"]["std"], [0.229, 0.224, 0.225])
    assert meta["preprocessing"]["scale"] == pytest.approx(1 / 255)
    assert meta["imagenet_classes"] == 1000


def test_fc6_is_permuted_to_hwc(torch_model):
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    params = converter.torch_to_flax(alexnet.BACKBONE, state, "mem")[0]["params"]
    w = state["classifier.1.weight"]  # (4096, 256*6*6), input index c*36 + h*6 + w
    c, h, col, out = 17, 4, 2, 123
    assert params["fc6"]["kernel"][(h * 6 + col) * 256 + c, out] == w[out, c * 36 + h * 6 + col]
    conv = state["features.3.weight"]  # OIHW
    assert params["conv2"]["kernel"][1, 3, 5, 7] == conv[7, 5, 1, 3]


@pytest.mark.slow  # full-size conversions
def test_verify_catches_a_wrong_layout(pth, tmp_path, monkeypatch, capsys):
    """Without the fc6 permutation the logits differ: --verify exits 1 and writes nothing."""
    original = converter.torch_to_flax

    def unpermuted(b, state, source, options=None):
        variables, n, width = original(b, state, source, options)
        variables["params"]["fc6"]["kernel"] = np.ascontiguousarray(state["classifier.1.weight"].T)
        return variables, n, width

    monkeypatch.setattr(converter, "torch_to_flax", unpermuted)
    out = tmp_path / "out"
    args = ["--pth", str(pth), "--out", str(out), "--verify", "--verify-size", "224"]
    assert command.main(args) == 1
    assert "disagrees" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _bad_state(torch_model, change: str) -> dict[str, torch.Tensor]:
    state = dict(torch_model.state_dict())
    if change == "reshaped":
        state["features.3.weight"] = state["features.3.weight"][:, :32]
    elif change == "missing":
        del state["classifier.4.bias"]
    elif change == "extra":
        state["classifier.7.weight"] = torch.zeros(3, 3)
    return state


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "reshaped",
            "wrong shape features.3.weight: expected (192, 64, 5, 5), got (192, 32, 5, 5)",
        ),
        ("missing", "missing classifier.4.bias: expected shape (4096,)"),
        ("extra", "unexpected classifier.7.weight: shape (3, 3)"),
    ],
)
def test_strict_state_dict_errors(torch_model, tmp_path, change, expected):
    src = tmp_path / f"{change}.pth"
    torch.save(_bad_state(torch_model, change), src)
    out = tmp_path / "out"
    result = run_cli("--pth", str(src), "--out", str(out))
    assert result.returncode == 2
    assert expected in result.stderr and str(src) in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # nothing written


@pytest.mark.slow
def test_vgg_state_dict_reports_every_problem(tmp_path):
    src = tmp_path / "vgg11.pth"
    torch.save(torchvision.models.vgg11(weights=None).state_dict(), src)
    result = run_cli("--pth", str(src), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not a state dict of AlexNet" in lines[0]
    assert "--verbose lists all" in lines[0]
    result = run_cli("--pth", str(src), "--out", str(tmp_path / "out"), "--verbose")
    assert result.returncode == 2
    err = result.stdout  # every problem, one a line
    assert "unexpected features.13.weight" in err  # VGG-only layer
    assert "wrong shape features.3.weight" in err  # both have it, different shapes
    assert "missing features.10.weight" in err  # a max-pool in VGG
    assert "unexpected classifier.0.weight" in err and "missing classifier.1.weight" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["truncated", "text", "empty"])
def test_unreadable_files(pth, tmp_path, kind):
    src = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        data = pth.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        src.write_text("these are not the weights you are looking for\n")
    else:
        src.write_bytes(b"")
    result = run_cli("--pth", str(src), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{src}: not a readable torch state dict" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    result = run_cli("--pth", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "nope.pth: no such file" in result.stderr


@pytest.mark.slow  # full-size conversions
def test_existing_output_needs_force_and_only_a_converter_output_is_replaced(pth, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert command.main(["--pth", str(pth), "--out", str(out)]) == 2
    assert command.main(["--pth", str(pth), "--out", str(out), "--force"]) == 2  # the user's
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    assert command.main(["--pth", str(pth), "--out", str(out), "--force"]) == 0  # empty: fine
    assert command.main(["--pth", str(pth), "--out", str(out), "--force"]) == 0  # ours: replaced
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "params.msgpack"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary leftovers


def test_torchvision_download_offline_is_one_clear_line(tmp_path):
    dead_proxy = "http://127.0.0.1:9"  # discard port: connection refused at once
    env = {
        "TORCH_HOME": str(tmp_path / "torch_home"),
        "http_proxy": dead_proxy,
        "https_proxy": dead_proxy,
        "HTTP_PROXY": dead_proxy,
        "HTTPS_PROXY": dead_proxy,
        "no_proxy": "",
    }
    result = run_cli("--torchvision", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--pth" in lines[0] and "offline?" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_explains_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--torchvision", "--pth", "--out", "--verify", "--force", "--mean", "--std"):
        assert option in result.stdout


@pytest.mark.slow  # full-size conversions
def test_preprocessing_override(pth, tmp_path):
    out = tmp_path / "out"
    code = command.main(
        ["--pth", str(pth), "--out", str(out), "--channel-order", "BGR", "--scale", "1"]
        + ["--mean", "1", "2", "3", "--std", "4", "5", "6"]
    )
    assert code == 0
    _, meta = weights.load_converted(out)
    assert meta["preprocessing"] == {
        "channel_order": "BGR",
        "scale": 1.0,
        "mean": [1.0, 2.0, 3.0],
        "std": [4.0, 5.0, 6.0],
    }


def test_verify_says_when_the_check_is_vacuous(tmp_path, capsys, monkeypatch):
    """A narrow AlexNet whose fc7 weights are zero: every input gives the same logits (the
    last layer's bias), so torch and Flax agree whatever the layers below do; the check says
    it is vacuous there (and not for the same network with its fc7), and --verify prints so."""
    from voc_jax.convert import torch_models

    torch.manual_seed(0)
    model = torch_models.alexnet(width=1 / 16)
    torch.save(model.state_dict(), tmp_path / "a.pth")
    alexnet_backbone = models.backbone("alexnet")
    live = converter.from_file(alexnet_backbone, tmp_path / "a.pth")
    with torch.no_grad():
        model.classifier[4].weight.zero_()
    torch.save(model.state_dict(), tmp_path / "z.pth")
    dead = converter.from_file(alexnet_backbone, tmp_path / "z.pth")
    for converted, vacuous in ((live, False), (dead, True)):
        stats = converter.verify_against_torch(
            converted.variables, converted.metadata, converted.state, input_size=64
        )
        assert stats["vacuous"] is vacuous and stats["within"], stats
    monkeypatch.setattr(converter, "verify_against_torch", lambda *a, **k: stats)
    args = ["--pth", str(tmp_path / "z.pth"), "--out", str(tmp_path / "o"), "--verify",
            "--verify-size", "64"]  # fmt: skip
    assert command.main(args) == 0
    assert "vacuous: the logits barely depend on the input" in capsys.readouterr().out
