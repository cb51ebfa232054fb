"""voc_jax/evaluate.py: the AP table, devkit result files, comparability with the paper."""

from __future__ import annotations

import warnings

import numpy as np

from voc_jax import evaluate
from voc_jax.classes import VOC_CLASSES


def random_results(seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.choice([-1, -1, -1, 0, 1], (60, 20))
    targets[:2] = 1
    scores = rng.random((60, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scores, targets, evaluate.ap_results(scores, targets, ("voc07", "area", "reference"))


def test_table_has_every_class_in_order_and_the_mean():
    _, _, results = random_results()
    table = evaluate.format_table(results, with_reference=False)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| class | AP voc07 | AP area | AP reference |"
    assert [r.split(" | ")[0][2:] for r in rows[1:21]] == list(VOC_CLASSES)
    mean_row = rows[21].split(" | ")
    assert mean_row[0] == "| **mAP**"
    for col, protocol in enumerate(("voc07", "area", "reference"), start=1):
        assert float(mean_row[col].strip(" |")) == round(100 * np.mean(results[protocol]["ap"]), 2)
    for protocol in ("voc07", "area", "reference"):
        assert f"AP {protocol}: {evaluate.PROTOCOL_NAMES[protocol]}" in table


def test_reference_column_only_when_comparable():
    _, _, results = random_results()
    table = evaluate.format_table(results, with_reference=True)
    assert "published (reference protocol)" in table
    assert "| aeroplane |" in table and "81.17" in table and "74.67" in table
    ours = 100 * results["reference"]["ap"][0]
    assert f"{ours - 81.17:+.2f}" in table.splitlines()[2]


def test_result_files_parse_back(tmp_path):
    scores, _, _ = random_results()
    ids = [f"{i:06d}" for i in range(len(scores))]
    evaluate.write_result_files(tmp_path, "test", ids, scores)
    assert (tmp_path / "results" / "comp1_cls_test_tvmonitor.txt").read_text().startswith("000000 ")
    back_ids, back = evaluate.read_result_files(tmp_path / "results", "test")
    assert back_ids == ids
    np.testing.assert_allclose(back, scores, rtol=1e-7)


def test_only_the_full_real_test_split_is_compared(tmp_path):
    assert evaluate.is_voc2007_test(tmp_path, "test", 4952)
    assert not evaluate.is_voc2007_test(tmp_path, "test", 417)
    assert not evaluate.is_voc2007_test(tmp_path, "trainval", 4952)
    (tmp_path / "synthetic.json").write_text("{}")
    assert not evaluate.is_voc2007_test(tmp_path, "test", 4952)


def test_other_classes_name_the_rows_files_and_plots_and_never_the_reference(tmp_path):
    """A dataset's own classes (24 here): its names in the table, one devkit file each, the
    plots sized to them; the published column only for VOC's classes in VOC's order."""
    names = [f"widget {c}" for c in range(24)]
    rng = np.random.default_rng(2)
    targets = rng.choice([-1, 1], (30, 24))
    targets[:2] = 1
    scores = rng.random((30, 24))
    results = evaluate.ap_results(scores, targets, ("voc07", "reference"), names)
    table = evaluate.format_table(results, False, names)
    assert "| widget 23 |" in table and "aeroplane" not in table
    assert not evaluate.is_voc2007_test(tmp_path, "test", 4952, names)
    assert not evaluate.is_voc2007_test(tmp_path, "test", 4952, VOC_CLASSES[::-1])
    ids = [f"{i:03d}" for i in range(30)]
    evaluate.write_result_files(tmp_path, "val", ids, scores, names)
    assert len(list((tmp_path / "results").glob("comp1_cls_val_widget *.txt"))) == 24
    np.testing.assert_allclose(evaluate.read_result_files(tmp_path / "results", "val", names)[1],
                               scores, rtol=1e-7)  # fmt: skip
    evaluate.write_plots(tmp_path, scores, targets, results, False, names)
    assert (tmp_path / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_an_evaluation_becomes_one_metrics_row():
    scores, targets, results = random_results()
    labels = evaluate.label_results(scores, targets, "p")
    row = evaluate.metric_row({"results": results, "labels": labels})
    assert row["eval_map_voc07"] == results["voc07"]["map"]
    assert row["eval_CP"] == labels["all"]["CP"] and row["eval_OF1_top3"] == labels["top3"]["OF1"]
    assert len(row) == 3 + 2 * 6


def test_plots_are_written(tmp_path):
    scores, targets, results = random_results()
    evaluate.write_plots(tmp_path, scores, targets, results, with_reference=True)
    for name in ("pr_curves.png", "ap_bars.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_reference_column_counts_classes_below_the_floor_as_zero():
    scores, targets, _ = random_results()
    scores[:, 3] = 1e-8  # boat: every image below the reference's 1e-6 floor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate.ap_results(scores, targets, ("voc07", "reference"))
    table = evaluate.format_table(results, with_reference=True)
    boat = next(line for line in table.splitlines() if line.startswith("| boat |"))
    assert boat.split(" | ")[2] == "0.00" and "-74.84" in boat
    assert "every image scores below 1e-6 for boat" in table
    assert results["reference"]["map"] == np.mean(results["reference"]["ap"])


def test_evaluation_warnings_are_one_log_line_each(tmp_path, trained_tiny, capsys):
    """Classes without positives on the tiny test split warn: one line each, no source line."""
    import shutil

    from tests.helpers import call

    work = tmp_path / "w"
    shutil.copytree(trained_tiny, work)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown even if this process warned the same before
        code, _, err = call(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], capsys)
    assert code == 0
    warned = [line for line in err.splitlines() if "have no positive image" in line]
    assert warned and all(" WARNING " in line for line in warned)
    assert "UserWarning" not in err and "mean_average_precision(" not in err


def test_sigterm_during_evaluation_is_one_line_and_exit_130(
    tmp_path, trained_tiny, capsys, monkeypatch
):
    """SIGTERM while scoring: "interrupted", status 130, the workdir lock released."""
    import gc
    import os
    import shutil
    import signal
    import time

    from tests.helpers import call
    from voc_jax.workdir_lock import LOCK_FILE

    work = tmp_path / "w"
    shutil.copytree(trained_tiny, work)

    def terminated(*args, **kwargs):
        # The handler raises KeyboardInterrupt at the next bytecode; with the collector off,
        # that is here and not inside some object's __del__ that a collection happened to
        # run (where it would be "unraisable": a warning and a traceback after a passing run).
        gc.disable()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives first
        finally:
            gc.enable()
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(evaluate, "compute_scores", terminated)
    code, _, err = call(evaluate.main, ["voc_jax.evaluate", f"--workdir={work}"], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not (work / LOCK_FILE).exists()
