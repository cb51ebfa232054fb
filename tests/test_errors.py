"""Every user error, on every command: exit status 2, one ``error:`` line naming the culprit
(the file, the config key or the step), no traceback, and nothing changed on disk.

Each case builds its inputs, runs the command's ``main`` in this process (no interpreter
start-up per case) and checks the directory the command must leave alone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import neon_fixtures as nf
from tests.helpers import TINY, call, directory_listing, train_args
from voc_jax import evaluate, predict, train
from voc_jax.data import check, download

# ----------------------------------------------------------------------------- inputs


@dataclass
class Case:
    main: Callable
    argv: list[str]
    expect: str  # must appear in the one error line
    watch: Path  # must be unchanged (absent stays absent)
    code: int = 2


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def first_id(root: Path, split: str = "trainval") -> str:
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[0]


def weights_dir(tmp: Path, **metadata_changes) -> Path:
    """A converted-weights directory whose metadata.json has the given fields changed (the
    params file is never read: validation refuses the metadata first)."""
    out = tmp / "weights"
    out.mkdir()
    meta = {
        "format": "voc-jax-converted-weights",
        "format_version": 1,
        "source": {"kind": "pth"},
        "architecture": {"name": "alexnet", "conv1_padding": 2, "num_classes": 1000},
        "preprocessing": {
            "channel_order": "RGB",
            "scale": 1 / 255,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    }
    for key, value in metadata_changes.items():
        block, field = key.split("__")
        meta[block][field] = value
    (out / "metadata.json").write_text(json.dumps(meta))
    (out / "params.msgpack").write_bytes(b"")
    return out


def train_case(tmp: Path, *overrides: str, expect: str, data: Path | None = None) -> Case:
    work = tmp / "w"
    root = [f"--config.data.root={data}"] if data is not None else []
    return Case(train.main, train_args(work, *root, *overrides), expect, work)


def bad_data(tmp: Path, tiny_data_root: Path, change: str) -> Path:
    root = copy_data(tiny_data_root, tmp / "data" / "VOC2007")
    image_id = first_id(root)
    xml = root / "Annotations" / f"{image_id}.xml"
    jpeg = root / "JPEGImages" / f"{image_id}.jpg"
    if change == "nan-box":
        text = xml.read_text()
        start = text.index("<xmin>") + len("<xmin>")
        xml.write_text(text[:start] + "nan" + text[text.index("</xmin>") :])
    elif change == "truncated-jpeg":
        jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    elif change == "tiny-image":
        from PIL import Image

        Image.new("RGB", (1, 1)).save(jpeg)
        text = xml.read_text()
        for tag in ("width", "height"):
            a, b = text.index(f"<{tag}>") + len(tag) + 2, text.index(f"</{tag}>")
            text = text[:a] + "1" + text[b:]
        xml.write_text(text)
    elif change == "no-boxes":
        for xml_path in (root / "Annotations").glob("*.xml"):
            text = xml_path.read_text()
            while "<object>" in text:
                a, b = text.index("<object>"), text.index("</object>") + len("</object>")
                text = text[:a] + text[b:]
            xml_path.write_text(text)
    elif change == "png16":  # a 16-bit PNG named .jpg: PIL's RGB conversion would clip it white
        import numpy as np
        from PIL import Image

        with Image.open(jpeg) as im:
            width, height = im.size
        Image.fromarray(np.full((height, width), 1000, np.uint16)).save(jpeg, format="PNG")
    elif change == "non-utf8-split":
        (root / "ImageSets" / "Main" / "trainval.txt").write_bytes(b"000000\n\xff\xfe\n")
    elif change == "bad-class-file":
        (root / "ImageSets" / "Main" / "car_trainval.txt").write_text("000000 yes\n")
    return root


# ----------------------------------------------------------------------------- the table

TRAIN_CONFIG = [
    (("--config.num_epochs=-1",), "num_epochs=-1"),
    (("--config.checkpoint.max_to_keep=0",), "checkpoint.max_to_keep=0"),
    (("--config.eval.images_per_step=0",), "eval.images_per_step=0"),
    (("--config.patches.size=0",), "patches.size=0"),
    (("--config.patches.size=16",), "patches.size=16: too small"),
    (("--config.patches.scales=()",), "patches.scales"),
    (("--config.patches.per_image=0",), "patches.per_image=0"),
    (("--config.patches.per_image=10",), "multiple of batch_size=4"),
    (("--config.optim.learning_rate=-0.1",), "optim.learning_rate=-0.1"),
    (("--config.optim.optimizer=no-such",), "optim.optimizer='no-such'"),
    (("--config.optim.schedule=linear",), "optim.schedule='linear'"),
    (("--config.patches.difficult=maybe",), "patches.difficult='maybe'"),
    (("--config.patches.crop_boxes=round",), "patches.crop_boxes='round'"),
    (("--config.patches.test_sampling=all",), "patches.test_sampling='all'"),
    (("--config.model.dtype=float16",), "model.dtype='float16'"),
    (("--config.data.check_images=all",), "data.check_images='all'"),
    (("--config.optim.trainable=('haed/.*',)",), "'haed/.*' matches no parameter"),
    (("--config.optim.no_decay=('bias',)",), "optim.no_decay: 'bias' matches no parameter"),
    (("--config.optim.lr_changes=((-1, 0.1),)",), "optim.lr_changes"),
    (("--config.optim.momentum=1.5",), "optim.momentum=1.5"),
    (("--config.eval.protocols=('voc12',)",), "eval.protocols"),
    (("--config.foo=1",), "--config.foo: no such config field"),
    (("--config.optim.lerning_rate=0.1",), "did you mean --config.optim.learning_rate"),
    (("--config.num_epochs=abc",), "num_epochs"),
    (("--config.model.width=0",), "model.width=0"),
    (("--config.feature_cache.enabled=True",), "every trainable parameter must be above fc6"),
    (("--config.feature_cache.dtype=int8",), "feature_cache.dtype='int8'"),
    (('--config.optim.trainable=("[",)',), "optim.trainable"),  # not a regex: one line
    (("--config.patches.per_image=100000000",), "one call's patches need 8.9 TiB"),
    (
        ("--config.model.conv1_padding=99",),
        "model.options.conv1_padding=99: must be an integer in [0, 5]",
    ),
    (("--config.model.head_hidden=10000000",), "model.head_hidden=10000000"),
    (("--config.num_epochs=0",), "nothing to evaluate"),  # fresh workdir, no init.weights
    (("--config.model.arch=vgg19",), "model.arch='vgg19': must be one of"),
    (("--config.grad_chunks=3",), "grad_chunks=3 must divide batch_size=4"),
    (
        ("--config.model.arch=resnet50", "--config.model.bn_update=True", "--config.grad_chunks=2"),
        "grad_chunks=2 with model.bn_update=True",
    ),
    (("--config.model.arch=resnet50", "--config.patches.size=16"), "too small for resnet50's"),
    (
        (
            "--config.model.arch=resnet50",
            "--config.model.bn_update=True",
            "--config.feature_cache.enabled=True",
            "--config.optim.trainable=('head/.*',)",
        ),
        "with model.bn_update=True",
    ),
    (
        ("--config.model.arch=resnet50", "--config.feature_cache.enabled=True"),
        "caches resnet50's pool output",
    ),
]


@pytest.mark.parametrize(("overrides", "expect"), TRAIN_CONFIG, ids=[e for _, e in TRAIN_CONFIG])
def test_train_config_errors(tmp_path, capsys, overrides, expect):
    check_case(train_case(tmp_path, *overrides, expect=expect), capsys)


DATA_ERRORS = [
    ("nan-box", "not a finite number"),
    ("truncated-jpeg", "does not decode"),
    ("tiny-image", "too small"),
    ("no-boxes", "no image of split trainval has an object"),
    ("non-utf8-split", "trainval.txt: not UTF-8"),
    ("png16", "not 8 bits per channel"),
]


@pytest.mark.parametrize(("change", "expect"), DATA_ERRORS, ids=[c for c, _ in DATA_ERRORS])
def test_train_data_errors(tmp_path, tiny_data_root, capsys, change, expect):
    root = bad_data(tmp_path, tiny_data_root, change)
    case = train_case(tmp_path, expect=expect, data=root)
    if change in ("nan-box", "truncated-jpeg", "tiny-image", "png16"):
        case.expect = first_id(root)  # the file is named ...
        check_case(case, capsys, also=expect)  # ... with the problem
    else:
        check_case(case, capsys)


def test_train_more_errors(tmp_path, capsys):
    missing_root = tmp_path / "typo" / "VOC2007"
    cases = [
        train_case(tmp_path, expect=f"data.root {missing_root} does not exist", data=missing_root),
        Case(train.main, ["voc_jax.train", f"--config={TINY}"], "--workdir", tmp_path / "w"),
        Case(
            train.main,
            ["voc_jax.train", f"--config={tmp_path / 'none.py'}", f"--workdir={tmp_path / 'w'}"],
            "no such config file",
            tmp_path / "w",
        ),
    ]
    for case in cases:
        check_case(case, capsys)


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        (
            {"architecture__conv1_padding": 9},
            "architecture.conv1_padding=9: must be an integer in [0, 5]",
        ),
        ({"preprocessing__scale": 255.0}, "preprocessing.scale=255.0 is out of range"),
        ({"preprocessing__std": [0, 1, 1]}, "std must be positive"),
        ({"preprocessing__std": [float("nan"), 1, 1]}, "must be finite numbers"),
    ],
    ids=["conv1-padding", "scale", "std", "std-nan"],
)
def test_train_weights_metadata_errors(tmp_path, capsys, changes, expect):
    weights = weights_dir(tmp_path, **changes)
    case = train_case(
        tmp_path, f"--config.init.weights={weights}", "--config.model.width=1.0", expect=expect
    )
    check_case(case, capsys)


def resumable_copy(trained: Path, tmp: Path, keep_until: int | None = None) -> Path:
    """A copy of a trained workdir; ``keep_until``: its checkpoints past that step removed
    (what a run stopped there would have left)."""
    work = tmp / "w"
    shutil.copytree(trained, work)
    if keep_until is not None:
        for step in (work / "checkpoints").iterdir():
            if step.name.isdigit() and int(step.name) > keep_until:
                shutil.rmtree(step)
    return work


RESUME_ERRORS = [
    # (overrides, keep checkpoints until, expected in the one error line)
    (("--config.model.head_hidden=32",), None, "model.head_hidden: 64 in config.json, 32 now"),
    (("--config.model.width=0.125",), None, "model.width: 0.0625 in config.json, 0.125 now"),
    (("--config.optim.optimizer=adamw",), None, "optim.optimizer: 'sgd' in config.json"),
    (("--config.optim.trainable=('head/.*',)",), None, "optim.trainable"),
    (("--config.model.arch=vgg16",), None, "model.arch: 'alexnet' in config.json, 'vgg16' now"),
    (
        ("--config.seed=1",),
        4,
        "seed=1 but the checkpoint (epoch 1, batch 2) was written with seed=0",
    ),
    (("--config.batch_size=8",), 4, "batch_size=8 but the checkpoint"),
]


@pytest.mark.parametrize(
    ("overrides", "keep_until", "expect"), RESUME_ERRORS, ids=[e for *_, e in RESUME_ERRORS]
)
def test_resume_refusals_write_nothing(
    tmp_path, trained_tiny, tiny_data_root, capsys, overrides, keep_until, expect
):
    """A resume that cannot continue the run is refused before anything is written: the
    config.json, image_check.json, metrics and checkpoints stay as they were."""
    work = resumable_copy(trained_tiny, tmp_path, keep_until)
    if "--config.batch_size=8" in overrides:
        overrides = (*overrides, "--config.patches.per_image=8")
    root = f"--config.data.root={tiny_data_root}"  # as trained: nothing to generate
    check_case(Case(train.main, train_args(work, root, *overrides), expect, work), capsys)


def test_checkpoints_that_cannot_be_listed_are_refused(
    tmp_path, trained_tiny, tiny_data_root, capsys
):
    work = resumable_copy(trained_tiny, tmp_path)
    shutil.rmtree(work / "checkpoints")
    (work / "checkpoints").write_text("not a directory")
    argv = train_args(work, f"--config.data.root={tiny_data_root}")
    check_case(Case(train.main, argv, "checkpoints: is not a directory", work), capsys)


def test_evaluate_with_a_changed_model_shape_is_refused(tmp_path, trained_tiny, capsys):
    work = resumable_copy(trained_tiny, tmp_path)
    argv = ["voc_jax.evaluate", f"--workdir={work}", f"--config={TINY}"]
    check_case(
        Case(evaluate.main, [*argv, "--config.model.head_hidden=32"], "cannot evaluate", work),
        capsys,
        also="model.head_hidden: 64 in config.json, 32 now",
    )


def test_train_weights_of_another_architecture(tmp_path, capsys):
    weights = weights_dir(tmp_path, architecture__name="resnet50")
    case = train_case(
        tmp_path,
        f"--config.init.weights={weights}",
        "--config.model.width=1.0",
        expect="resnet50 weights, but model.arch='alexnet'; pass --config.model.arch=resnet50",
    )
    check_case(case, capsys)


def test_train_weights_need_the_full_width(tmp_path, capsys):
    weights = weights_dir(tmp_path)
    check_case(
        train_case(tmp_path, f"--config.init.weights={weights}", expect="model.width=0.0625"),
        capsys,
    )


def test_evaluate_errors(tmp_path, trained_tiny, capsys):
    work = tmp_path / "work"
    shutil.copytree(trained_tiny, work)
    base = ["voc_jax.evaluate", f"--workdir={work}"]
    cases = [
        Case(
            evaluate.main,
            ["voc_jax.evaluate", f"--workdir={tmp_path / 'nope'}"],
            "nope: no such directory",
            tmp_path / "nope",
        ),
        Case(evaluate.main, [*base, "--checkpoint=999"], "no checkpoint at step 999", work),
        Case(evaluate.main, [*base, "--checkpoint=-1"], "checkpoint", work),
        Case(evaluate.main, [*base, "--split=bogus"], "bogus.txt: split list not found", work),
        Case(evaluate.main, ["voc_jax.evaluate"], "--workdir is required", work),
    ]
    for case in cases:
        check_case(case, capsys)


def test_evaluate_with_no_readable_checkpoint(tmp_path, trained_tiny, capsys):
    work = tmp_path / "work"
    shutil.copytree(trained_tiny, work)
    for f in (work / "checkpoints").rglob("*"):
        if f.is_file() and "params" in f.parts:
            f.write_bytes(b"")
    check_case(
        Case(
            evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], "no readable checkpoint", work
        ),
        capsys,
    )


def test_predict_errors(tmp_path, trained_tiny, tiny_data_root, capsys):
    image = str(next((tiny_data_root / "JPEGImages").glob("*.jpg")))
    out = tmp_path / "out"
    base = ["voc_jax.predict", f"--workdir={trained_tiny}", f"--out={out}"]
    cases = [
        Case(predict.main, [*base, "--top=0", image], "top", out),
        Case(predict.main, [*base, "--top=30", image], "top", out),
        Case(
            predict.main,
            ["voc_jax.predict", f"--workdir={tmp_path / 'nope'}", image],
            "nope: no such directory",
            tmp_path / "nope",
        ),
        Case(predict.main, [*base], "usage", out),
    ]
    for case in cases:
        check_case(case, capsys)


def test_check_errors(tmp_path, tiny_data_root, capsys):
    utf = bad_data(tmp_path / "a", tiny_data_root, "non-utf8-split")
    cls = bad_data(tmp_path / "b", tiny_data_root, "bad-class-file")
    cases = [
        Case(check.main, [str(utf)], "trainval.txt: not UTF-8", utf),
        Case(check.main, [str(cls)], "car_trainval.txt: line 1", cls),
        Case(check.main, [str(tmp_path / "none")], "none: no such directory", tmp_path / "none"),
    ]
    for case in cases:
        case.argv = case.argv  # argparse-style main: argv without the program name
        check_case(case, capsys)


def converter_main(argv):
    from voc_jax.convert import command

    return command.main(argv)


def test_convert_errors(tmp_path, capsys, monkeypatch):
    from voc_jax.convert import neon

    pth = tmp_path / "a.pth"
    pth.write_bytes(b"")  # never read: the arguments fail first
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = tmp_path / "out"
    neon_file = tmp_path / "model.p"
    cases = [
        Case(
            converter_main,
            ["--pth", str(pth), "--out", str(out), "--std", "0", "1", "1"],
            "std must be positive",
            out,
        ),
        Case(
            converter_main,
            ["--pth", str(pth), "--out", str(out), "--scale", "255"],
            "--scale 255",
            out,
        ),
        Case(
            converter_main,
            ["--pth", str(pth), "--out", str(out), "--std", "nan", "1", "1"],
            "must be finite numbers",
            out,
        ),
        Case(
            converter_main, ["--pth", str(pth), "--out", str(a_file / "sub")], "is a file", a_file
        ),
        Case(
            converter_main,
            ["--arch", "vgg16", "--neon", str(neon_file), "--out", str(out)],
            "--neon reads neon's AlexNet files, not --arch vgg16",
            out,
        ),
        Case(
            converter_main,
            ["--arch", "resnet50", "--torchvision", "IMAGENET1K_V9", "--out", str(out)],
            "resnet50 has no such weights; available: IMAGENET1K_V1, IMAGENET1K_V2",
            out,
        ),
        Case(
            converter_main,
            ["--pth", str(pth), "--out", str(out), "--verify", "--verify-size", "12x"],
            "a side (224) or HEIGHTxWIDTH",
            out,
        ),
        Case(
            converter_main,
            ["--arch", "vgg19", "--pth", str(pth), "--out", str(out)],
            "invalid choice: 'vgg19'",
            out,
        ),
        Case(
            converter_main,
            ["--pth", str(pth), "--out", str(out), "--verify", "--verify-size", "64", "61x77"],
            "--verify-size 64x64 61x77: alexnet needs at least 63 pixels a side",
            out,
        ),
        Case(
            converter_main,
            ["--pth", str(pth), "--out", str(a_file), "--force"],
            "not a directory",
            a_file,
        ),
    ]
    for case in cases:
        check_case(case, capsys)

    def neon_case(data: bytes, expect: str) -> None:
        neon_file.write_bytes(data)
        check_case(
            Case(converter_main, ["--neon", str(neon_file), "--out", str(out)], expect, out), capsys
        )

    import gzip

    monkeypatch.setattr(neon, "MAX_BYTES", 1 << 20)
    neon_case(gzip.compress(bytes(3 << 20)), "decompresses to more than")
    neon_case(nf.huge_array_pickle(), "refusing an array of shape")
    neon_case(nf.deep_pickle(5000), "nested")
    neon_case(
        nf.py2_pickle({"model": {"config": {"layers": ["a", "b"]}}}), "a layer entry is a str"
    )
    neon_case(
        nf.py2_pickle({"model": {"config": {"layers": [{"type": 3, "config": [1]}]}}}),
        "not a neon model structure",
    )
    neon_case(nf.py2_pickle([1, 2]), "no 'model' key")


def test_download_errors(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    check_case(
        Case(
            download.main,
            ["--out", str(a_file), "--mirror", "http://127.0.0.1:9/"],
            f"--out {a_file}: is a file, not a directory",  # not "offline?"
            a_file,
        ),
        capsys,
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_convert_into_a_read_only_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    pth = tmp_path / "a.pth"
    pth.write_bytes(b"")
    check_case(
        Case(
            converter_main,
            ["--pth", str(pth), "--out", str(locked / "o")],
            "permission denied",
            locked,
        ),
        capsys,
    )


# ----------------------------------------------------------------------------- the check


def check_case(case: Case, capsys, also: str = "") -> None:
    before = directory_listing(case.watch)
    existed = case.watch.exists()
    code, _, err = call(case.main, case.argv, capsys)
    assert code == case.code, (case.argv, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    assert case.expect in lines[0], (case.expect, lines[0])
    assert also in lines[0], (also, lines[0])
    assert case.watch.exists() == existed, f"{case.watch} created or removed"
    assert directory_listing(case.watch) == before, f"{case.watch} changed"


# ----------------------------------------------------------------------------- round 4


def narrow_state(seed: int = 0) -> dict:
    """A sixteenth-wide ResNet-50 state dict (BatchNorm statistics included)."""
    import torch

    from voc_jax.convert import torch_models

    torch.manual_seed(seed)
    return dict(torch_models.classifier("resnet50", 10, 1 / 16).state_dict())


def test_convert_round4_errors(tmp_path, capsys):
    """--force never deletes a directory that is not a converter output; two tensors that
    become one name, non-finite weights and negative variances are refused naming them;
    --verify-size is bounded up front; a pickle of Python objects is refused without
    suggesting weights_only=False; a long layout report is one line."""
    import torch

    users = tmp_path / "thesis"
    (users / "sub").mkdir(parents=True)
    (users / "thesis.tex").write_text("chapter 1")
    (users / "sub" / "data.csv").write_text("1,2")
    good = tmp_path / "good.pth"
    state = narrow_state()
    torch.save(state, good)
    dup = tmp_path / "dup.pth"
    torch.save(state | {"module.fc.bias": state["fc.bias"].clone()}, dup)
    nan = tmp_path / "nan.pth"
    torch.save(
        state | {"layer2.0.conv2.weight": state["layer2.0.conv2.weight"] * float("nan")}, nan
    )
    neg = tmp_path / "neg.pth"
    torch.save(state | {"layer1.0.bn1.running_var": -state["layer1.0.bn1.running_var"]}, neg)
    obj = tmp_path / "obj.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, obj)
    vgg = tmp_path / "vgg.pth"
    torch.save(dict(torch.nn.Sequential(torch.nn.Linear(3, 3)).state_dict()), vgg)
    out = tmp_path / "out"
    r50 = ["--arch", "resnet50"]
    cases = [
        Case(converter_main, [*r50, "--pth", str(good), "--out", str(users), "--force"],
             "is not a converter output (it holds sub, thesis.tex)", users),
        Case(converter_main, [*r50, "--pth", str(dup), "--out", str(out)],
             "entries 'fc.bias' and 'module.fc.bias' are the same tensor", out),
        Case(converter_main, [*r50, "--pth", str(nan), "--out", str(out)],
             "layer2.0.conv2.weight: ", out),
        Case(converter_main, [*r50, "--pth", str(neg), "--out", str(out)],
             "layer1.0.bn1.running_var: negative variance", out),
        Case(converter_main, [*r50, "--pth", str(good), "--out", str(out), "--verify",
                              "--verify-size", "100000"], "at most 2048 pixels a side", out),
        Case(converter_main, ["--pth", str(obj), "--out", str(out)],
             "holds Python objects besides tensors", out),
        Case(converter_main, [*r50, "--pth", str(vgg), "--out", str(out)],
             "(--verbose lists all", out),
    ]  # fmt: skip
    for case in cases:
        check_case(case, capsys)
    code, _, err = call(converter_main, ["--pth", str(obj), "--out", str(out)], capsys)
    assert "weights_only=False" not in err
    code, printed, _ = call(
        converter_main, [*r50, "--pth", str(vgg), "--out", str(out), "--verbose"], capsys
    )
    assert code == 2 and "missing layer4.2.bn3.running_var" in printed


def test_a_converter_output_is_replaced_with_force(tmp_path, capsys):
    import torch

    good = tmp_path / "good.pth"
    torch.save(narrow_state(), good)
    out = tmp_path / "out"
    argv = ["--arch", "resnet50", "--pth", str(good), "--out", str(out)]
    assert converter_main(argv) == 0
    assert converter_main([*argv, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "params.msgpack"]


def test_non_finite_converted_weights_are_refused_at_load(tmp_path, capsys):
    """Weights written before voc-jax checked their values (or damaged since) are refused
    when training loads them (init.weights), naming the tensor."""
    import numpy as np

    from voc_jax import weights as weights_lib
    from voc_jax.convert import converter, layout
    from voc_jax.models import resnet

    state = {k: v.numpy() for k, v in narrow_state().items()}
    variables, _, _ = layout.torch_to_flax(resnet.BACKBONE, state, "mem")
    variables["batch_stats"]["layer3_1"]["bn2"]["var"] = -np.ones_like(
        variables["batch_stats"]["layer3_1"]["bn2"]["var"]
    )
    meta = converter._from_state(
        resnet.BACKBONE,
        state,
        _torch_file(tmp_path, state),
        {"kind": "pth", "name": "x"},
        resnet.BACKBONE.preprocessing,
    ).metadata
    out = weights_lib.save_converted(tmp_path / "w", variables, meta)
    with pytest.raises(
        weights_lib.WeightsError, match="batch_stats/layer3_1/bn2/var: negative variance"
    ):
        weights_lib.load_converted(out)


def _torch_file(tmp_path, state):
    import torch

    path = tmp_path / "s.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


def test_evaluate_and_predict_refuse_to_score_a_random_network(tmp_path, capsys, tiny_data_root):
    """No checkpoint and an empty init.weights: refused, as train --config.num_epochs=0 is;
    a checkpoints/ that is a file cannot be listed."""
    from tests.configs import tiny
    from voc_jax import workdir as workdir_lib

    work = tmp_path / "w"
    work.mkdir()
    config = tiny.get_config()
    config.data.root = str(tiny_data_root)
    (work / "config.json").write_text(config.to_json_best_effort())
    cases = [
        Case(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], "nothing to evaluate", work),
        Case(
            predict.main,
            ["voc_jax.predict", f"--workdir={work}", "x.jpg"],
            "nothing to evaluate",
            work,
        ),
    ]
    for case in cases:
        check_case(case, capsys)
    (work / workdir_lib.CHECKPOINTS).write_text("")
    check_case(
        Case(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], "is not a directory", work),
        capsys,
    )


def test_evaluate_a_workdir_in_use_before_its_config_says_so(tmp_path, capsys):
    from voc_jax.workdir_lock import WorkdirLock

    work = tmp_path / "w"
    with WorkdirLock(work, "train"):
        check_case(
            Case(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"],
                 "is in use by process", work / "eval"),
            capsys,
        )  # fmt: skip


def test_an_image_past_the_pixel_limit_is_one_line(tmp_path, capsys, trained_tiny):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (9000, 8000)).save(big)  # 72 MP: past the default 64 MP
    out = tmp_path / "pred"
    out.mkdir()  # stays empty
    check_case(
        Case(predict.main, ["voc_jax.predict", f"--workdir={trained_tiny}", f"--out={out}",
                            str(big)], "is 9000x8000 pixels (72.0 MP", out),
        capsys,
    )  # fmt: skip


def test_resume_refuses_a_toggled_bn_update(tmp_path, capsys, trained_tiny):
    work = tmp_path / "w"
    shutil.copytree(trained_tiny, work)
    argv = train_args(work, "--config.model.bn_update=True")
    check_case(Case(train.main, argv, "model.bn_update: False in config.json, True now",
                    work / "checkpoints"), capsys)  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_read_only_predict_folder_is_refused_before_predicting(
    tmp_path, capsys, trained_tiny, tiny_data_root
):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    image = next((tiny_data_root / "JPEGImages").glob("*.jpg"))
    argv = ["voc_jax.predict", f"--workdir={trained_tiny}", f"--out={out}", str(image)]
    check_case(Case(predict.main, argv, "cannot write there", out), capsys)
