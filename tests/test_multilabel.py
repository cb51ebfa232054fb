"""The multi-label label-set metrics against hand-worked examples and a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from voc_jax import multilabel

P = np.array([[0.9, 0.6, 0.2], [0.4, 0.8, 0.7], [0.7, 0.3, 0.55], [0.1, 0.2, 0.95]])
T = np.array([[1, -1, -1], [-1, 1, 0], [1, -1, 1], [-1, 1, 1]])


def test_at_the_threshold_by_hand():
    # predicted (>= 0.5): c0 {0, 2}, c1 {0, 1}, c2 {2, 3} (image 1's c2 is ignored)
    # c0: 2 correct of 2 predicted, 2 positives; c1: 1 of 2, 2; c2: 2 of 2, 2
    got = multilabel.label_metrics(P, T, top_k=1)["all"]
    assert got["CP"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert got["CR"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert got["CF1"] == pytest.approx(5 / 6)
    assert got["OP"] == pytest.approx(5 / 6) and got["OR"] == pytest.approx(5 / 6)
    assert got["OF1"] == pytest.approx(5 / 6)


def test_top_one_by_hand():
    # each image's best: c0, c1, c0, c2 -> c0 2/2 (2 pos), c1 1/1 (2 pos), c2 1/1 (2 pos)
    got = multilabel.label_metrics(P, T, top_k=1)["top1"]
    assert got["CP"] == pytest.approx(1.0)
    assert got["CR"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert got["CF1"] == pytest.approx(0.8)
    assert got["OP"] == pytest.approx(1.0) and got["OR"] == pytest.approx(4 / 6)
    assert got["OF1"] == pytest.approx(0.8)


def test_top_k_keeps_only_labels_above_the_threshold():
    # top-3 of 3 classes is every label: the same as the threshold alone
    got = multilabel.label_metrics(P, T, top_k=3)
    assert got["top3"] == got["all"]
    low = np.full((2, 3), 0.1)
    assert not multilabel.predictions(low, 0.5, top_k=2).any()


def test_classes_without_positives_are_left_out_and_unpredicted_ones_have_precision_0():
    extra = np.concatenate([P, np.full((4, 1), 0.9), np.full((4, 1), 0.1)], axis=1)
    targets = np.concatenate([T, np.full((4, 1), -1), np.array([[1], [-1], [-1], [-1]])], axis=1)
    got = multilabel.label_metrics(extra, targets)["all"]
    # class 3 (no positive) is out of everything, also the overall sums; class 4 (one
    # positive, nothing predicted): precision 0, recall 0
    assert got["CP"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert got["CR"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert got["OP"] == pytest.approx(5 / 6) and got["OR"] == pytest.approx(5 / 7)
    none = multilabel.label_metrics(P, -np.ones_like(T))["all"]
    assert all(np.isnan(v) for v in none.values())


def loop_metrics(p, t, threshold, k):
    """The definitions, one image and one class at a time."""
    n, c = p.shape
    correct, predicted, positive = [0] * c, [0] * c, [0] * c
    for i in range(n):
        ranked = sorted(range(c), key=lambda j: (-p[i, j], j))[:k]
        for j in range(c):
            if t[i, j] == 0:
                continue
            said = p[i, j] >= threshold and j in ranked
            predicted[j] += said
            positive[j] += t[i, j] == 1
            correct[j] += said and t[i, j] == 1
    keep = [j for j in range(c) if positive[j]]
    cp = sum(correct[j] / predicted[j] if predicted[j] else 0 for j in keep) / len(keep)
    cr = sum(correct[j] / positive[j] for j in keep) / len(keep)
    op = sum(correct[j] for j in keep) / max(1, sum(predicted[j] for j in keep))
    o_r = sum(correct[j] for j in keep) / sum(positive[j] for j in keep)
    f1 = lambda a, b: 0 if a + b == 0 else 2 * a * b / (a + b)  # noqa: E731
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": o_r, "OF1": f1(op, o_r)}


@pytest.mark.parametrize("seed", range(5))
def test_equal_to_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    p = rng.random((40, 7))
    t = rng.choice([-1, 0, 1], size=(40, 7), p=[0.6, 0.1, 0.3])
    for threshold in (0.3, 0.5, 0.8):
        got = multilabel.label_metrics(p, t, threshold, top_k=3)
        for key, k in (("all", 7), ("top3", 3)):
            want = loop_metrics(p, t, threshold, k)
            for name in multilabel.NAMES:
                assert got[key][name] == pytest.approx(want[name]), (threshold, key, name)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        multilabel.predictions(np.array([[np.nan, 0.1]]))
    with pytest.raises(ValueError, match="top_k"):
        multilabel.predictions(P, top_k=0)
    with pytest.raises(ValueError, match="differ"):
        multilabel.label_counts(np.ones((2, 2), bool), np.ones((2, 3)))
