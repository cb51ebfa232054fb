"""voc_jax/metrics.py against the devkit's formulas, hand-worked examples and sklearn's facts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from voc_jax import metrics


def average_precision_score(*args):
    """scikit-learn's AP, imported when a test uses it (its import is a second of every
    pytest worker's collection otherwise)."""
    from sklearn.metrics import average_precision_score as sklearn_ap

    return sklearn_ap(*args)


def devkit_area(scores, targets):
    """The VOC2010+ devkit VOCevalcls/VOCap, transcribed loop by loop."""
    keep = targets != 0
    s, gt = scores[keep], targets[keep] > 0
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(gt[order]).astype(float)
    fp = np.cumsum(~gt[order]).astype(float)
    rec = tp / gt.sum()
    prec = tp / (tp + fp)
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


@pytest.mark.parametrize("seed", range(20))
def test_area_equals_devkit_formula(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    targets = rng.choice([-1, -1, -1, 0, 1], n)
    targets[0] = 1
    scores = rng.random(n)
    assert metrics.average_precision(scores, targets, "area") == pytest.approx(
        devkit_area(scores, targets), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(20))
def test_sklearn_is_never_above_the_envelope(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 300))
    targets = rng.choice([-1, 1], n, p=[0.7, 0.3])
    targets[0] = 1
    scores = rng.random(n)  # no ties
    ours = metrics.average_precision(scores, targets, "area")
    sk = average_precision_score(targets > 0, scores)
    assert sk <= ours + 1e-12


def test_sklearn_equals_area_when_precision_is_monotone():
    # All positives first: precision is 1 then decreasing monotonically after the last positive.
    targets = np.array([1, 1, 1, -1, -1, -1, -1])
    scores = np.linspace(1, 0, 7)
    assert metrics.average_precision(scores, targets, "area") == pytest.approx(
        average_precision_score(targets > 0, scores)
    )
    # Precision non-increasing in recall: 1, 1/2 at recall 1/2 ... (a positive, a negative, a positive at the end)
    targets = np.array([1, -1, -1, 1])
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    ours = metrics.average_precision(scores, targets, "area")
    assert ours == pytest.approx(average_precision_score(targets > 0, scores))
    assert ours == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)


def test_voc07_hand_worked():
    # Ranked: + - + - ; 2 positives. Recall/precision after each: (.5, 1), (.5, .5), (1, 2/3), (1, .5)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    targets = np.array([1, -1, 1, -1])
    # t = 0 .. 0.5 (6 points): max precision at recall >= t is 1; t = 0.6 .. 1 (5 points): 2/3.
    want = (6 * 1.0 + 5 * (2 / 3)) / 11
    assert metrics.average_precision(scores, targets, "voc07") == pytest.approx(want)


def test_voc07_ties_keep_dataset_order():
    # Two images tie; the stable order puts the negative (listed first) ahead of the positive.
    scores = np.array([0.5, 0.5, 0.9])
    targets = np.array([-1, 1, 1])
    # Ranked: + (0.9), - , + : recall .5 p 1; .5 p .5; 1 p 2/3
    want = (6 * 1.0 + 5 * (2 / 3)) / 11
    assert metrics.average_precision(scores, targets, "voc07") == pytest.approx(want)
    swapped = metrics.average_precision(scores[[1, 0, 2]], targets[[1, 0, 2]], "voc07")
    assert swapped == pytest.approx(1.0)


def test_protocols_differ_exactly_where_they_should():
    scores = np.array([0.9, 0.8, 0.7, 0.5, 1e-9])
    targets = np.array([1, 0, -1, 1, 1])
    # voc07/area ignore the difficult image (index 1); reference counts it positive but drops
    # the image scoring below 1e-6 (index 4).
    voc07 = metrics.average_precision(scores, targets, "voc07")
    area = metrics.average_precision(scores, targets, "area")
    ref = metrics.average_precision(scores, targets, "reference")
    # voc07 ranking: + - + +(last, 1e-9): recalls 1/3 (p1), 1/3 (p .5), 2/3 (p 2/3), 1 (p 3/4)
    assert voc07 == pytest.approx((4 * 1.0 + 3 * 0.75 + 4 * 0.75) / 11)
    assert area == pytest.approx(devkit_area(scores, targets))
    # reference: 4 positives (the difficult image and the one below 1e-6 included); ranked over
    # the 4 images above the floor: + + - + : recall .25 p1, .5 p1, .5 p 2/3, .75 p .75; the
    # positive below the floor is never reached, so recall stops at .75.
    assert ref == pytest.approx(0.5 * 1.0 + 0.25 * 0.75)
    assert len({round(voc07, 6), round(area, 6), round(ref, 6)}) == 3


def test_no_positive_class_is_nan_and_left_out():
    scores = np.random.default_rng(0).random((6, 3))
    targets = np.array([[1, -1, 1], [-1, -1, 1], [1, 0, -1], [-1, -1, -1], [1, -1, 1], [-1, 0, -1]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = metrics.mean_average_precision(scores, targets, "voc07")
    assert np.isnan(result["ap"][1]) and result["classes_without_positives"] == [1]
    assert result["map"] == pytest.approx(np.mean(result["ap"][[0, 2]]))
    assert any("no positive image" in str(w.message) for w in caught)
    # Under the reference protocol the difficult images make class 1 positive.
    ref = metrics.mean_average_precision(scores, targets, "reference")
    assert not np.isnan(ref["ap"][1])


def test_bad_scores_and_targets_are_errors():
    with pytest.raises(ValueError, match="non-finite"):
        metrics.average_precision(np.array([0.1, np.nan]), np.array([1, -1]))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.average_precision(np.array([np.inf, 0.2]), np.array([1, -1]))
    with pytest.raises(ValueError, match="targets"):
        metrics.average_precision(np.array([0.1, 0.2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="protocol"):
        metrics.average_precision(np.array([0.1]), np.array([1]), "voc12")


def test_perfect_and_worst_rankings():
    targets = np.array([1, 1, -1, -1])
    for protocol in metrics.PROTOCOLS:
        assert metrics.average_precision(np.array([4, 3, 2, 1.0]), targets, protocol) == 1.0
    # Ranked - - + + : precision 1/3 then 1/2; the envelope lifts recall 0.5 to 1/2.
    assert metrics.average_precision(np.array([1, 2, 3, 4.0]), targets, "area") == pytest.approx(
        0.5
    )


def test_chance_map_matches_a_plain_loop():
    rng = np.random.default_rng(5)
    targets = np.where(rng.random((40, 20)) < 0.15, 1, -1)
    targets[0] = 1  # every class has a positive
    got = metrics.chance_map(targets, "voc07", draws=30, seed=2)
    draw = np.random.default_rng(2)
    maps = [
        metrics.mean_average_precision(draw.random(targets.shape), targets, "voc07")["map"]
        for _ in range(30)
    ]
    assert got["mean"] == pytest.approx(np.mean(maps))
    assert got["p99"] == pytest.approx(np.percentile(maps, 99))
    # Random scores sit well above the positive rate here (few positives per class).
    assert got["mean"] > (targets == 1).mean()


def reference_loop(scores, targets):
    """docs/reference.md's "Metric" rule, transcribed as plainly as possible: rank by score; an image
    below 1e-6 is neither TP nor FP; recall over every positive image (difficult included);
    all-points AP; 0 when nothing is above the floor."""
    floor = 1e-6
    n_positive = sum(1 for t in targets if t >= 0)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    tp = fp = 0
    recalls, precisions = [], []
    for i in order:
        if scores[i] < floor:
            continue
        if targets[i] >= 0:
            tp += 1
        else:
            fp += 1
        recalls.append(tp / n_positive)
        precisions.append(tp / (tp + fp))
    if not recalls:
        return 0.0
    mrec = [0.0, *recalls, 1.0]
    mpre = [0.0, *precisions, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum(
        (mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
    )


def test_reference_minimal_case_keeps_floored_positives_in_recall():
    # Issue 13's minimal case: the positive at index 2 scores below 1e-6 and is never found.
    scores = np.array([0.9, 0.5, 1e-7, 1e-7])
    targets = np.array([1, -1, 1, -1])
    assert metrics.average_precision(scores, targets, "reference") == pytest.approx(0.5)


def test_reference_class_entirely_below_the_floor_is_zero_and_counted():
    scores = np.array([[0.9, 1e-8], [0.1, 1e-9], [0.5, 5e-7]])
    targets = np.array([[1, 1], [-1, -1], [-1, 0]])
    result = metrics.mean_average_precision(scores, targets, "reference")
    assert result["ap"][1] == 0.0 and result["classes_below_floor"] == [1]
    assert result["classes_without_positives"] == []
    assert result["map"] == pytest.approx((1.0 + 0.0) / 2)  # the zero is in the mean


@pytest.mark.parametrize("seed", range(40))
def test_reference_equals_a_plain_loop(seed):
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(1, 120))
    targets = rng.choice([-1, -1, 0, 1], n)
    targets[rng.integers(n)] = 1
    # Scores straddling the floor, with exact ties, to exercise every branch.
    scores = rng.choice([0.0, 1e-7, 1e-6, 0.25, 0.5], n) * rng.choice([1.0, 1.0, 0.5], n)
    scores = np.where(rng.random(n) < 0.5, rng.random(n) * 10.0 ** -rng.integers(0, 9, n), scores)
    want = reference_loop(scores.tolist(), targets.tolist())
    assert metrics.average_precision(scores, targets, "reference") == pytest.approx(want, abs=1e-12)
