"""The converter's --neon (voc_jax.convert.neon): restricted unpickling, layout mapping, dropout scaling."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil

import jax
import numpy as np
import pytest
import torch

from tests import neon_fixtures as nf
from tests.helpers import run_cli, seeded_alexnet
from voc_jax import weights
from voc_jax.classes import VOC_CLASSES
from voc_jax.convert import command, converter, neon, torch_models
from voc_jax.models import alexnet
from voc_jax.models.transfer import TransferNet


def neon_alexnet(seed: int = 0) -> torch.nn.Module:
    model = seeded_alexnet(seed)
    model.features[0].padding = (3, 3)  # neon's conv1
    return model


def transfer_torch(seed: int = 1, hidden: int = 512) -> torch.nn.Module:
    """A VOC transfer model as torch modules: backbone, fc6, fc7, head (4096 -> hidden -> 21)."""
    model = torch_models.TransferNet(21, hidden, conv1_padding=3, backbone=neon_alexnet(seed))
    torch.manual_seed(seed)
    for m in model.head.values():
        torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
        torch.nn.init.normal_(m.bias, 0.0, 0.1)
    return model.eval()


def convert_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's main() in this process (no interpreter start-up per case)."""
    code = command.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


@pytest.fixture(scope="module")
def alexnet_model():
    return neon_alexnet()


@pytest.fixture(scope="module")
def neon_alexnet_file(tmp_path_factory, alexnet_model):
    path = tmp_path_factory.mktemp("neon") / "alexnet.p"
    yield nf.write_neon(path, nf.torch_weights(alexnet_model), momentum=True)
    shutil.rmtree(path.parent)  # ~490 MB: gone with the module


@pytest.mark.slow  # the real-size AlexNet and its ~490 MB neon file
def test_fixture_is_a_python2_numpy1_pickle(neon_alexnet_file):
    data = neon_alexnet_file.read_bytes()
    assert data[:2] == b"\x80\x02"
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
    assert b"_codecs" not in data and b"X" not in data[:3]  # no Python 3 bytes/unicode idioms
    # The plain (unrestricted) loader of an old NumPy file reads it too: the fixture is valid.
    obj = pickle.loads(data, encoding="latin1")
    w = obj["model"]["config"]["layers"][0]["params"]["W"]
    assert w.shape == (3 * 11 * 11, 64) and w.dtype == np.float32


@pytest.mark.slow  # the real-size AlexNet and its ~490 MB neon file
def test_imported_alexnet_matches_torch(tmp_path, alexnet_model, neon_alexnet_file):
    src = neon_alexnet_file  # the realistic file: momentum buffers included (about 490 MB)
    out = tmp_path / "flax"
    result = run_cli("--neon", str(src), "--out", str(out), "--verify", "--verify-size", "224")
    assert result.returncode == 0, result.stderr
    assert "verify at 224x224" in result.stdout
    variables, metadata = weights.load_converted(out)
    params = variables["params"]
    assert metadata["architecture"] == {
        "name": "alexnet",
        "conv1_padding": 3,
        "input_size": 224,
        "num_classes": 1000,
    }
    assert metadata["preprocessing"] == {
        "channel_order": "BGR",
        "scale": 1.0,
        "mean": [102.98, 115.95, 122.77],
        "std": [1.0, 1.0, 1.0],
    }
    assert metadata["source"]["kind"] == "neon"
    assert metadata["source"]["neon_version"] == "1.4.0"
    assert metadata["source"]["epoch_index"] == 9
    assert metadata["source"]["dropout_scaled_layers"] == ["Linear_1", "Linear_2"]
    # metadata.json is plain JSON: the backend a string, the file's digest in full.
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"]["backend"] == "neon.backends.nervanagpu.NervanaGPU"
    assert len(meta["source"]["sha256"]) == 64
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    want = torch_logits(alexnet_model, x)
    with jax.default_matmul_precision("highest"):
        got = weights.classifier_from_metadata(metadata).apply({"params": params}, x)
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the real-size AlexNet (a 245 MB neon file, gzipped)
def test_a_gzipped_file_imports_the_same_weights(tmp_path, capsys):
    """neon saved .gz files as often as plain ones: the same import, array for array the
    torch model's weights (the dropout scaling undone, as in the plain file's test)."""
    model = neon_alexnet(seed=3)
    with torch.no_grad():  # fc6 and fc7 pruned to 1% (gzip then writes 4x faster); the rest dense
        for layer in (model.classifier[1], model.classifier[4]):
            mask = torch.zeros_like(layer.weight)
            mask.view(-1)[::101] = 1
            layer.weight.mul_(mask)
    src = nf.write_neon(tmp_path / "alexnet.p.gz", nf.torch_weights(model), compress=True)
    out = tmp_path / "flax"
    code, _, err = convert_in_process(capsys, "--neon", str(src), "--out", str(out))
    assert code == 0, err
    variables, metadata = weights.load_converted(out)
    assert metadata["source"]["kind"] == "neon"
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    want, _, _ = converter.torch_to_flax(alexnet.BACKBONE, state, "torch")
    got = dict(jax.tree_util.tree_leaves_with_path(variables["params"]))
    for path, value in jax.tree_util.tree_leaves_with_path(want["params"]):
        np.testing.assert_allclose(got[path], value, rtol=1e-6, atol=0, err_msg=str(path))


@pytest.mark.slow  # the real-size AlexNet and its ~490 MB neon file
def test_dropout_scaling_is_what_makes_it_match(tmp_path, alexnet_model):
    """Without the keep scaling (a file without Dropout entries) fc7 and fc8 are 2x too big."""
    layers = nf.neon_layers(
        nf.torch_weights(alexnet_model)[:5], nf.torch_weights(alexnet_model)[5:]
    )
    no_dropout = [entry for entry in layers if not entry["type"].endswith("Dropout")]
    # The loaded structure itself (the file format has its own tests above).
    state, facts = neon.neon_to_torch_state(nf.neon_file(no_dropout), tmp_path / "nodrop.p")
    ref = dict(alexnet_model.state_dict())
    np.testing.assert_allclose(state["classifier.4.weight"], 2 * ref["classifier.4.weight"].numpy())
    assert facts["dropout_scaled"] == []


@pytest.mark.slow  # the real-size AlexNet and its ~490 MB neon file
def test_transfer_model_with_head_is_imported_whole(tmp_path, capsys):
    model = transfer_torch()
    src = nf.write_neon(tmp_path / "voc.p", nf.torch_weights(model), epoch_index=29)
    out = tmp_path / "flax"
    code, stdout, err = convert_in_process(
        capsys, "--neon", str(src), "--out", str(out), "--verify", "--verify-size", "227"
    )
    assert code == 0, err
    assert "verify at 227x227" in stdout
    variables, metadata = weights.load_converted(out)
    params = variables["params"]
    arch = metadata["architecture"]
    assert (arch["name"], arch["num_classes"], arch["head_hidden"]) == ("transfer", 21, 512)
    assert arch["classes"] == list(VOC_CLASSES)  # the reference's VOC model names its classes
    assert metadata["source"]["dropout_scaled_layers"] == ["Linear_1", "Linear_2", "Linear_3"]
    net = TransferNet(num_classes=21, head_hidden=512, options=alexnet.AlexNetOptions(3))
    x = np.random.default_rng(2).standard_normal((2, 224, 224, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        got = net.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(got), torch_logits(model, x), rtol=1e-4, atol=1e-5)
    # transfer_variables keeps a transfer model's own head (the reference's trained VOC model).
    kept = weights.transfer_variables(params, metadata, num_classes=21, head_hidden=512)["params"]
    np.testing.assert_array_equal(kept["head"]["fc_b"]["kernel"], params["head"]["fc_b"]["kernel"])


@pytest.mark.parametrize(
    ("module", "name"), [("posix", "system"), ("os", "system"), ("builtins", "eval")]
)
def test_a_pickle_calling_a_global_is_refused_and_not_run(tmp_path, module, name, capsys):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w')"
    src = tmp_path / "evil.p"
    src.write_bytes(nf.evil_pickle(command, module, name))
    # The unrestricted loader would run it: the fixture is a real exploit.
    if module == "posix":
        pickle.loads(src.read_bytes(), encoding="latin1")
        assert marker.exists()
        marker.unlink()
    code, _, err = convert_in_process(capsys, "--neon", str(src), "--out", str(tmp_path / "out"))
    assert code == 2
    assert f"refusing global {module}.{name}" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_reconstruct_of_another_class_is_refused():
    with pytest.raises(pickle.UnpicklingError, match="only numpy.ndarray"):
        neon._reconstruct(dict, (0,), b"b")


def _problem_file(tmp_path, alexnet_model, change: str):
    ws = nf.torch_weights(alexnet_model)
    layers = nf.neon_layers(ws[:5], ws[5:])
    if change == "shape":
        layers[0]["params"]["W"] = layers[0]["params"]["W"][:-1]
    elif change == "missing":
        layers = [e for e in layers if e["config"]["name"] != "Convolution_3"]
    elif change == "stride":
        layers[0]["config"]["strides"] = 2
    path = tmp_path / f"{change}.p"
    path.write_bytes(nf.py2_pickle(nf.neon_file(layers)))
    return path


@pytest.mark.slow  # the real-size AlexNet and its ~490 MB neon file
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("shape", "Convolution_0 (conv1): W shape (362, 64), expected (363, 64)"),
        ("missing", "expected 5 Convolution layers (AlexNet), found 4"),
        ("stride", "Convolution_0 (conv1): stride 2, AlexNet has 4"),
    ],
)
def test_bad_layers_are_named_and_nothing_is_written(
    tmp_path, alexnet_model, change, expected, capsys
):
    src = _problem_file(tmp_path, alexnet_model, change)
    out = tmp_path / "out"
    code, _, err = convert_in_process(capsys, "--neon", str(src), "--out", str(out))
    assert code == 2
    assert expected in err and str(src) in err
    assert not out.exists()


@pytest.mark.slow  # the real-size AlexNet and its ~490 MB neon file
@pytest.mark.parametrize("kind", ["truncated", "gzip-truncated", "not-a-model"])
def test_unreadable_files(tmp_path, neon_alexnet_file, kind, capsys):
    with open(neon_alexnet_file, "rb") as f:
        data = f.read(250_000)
    src = tmp_path / "bad.p"
    if kind == "truncated":
        src.write_bytes(data[:250_000])  # ends inside conv2's weights
    elif kind == "gzip-truncated":
        src.write_bytes(gzip.compress(data[:250_000], compresslevel=1)[:5000])
    else:
        src.write_bytes(nf.py2_pickle({"weights": [1, 2, 3]}))
    code, _, err = convert_in_process(capsys, "--neon", str(src), "--out", str(tmp_path / "out"))
    assert code == 2
    assert str(src) in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_help_mentions_states_and_restricted_unpickler(capsys):
    with pytest.raises(SystemExit):
        command.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--neon FILE" in text
    assert "restricted unpickler" in text and "('states') are ignored" in text
