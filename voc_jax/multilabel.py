"""The label-set metrics multi-label papers report beside mAP (pure NumPy): per-class and
overall precision, recall and F1 (CP, CR, CF1, OP, OR, OF1), as the COCO multi-label
literature defines them (ML-GCN, ASL, ML-Decoder, Query2Label), at a score threshold and for
each image's top-k labels.

A label is predicted when its probability is at least ``threshold`` (0.5: a logit of 0, as
those papers count); with ``top_k`` only each image's k best labels may be predicted (ML-GCN's
``overall_topk``: the k best, of those at least the threshold). Per class c, over the images:
``N_correct`` (predicted and positive), ``N_predicted`` and ``N_positive``. Then

    CP = mean_c N_correct / N_predicted     CR = mean_c N_correct / N_positive
    OP = sum N_correct / sum N_predicted    OR = sum N_correct / sum N_positive
    CF1 = 2 CP CR / (CP + CR)               OF1 = 2 OP OR / (OP + OR)

Targets as everywhere here: 1 positive, 0 ignored (VOC's difficult only, COCO's crowd), -1
negative. Ignored pairs count on neither side (never predicted, correct or positive), as the
AP protocols ignore them. A class without a positive image is left out of CP, CR and the
overall sums (as it is left out of mAP); a class nothing is predicted for has precision 0
(the papers' code divides by zero there). F1 of zero precision and recall is 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NAMES = ("CP", "CR", "CF1", "OP", "OR", "OF1")
THRESHOLD = 0.5  # a label is predicted at this probability (a logit of 0)
TOP_K = 3  # the top-k variant the COCO multi-label papers report


@dataclasses.dataclass(frozen=True)
class LabelCounts:
    correct: np.ndarray  # [C] predicted and positive
    predicted: np.ndarray  # [C]
    positive: np.ndarray  # [C]


def predictions(probabilities: np.ndarray, threshold: float = 0.5, top_k: int | None = None):
    """bool [N, C]: the labels each image is said to have."""
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be [images, classes], got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("non-finite probabilities; fix the model")
    chosen = p >= threshold
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        # the k best of each row (ties: the lower class index first, a stable order)
        order = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
        best = np.zeros_like(chosen)
        np.put_along_axis(best, order, True, axis=1)
        chosen &= best
    return chosen


def label_counts(predicted: np.ndarray, targets: np.ndarray) -> LabelCounts:
    targets = np.asarray(targets)
    if predicted.shape != targets.shape:
        raise ValueError(f"predictions {predicted.shape} and targets {targets.shape} differ")
    counted = targets != 0
    positive = targets == 1
    said = predicted & counted
    return LabelCounts(
        correct=(said & positive).sum(axis=0),
        predicted=said.sum(axis=0),
        positive=positive.sum(axis=0),
    )


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def scores_of(counts: LabelCounts) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (fractions, not %) over the classes with a positive image;
    NaN for all where no class has one."""
    keep = counts.positive > 0
    if not keep.any():
        return dict.fromkeys(NAMES, float("nan"))
    correct, predicted = counts.correct[keep], counts.predicted[keep]
    positive = counts.positive[keep]
    per_p = np.divide(correct, predicted, out=np.zeros(len(correct)), where=predicted > 0)
    per_r = correct / positive
    cp, cr = float(per_p.mean()), float(per_r.mean())
    total_predicted = int(predicted.sum())
    op = float(correct.sum() / total_predicted) if total_predicted else 0.0
    o_r = float(correct.sum() / positive.sum())
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": o_r, "OF1": _f1(op, o_r)}


def label_metrics(
    probabilities: np.ndarray, targets: np.ndarray, threshold: float = 0.5, top_k: int = 3
) -> dict[str, dict[str, float]]:
    """{"all": the six at the threshold, "top<k>": the six for each image's k best labels}."""
    every = label_counts(predictions(probabilities, threshold), targets)
    best = label_counts(predictions(probabilities, threshold, top_k), targets)
    return {"all": scores_of(every), f"top{top_k}": scores_of(best)}


def label_results(probabilities: np.ndarray, targets: np.ndarray, score: str) -> dict:
    """``label_metrics`` at the project's threshold and k, with what the probability is (the
    form evaluation tables, ``ap_table.json`` and compare's report carry)."""
    sets = label_metrics(probabilities, targets, THRESHOLD, TOP_K)
    return {"threshold": THRESHOLD, "top_k": TOP_K, "score": score, **sets}
