"""voc_jax/compare.py: the method against the whole-image linear probe and chance on genuine
VOC 2007 photos, at a tiny size and on a narrow AlexNet (the plumbing: one table, the plot,
the score maps, the floor; EfficientNet-Lite0's compiles alone would take minutes). CI runs
the real thing, EfficientNet-Lite0's genuine weights in the ci setting on every photo
(.ci/run, scripts/quickstart.py); docs/real_voc.md has the measured tables."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from voc_jax import compare, compare_out
from voc_jax.classes import VOC_CLASSES
from voc_jax.errors import ConfigError, DataError

TINY = [
    "--config.patches.per_image=8",
    "--config.patches.min_patches=8",
    "--config.batch_size=8",
    "--config.num_epochs=1",
    "--config.model.head_hidden=32",
    "--config.data.workers=0",
    "--config.model.width=0.0625",  # WIDTH, the narrow weights'
    "--config.feature_cache.enabled=True",  # as voc07_lite0.py:frozen
]


WIDTH = 1 / 16


@pytest.fixture(scope="module")
def narrow_weights(tmp_path_factory):
    import torch

    from voc_jax.convert import command, torch_models

    src = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    torch.save(torch_models.alexnet(width=WIDTH).state_dict(), src / "a.pth")
    assert command.main(["--pth", str(src / "a.pth"), "--out", str(src / "alexnet")]) == 0
    return src / "alexnet"


def _argv(voc, out, weights, *extra):
    return ["--voc", str(voc), "--out", str(out), "--weights", str(weights), "--config",
            "voc_jax/configs/voc07_alexnet.py", "--setting", "ci", "--images", "24",
            "--score-maps", "1", "--probe-c-folds", "0", *extra,
            *(f"--train-arg={a}" for a in TINY)]  # fmt: skip


@pytest.mark.slow  # a frozen run, a probe and chance on 24 + 24 real photos, then reruns
def test_one_table_for_the_method_the_probe_and_chance(
    shared_data, narrow_weights, tmp_path, capsys, quick_compiles
):
    voc = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    out = tmp_path / "cmp"
    argv = _argv(voc, out, narrow_weights, "--methods", "frozen,probe,chance", "--floor", "0")
    assert compare.main(argv) == 0
    results = json.loads((out / "results.json").read_text())["methods"]
    assert set(results) == {"frozen", "probe", "chance"}
    for row in results.values():
        assert set(row["results"]) == {"voc07", "area"} and row["seconds"] >= 0
        assert len(row["results"]["voc07"]["ap"]) == 20
    assert results["frozen"]["reused"] is None
    report = (out / "report.md").read_text()
    assert "| class | patches, frozen (Oquab): voc07 |" in report and "| wall time |" in report
    assert "linear probe, 160 px: area" in report and "chance: voc07" in report
    assert "n/a" in report  # 24 test photos: some classes have no positive, in every row
    # the label sets beside mAP, for the methods with probabilities (not chance)
    assert set(results["frozen"]["labels"]["all"]) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert "top3" in results["probe"]["labels"] and "labels" not in results["chance"]
    assert "| patches, frozen (Oquab) | top-3, p >= 0.5 |" in report
    assert "the highest patch probability" in report
    assert (out / "ap_bars.png").stat().st_size > 0 and list((out / "score_maps").glob("*.png"))
    assert (out / "frozen" / "feature_cache").is_dir()  # the frozen method trains from it
    capsys.readouterr()

    # Anything that decides the frozen run's result changed: refused in one line before any
    # work, naming what changed and --fresh; the earlier run and report untouched.
    before = (out / "report.md").read_text()
    changed = {
        "--setting cpu": [*argv, "--setting", "cpu"],
        "--images 8": [a if a != "24" else "8" for a in argv],
        "--train-arg": [*argv, "--train-arg=--config.patches.size=64"],
    }
    for what, variant in changed.items():
        assert compare.main(variant) == 2, what
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "--fresh" in err and "other settings" in err, err
    assert "patches.size 96 -> 64" in err
    other = tmp_path / "other_weights"
    shutil.copytree(narrow_weights, other)
    meta = json.loads((other / "metadata.json").read_text())
    (other / "metadata.json").write_text(json.dumps(meta | {"note": "another conversion"}))
    assert compare.main(_argv(voc, out, other, "--methods", "frozen")) == 2
    assert "the weights (--weights)" in capsys.readouterr().err
    assert (out / "report.md").read_text() == before

    # The same command again: the run is reused (evaluated, not retrained), and said so (its
    # score maps were drawn above).
    again = _argv(voc, out, narrow_weights, "--methods", "frozen", "--score-maps", "0")
    assert compare.main(again) == 0
    row = json.loads((out / "results.json").read_text())["methods"]["frozen"]
    assert row["reused"] == {"earlier_step": row["reused"]["final_step"],
                             "final_step": row["reused"]["final_step"], "retrained": False}  # fmt: skip
    assert "**reused**" in (out / "report.md").read_text()

    # The floor: a method below it fails the command (exit 1), naming the method; a method's
    # own floor overrides the shared one.
    assert compare.main(_argv(voc, out, narrow_weights, "--methods", "probe", "--floor", "99")) == 1
    assert "linear probe, 160 px: VOC07 mAP" in capsys.readouterr().err
    assert compare.main(_argv(voc, out, narrow_weights, "--methods", "probe", "--floor", "99",
                              "--floor", "probe=0")) == 0  # fmt: skip


IMAGE_TINY = [
    "--config.image.size=224",  # the narrow AlexNet's fc6 as a 6x6 convolution: 1..2 positions
    "--config.image.scales=(1.0, 1.3)",
    "--config.num_epochs=1",
    "--config.batch_size=8",
    "--config.model.width=0.0625",
    "--config.data.workers=0",
]


@pytest.mark.slow  # two whole-image runs on 16 + 16 real photos
def test_whole_image_rows_join_the_table(
    shared_data, narrow_weights, tmp_path, capsys, quick_compiles
):
    voc = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    out = tmp_path / "cmp"
    argv = ["--voc", str(voc), "--out", str(out), "--weights", str(narrow_weights), "--setting",
            "ci", "--images", "16", "--methods", "image_frozen,image_finetune,chance",
            "--score-maps", "0", *(f"--image-arg={a}" for a in IMAGE_TINY)]  # fmt: skip
    assert compare.main(argv) == 0
    results = json.loads((out / "results.json").read_text())["methods"]
    assert set(results) == {"image_frozen", "image_finetune", "chance"}
    for m in ("image_frozen", "image_finetune"):
        assert 0 <= results[m]["results"]["voc07"]["map"] <= 1
        assert any(a.startswith("--config=voc_jax/configs/voc07_image.py:alexnet,")
                   for a in results[m]["argv"])  # fmt: skip
    # LP-FT: the fine-tuned run starts from the frozen whole-image run's head.
    assert f"--config.init.head_from={out / 'image_frozen'}" in results["image_finetune"]["argv"]
    report = (out / "report.md").read_text()
    assert "whole image, frozen: voc07" in report and "whole image, fine-tuned from the" in report
    assert "whole image: 448-px canvases" in report  # the setting, in words
    assert 0 <= results["image_frozen"]["labels"]["top3"]["OF1"] <= 1
    assert (out / "image_frozen" / "feature_cache").is_dir()  # the map cache
    # A changed image setting is a changed fingerprint: refused, naming the field.
    capsys.readouterr()
    assert compare.main([*argv, "--image-arg=--config.image.pooling=max"]) == 2
    assert "image.pooling 'avg' -> 'max'" in capsys.readouterr().err


def test_family_notes_say_which_classes_each_family_wins():
    def row(aps):
        return {"results": {"voc07": {"ap": aps}}}

    patches = [0.5] * 20
    image = [0.6] * 18 + [0.4, np.nan]
    rows = {"frozen": row(patches), "image_frozen": row(image), "chance": row([0.1] * 20)}
    notes = compare.family_notes(rows)
    assert notes[2] == "- patches (1): train" and notes[3].startswith("- whole image (18): aeropl")
    assert len(notes) == 4  # tvmonitor: no AP in one row, in neither list
    assert compare.family_notes({"frozen": row(patches)}) == []


def test_a_datasets_own_classes_name_the_table_the_notes_and_the_plot(tmp_path):
    """A VOC-layout directory with its own classes.txt: compare reads the list and its table,
    per-class notes and plot name those classes."""
    names = ("zebra", "traffic light", "kite")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    assert compare.voc_classes(tmp_path) == names
    assert compare.voc_classes(tmp_path / "none") == VOC_CLASSES

    def row(aps):
        return {"results": {p: {"ap": aps, "map": float(np.mean(aps))} for p in compare.PROTOCOLS},
                "label": "x", "seconds": 1.0}  # fmt: skip

    rows = {"frozen": row([0.5, 0.7, 0.2]), "image_frozen": row([0.6, 0.6, 0.2])}
    table = compare.table(rows, names)
    assert "| traffic light | 70.0 |" in table and "aeroplane" not in table
    assert compare.family_notes(rows, names)[2:] == [
        "- patches (1): traffic light", "- whole image (1): zebra", "- tie (1): kite"
    ]  # fmt: skip
    compare.bar_plot(rows, tmp_path / "bars.png", names)
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # converts narrow weights (torch)
def test_late_refusals_come_first(shared_data, narrow_weights, tmp_path, capsys, quick_compiles):
    """Weights of another architecture than the config's, a bad --train-arg, a missing
    --config: one error line before the probe (or anything) runs, OUT not even made."""
    voc = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    out = tmp_path / "cmp"
    base = ["--voc", str(voc), "--out", str(out), "--weights", str(narrow_weights),
            "--methods", "probe,frozen", "--images", "8"]  # fmt: skip
    cases = {
        "efficientnet_lite0": base,  # voc07_lite0.py (the default config), AlexNet weights
        "patches.size": [*base, "--config", "voc_jax/configs/voc07_alexnet.py",
                         *(f"--train-arg={a}" for a in TINY), "--train-arg=--config.patches.size=-3"],
        "no such config file": [*base, "--config", "voc_jax/configs/nope.py"],
    }  # fmt: skip
    for what, argv in cases.items():
        assert compare.main(argv) == 2, what
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and what in err, err
        assert "voc07_alexnet" in err or what != "efficientnet_lite0"  # a config that exists
        assert not out.exists()


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert compare.main(["--voc", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a VOC2007 directory" in capsys.readouterr().err
    (tmp_path / "Annotations").mkdir()
    base = ["--voc", str(tmp_path), "--out", str(tmp_path / "o")]
    cases = {
        "--methods svm: expected some of": ["--methods", "frozen,svm"],
        "--images -1: must be 0": ["--images", "-1"],
        "--floor nan: must be": ["--floor", "nan"],
        "--floor probe=x: must be": ["--floor", "probe=x"],
        "--floor image_frozen=...: not among --methods": [
            "--methods",
            "frozen,chance",
            "--floor",
            "60,image_frozen=70",
        ],
        "chance has no floor": ["--floor", "chance=5"],
        "only chance would run": ["--methods", "chance", "--floor", "10"],
        "--score-maps -2": ["--score-maps", "-2"],
        "--probe-c-folds 1: 0 (train -> val) or 2": ["--probe-c-folds", "1"],
        "no converted weights there": ["--weights", str(tmp_path / "none")],
    }
    for what, extra in cases.items():
        assert compare.main([*base, *extra]) == 2, what
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and what in err, err
    assert not (tmp_path / "o").exists()


def fake_voc(root, train=(), val=(), trainval=(), test=()):
    """A VOC directory whose split lists name these ids (no images: the refusals come first)."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split, ids in (("train", train), ("val", val), ("trainval", trainval), ("test", test)):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return root


def test_train_images_outside_trainval_are_one_line(shared_data, tmp_path, capsys):
    real = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    voc = tmp_path / "voc"
    shutil.copytree(real / "Annotations", voc / "Annotations")
    shutil.copytree(real / "JPEGImages", voc / "JPEGImages")
    ids = (real / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:4]
    tests = (real / "ImageSets" / "Main" / "test.txt").read_text().split()[:2]
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split, names in (("train", [*ids[:2], tests[0]]), ("val", ids[2:]), ("trainval", ids),
                         ("test", tests)):  # fmt: skip
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    argv = ["--voc", str(voc), "--out", str(tmp_path / "o"), "--methods", "chance"]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "train.txt: 1 image(s) not in trainval.txt" in err
    assert tests[0] in err and not (tmp_path / "o").exists()


def test_images_n_reads_and_checks_only_the_first_n(shared_data, tmp_path):
    """--images N: trainval's and test's first N are read and checked (a broken annotation
    after them does not stop a quick look), train and val are those among them, in their
    lists' order; a train image outside trainval is refused all the same."""
    from voc_jax.data.voc import VocError

    real = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    main = real / "ImageSets" / "Main"
    ids = main.joinpath("trainval.txt").read_text().split()[:6]
    tests = main.joinpath("test.txt").read_text().split()[:4]
    voc = tmp_path / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True)
    for name in (*ids, *tests):
        shutil.copy(real / "Annotations" / f"{name}.xml", voc / "Annotations")
        shutil.copy(real / "JPEGImages" / f"{name}.jpg", voc / "JPEGImages")
    lists = {"train": ids[4::-2], "val": ids[1::2], "trainval": ids, "test": tests}
    for split, names in lists.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    for broken in (ids[5], tests[3]):
        (voc / "Annotations" / f"{broken}.xml").write_text("<annotation><size>")
    splits = compare.load_real_splits(voc, 3)
    got = {split: [r.image_id for r in records] for split, records in splits.items()}
    assert got == {"train": [ids[2], ids[0]], "val": [ids[1]], "trainval": ids[:3],
                   "test": tests[:3]}  # fmt: skip
    with pytest.raises(VocError, match=f"{ids[5]}.xml"):
        compare.load_real_splits(voc, 0)
    (voc / "ImageSets" / "Main" / "train.txt").write_text(f"{ids[0]}\n{tests[0]}\n")
    with pytest.raises(DataError, match="1 image\\(s\\) not in trainval.txt"):
        compare.load_real_splits(voc, 2)


def test_out_holding_a_users_files_is_refused(shared_data, tmp_path, capsys):
    voc = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    out = tmp_path / "o"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    (out / "report.md").write_text("my report")
    for extra in ([], ["--fresh"]):
        assert (
            compare.main(["--voc", str(voc), "--out", str(out), "--methods", "chance", *extra]) == 2
        )
        assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "thesis.tex"]
    assert (out / "report.md").read_text() == "my report"
    # A new or empty OUT is compare's: marked, and chance's report written there.
    assert (
        compare.main(["--voc", str(voc), "--out", str(tmp_path / "new"), "--methods", "chance"])
        == 0
    )
    assert (tmp_path / "new" / compare_out.MARKER).is_file()


def test_fresh_checks_everything_first_and_removes_only_compares_runs(tmp_path, capsys):
    voc = fake_voc(tmp_path / "voc")
    out = compare_out.CompareOut(tmp_path / "o")
    out.claim()
    fingerprint = compare_out.Fingerprint.of({"a": 1}, "w", "i")
    for run in ("frozen", "finetune"):
        (out.path / run).mkdir()
        (out.path / run / "trained").write_text("")
        out.record(run, fingerprint)
    (out.path / "probe").mkdir()  # not compare's: never touched
    (out.path / "probe" / "thesis.tex").write_text("mine")
    typo = ["--voc", str(tmp_path / "vco"), "--out", str(out.path), "--fresh"]
    assert compare.main([*typo, "--methods", "frozen,finetune"]) == 2
    assert "not a VOC2007 directory" in capsys.readouterr().err
    assert (out.path / "frozen" / "trained").is_file() and (
        out.path / "finetune" / "trained"
    ).is_file()
    # The fine-tuned run alone, fresh: it needs the frozen run's checkpoint; refused before
    # anything is removed.
    argv = ["--voc", str(voc), "--out", str(out.path), "--weights", str(tmp_path), "--fresh"]
    (tmp_path / "metadata.json").write_text("{}")
    assert compare.main([*argv, "--methods", "finetune"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert (out.path / "finetune" / "trained").is_file()
    assert (out.path / "probe" / "thesis.tex").is_file()
    out.remove_run("finetune")
    out.remove_run("probe")  # not recorded: stays
    assert not (out.path / "finetune").exists() and (out.path / "probe" / "thesis.tex").is_file()
    assert (out.path / "frozen" / "trained").is_file()
    assert out.recorded("finetune") is None and out.recorded("frozen") is not None


def test_a_run_not_recorded_by_compare_is_refused(tmp_path):
    out = compare_out.CompareOut(tmp_path / "o")
    out.claim()
    (out.path / "frozen").mkdir()
    fingerprint = compare_out.Fingerprint.of({"a": 1}, "w", "i")
    with pytest.raises(ConfigError, match="did not make it"):
        out.check_reuse("frozen", fingerprint, fresh=True)


def test_a_recorded_run_without_checkpoints_has_nothing_to_reuse(tmp_path):
    out = compare_out.CompareOut(tmp_path / "o")
    out.claim()
    (out.path / "frozen").mkdir()
    out.record("frozen", compare_out.Fingerprint.of({"a": 1}, "w", "i"))
    other = compare_out.Fingerprint.of({"a": 2}, "w", "i")
    out.check_reuse("frozen", other, fresh=False, trained=False)  # stopped before step 1
    with pytest.raises(ConfigError, match=r"other settings \(a 1 -> 2\)"):
        out.check_reuse("frozen", other, fresh=False, trained=True)


def test_fingerprint_names_what_changed():
    old = compare_out.Fingerprint.of(
        {"patches": {"size": 96, "scales": (1.0, 2.0)}, "data": {"root": "/a"}}, "w1", "i1"
    )
    stored = dataclasses.asdict(old)
    same_but_moved = compare_out.Fingerprint.of(
        {"patches": {"size": 96, "scales": [1.0, 2.0]}, "data": {"root": "/b"}}, "w1", "i1"
    )
    assert same_but_moved.changes_from(stored) == [] and same_but_moved.digest == old.digest
    new = compare_out.Fingerprint.of(
        {"patches": {"size": 128, "scales": (1.0, 2.0)}, "data": {"root": "/a"}}, "w2", "i2", "f"
    )
    assert new.changes_from(stored) == [
        "patches.size 96 -> 128",
        "the weights (--weights)",
        "the images (--voc, --images)",
        "the frozen run its head starts from",
    ]


def test_chance_leaves_classes_without_positives_out_of_the_mean():
    from voc_jax.data.voc import VocRecord

    def record(i, label):
        return VocRecord(f"{i}", None, 10, 10, np.zeros((1, 4), np.float32),
                         np.array([label], np.int32), np.zeros(1, bool), np.zeros(1, bool))  # fmt: skip

    test = [record(i, 1 + i % 3) for i in range(30)]  # classes 1..3 only
    result = compare.run_chance({"test": test}, draws=20)
    for protocol in compare.PROTOCOLS:
        ap = np.array(result["results"][protocol]["ap"])
        assert np.isfinite(ap[:3]).all() and np.isnan(ap[3:]).all()
        assert result["results"][protocol]["map"] == pytest.approx(ap[:3].mean())
    rows = {"chance": result | {"label": "chance"}}
    assert "| cow | n/a | n/a |" in compare.table(rows)


def test_the_fine_tuned_run_starts_from_the_frozen_head(tmp_path, capsys):
    """LP-FT by default: without a frozen checkpoint the fine-tuned run is refused before
    any training, naming both ways out; the table's label says which head started it."""
    setting = compare.SETTINGS["cpu"]
    assert compare.method_label("finetune", setting) == "patches, fine-tuned from the frozen head"
    assert compare.method_label("finetune", setting, "fresh") == "patches, fine-tuned, fresh head"
    assert compare.method_label("probe", setting, "fresh") == "linear probe, 224 px"
    assert "--config.init.head_from" not in " ".join(setting.finetune)  # compare adds it


def test_the_report_describes_only_the_methods_that_ran():
    ci = compare.SETTINGS["ci"]
    text = ci.describe(["frozen", "probe", "chance"])
    assert "frozen: 6 epochs" in text and "fine-tuned" not in text and "160 px" in text
    assert "fine-tuned: 60 trainval images" in ci.describe(["finetune"])
    assert ci.describe(["chance"]) == "chance only"
    assert ci.describe(["probe", "probe_own"]) == "the probe at 160 px and at the photos' own sizes"


@pytest.mark.slow  # a subprocess
def test_quickstart_checks_voc_before_converting(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "quickstart.py"), "--voc", str(tmp_path / "nope"),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "not a VOC2007 directory" in done.stderr
    assert done.stderr.count("error:") == 1 and not (tmp_path / "work").exists()


def test_the_compile_cache_goes_in_out_unless_the_user_chose_one(tmp_path, monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/theirs")
    compare.use_compile_cache(tmp_path / "xla_cache")
    assert jax.config.jax_compilation_cache_dir == before
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        compare.use_compile_cache(tmp_path / "xla_cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla_cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_the_compile_cache_is_set_once_out_is_compares(shared_data, tmp_path, monkeypatch):
    """The checks before may compile small programs, and JAX makes its cache directory at the
    first compile: set earlier, OUT/xla_cache appeared before OUT was marked and the claim
    refused OUT as not compare's (the quickstart failed so). Now it is set after the claim."""
    calls = []

    def record(directory):
        calls.append((directory, (directory.parent / compare_out.MARKER).is_file()))

    monkeypatch.setattr(compare, "use_compile_cache", record)
    voc = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    argv = ["--voc", str(voc), "--out", str(tmp_path / "o"), "--methods", "chance", "--images", "8"]
    assert compare.main(argv) == 0
    assert calls == [(tmp_path / "o" / "xla_cache", True)]
