"""voc_jax/compare.py: the method against the whole-image linear probe and chance on genuine
VOC 2007 photos, at a tiny size and on a narrow AlexNet (the plumbing: one table, the plot,
the score maps, the floor; EfficientNet-Lite0's compiles alone would take minutes). CI runs
the real thing, EfficientNet-Lite0's genuine weights in the ci setting on every photo
(.ci/run, scripts/quickstart.py); docs/real_voc.md has the measured tables."""

from __future__ import annotations

import json

import pytest

from voc_jax import compare

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


@pytest.mark.slow  # a frozen run, a probe and chance on 24 + 24 real photos
def test_one_table_for_the_method_the_probe_and_chance(
    shared_data, narrow_weights, tmp_path, capsys
):
    voc = shared_data / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    out = tmp_path / "cmp"
    argv = ["--voc", str(voc), "--out", str(out), "--weights", str(narrow_weights), "--config",
            "voc_jax/configs/voc07_alexnet.py", "--setting", "ci", "--methods",
            "frozen,probe,chance", "--images", "24", "--score-maps", "1", "--floor", "0",
            *(f"--train-arg={a}" for a in TINY)]  # fmt: skip
    assert compare.main(argv) == 0
    results = json.loads((out / "results.json").read_text())["methods"]
    assert set(results) == {"frozen", "probe", "chance"}
    for row in results.values():
        assert set(row["results"]) == {"voc07", "area"} and row["seconds"] >= 0
        assert len(row["results"]["voc07"]["ap"]) == 20
    report = (out / "report.md").read_text()
    assert "| class | patches, frozen (Oquab): voc07 |" in report and "| wall time |" in report
    assert "linear probe, 160 px: area" in report and "chance: voc07" in report
    assert (out / "ap_bars.png").stat().st_size > 0 and list((out / "score_maps").glob("*.png"))
    assert (out / "frozen" / "feature_cache").is_dir()  # the frozen method trains from it
    # The floor: a method below it fails the command (exit 1).
    assert compare.main([*argv[: -len(TINY) - 2], "--methods", "probe", "--floor", "101"]) == 1
    assert "below the floor 101" in capsys.readouterr().err


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert compare.main(["--voc", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a VOC2007 directory" in capsys.readouterr().err
    (tmp_path / "Annotations").mkdir()
    argv = ["--voc", str(tmp_path), "--out", str(tmp_path / "o"), "--methods", "frozen,svm"]
    assert compare.main(argv) == 2
    assert "--methods svm: expected some of" in capsys.readouterr().err


def test_the_fine_tuned_run_starts_from_the_frozen_head(tmp_path, capsys):
    """LP-FT by default: without a frozen checkpoint the fine-tuned run is refused before
    any training, naming both ways out; the table's label says which head started it."""
    voc = tmp_path / "voc"
    for split in ("train", "val", "trainval", "test"):
        (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("")
    (voc / "Annotations").mkdir()
    argv = ["--voc", str(voc), "--out", str(tmp_path / "o"), "--weights", str(tmp_path),
            "--methods", "finetune"]  # fmt: skip
    for method in ("frozen", "finetune"):
        (tmp_path / "o" / method).mkdir(parents=True)
        (tmp_path / "o" / method / "earlier").write_text("")
    assert compare.main([*argv, "--fresh"]) == 2
    err = capsys.readouterr().err
    assert "frozen has no checkpoint" in err and "--finetune-head fresh" in err
    # --fresh removed the earlier fine-tuned run only: the frozen one is not being redone.
    assert not (tmp_path / "o" / "finetune").exists()
    assert (tmp_path / "o" / "frozen" / "earlier").is_file()
    setting = compare.SETTINGS["cpu"]
    assert compare.method_label("finetune", setting) == "patches, fine-tuned from the frozen head"
    assert compare.method_label("finetune", setting, "fresh") == "patches, fine-tuned, fresh head"
    assert compare.method_label("probe", setting, "fresh") == "linear probe, 224 px"
    assert "--config.init.head_from" not in " ".join(setting.finetune)  # compare adds it
