"""Average precision for VOC classification, three protocols (pure NumPy).

Targets follow the official per-class files: 1 positive, 0 difficult only, -1 negative.

- ``voc07``: the official VOC 2007 devkit: images with target 0 ignored, 11-point
  interpolated AP (mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t).
- ``area``: official difficult handling, all-points AP (area under the monotone precision
  envelope, the VOC 2010+ devkit).
- ``reference``: what the neon reference computed (docs/reference.md, "Metric"): target 0 counts as
  positive, all-points AP, and an image scoring below 1e-6 is neither a true nor a false
  positive while the positives among such images STAY in the recall denominator (recall =
  TP / all positive images). A class whose every image is below the floor gets AP 0, and the
  mean is the plain mean over all classes, those zeros included.

Ties: images are ranked by score with a stable sort, so tied images keep their dataset
order, as the devkit's MATLAB ``sort`` does. The reference ranked with ``np.argsort(-score)``
(quicksort, not stable): its order among tied scores was unspecified, so ties are the one
place where ``reference`` may differ from the reference's own numbers. A class without any
positive image has no AP under any protocol: it is NaN, reported, and left out of the mean
(never a silent 0; the reference would have divided by zero). NaN or infinite scores are
errors.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from voc_jax.classes import VOC_CLASSES

PROTOCOLS = ("voc07", "area", "reference")
REFERENCE_SCORE_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    precision: np.ndarray
    recall: np.ndarray


def _select(scores: np.ndarray, targets: np.ndarray, protocol: str):
    """(scores ranked, positive flags, the recall denominator) under ``protocol``."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1)
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(f"{len(bad)} non-finite scores (first at index {bad[0]}); fix the model")
    if not np.isin(targets, (-1, 0, 1)).all():
        raise ValueError("targets must be 1 (positive), 0 (difficult only) or -1 (negative)")
    if protocol in ("voc07", "area"):
        keep = targets != 0
        positive = targets == 1
        n_positive = int(positive[keep].sum())
    elif protocol == "reference":
        # Below the floor: no TP, no FP, but the image's positives still count for recall.
        positive = targets >= 0
        n_positive = int(positive.sum())
        keep = scores >= REFERENCE_SCORE_FLOOR
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return scores[keep], positive[keep], n_positive


def precision_recall(scores, targets, protocol: str = "voc07") -> PrecisionRecall:
    """Precision and recall after each ranked image that counts (the devkit's curve)."""
    s, positive, n_positive = _select(scores, targets, protocol)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    recall = tp / n_positive if n_positive else np.full(len(tp), np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return PrecisionRecall(precision, recall)


def eleven_point(pr: PrecisionRecall) -> float:
    total = 0.0
    for t in np.linspace(0, 1, 11):
        above = pr.precision[pr.recall >= t]
        total += above.max() if above.size else 0.0
    return total / 11


def area_under_envelope(pr: PrecisionRecall) -> float:
    recall = np.concatenate([[0.0], pr.recall, [1.0]])
    precision = np.concatenate([[0.0], pr.precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def average_precision(scores, targets, protocol: str = "voc07") -> float:
    """AP of one class; NaN when the class has no positive image under ``protocol``.

    ``reference``: 0 when no image reaches the 1e-6 floor (the curve is empty; recall 0).
    """
    _, _, n_positive = _select(scores, targets, protocol)
    if n_positive == 0:
        return float("nan")
    pr = precision_recall(scores, targets, protocol)
    if not len(pr.recall):
        return 0.0
    return eleven_point(pr) if protocol == "voc07" else area_under_envelope(pr)


def mean_average_precision(
    scores: np.ndarray,
    targets: np.ndarray,
    protocol: str = "voc07",
    classes: Sequence[str] | None = None,
) -> dict[str, object]:
    """Per-class APs [C] and their mean over the classes that have positives (``classes``:
    their names, for the warning about classes without positives; VOC's when there are 20)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape}: need equal [N, C]")
    ap = np.array(
        [average_precision(scores[:, c], targets[:, c], protocol) for c in range(scores.shape[1])]
    )
    missing = [int(c) for c in np.flatnonzero(np.isnan(ap))]
    if missing:
        if classes is None:
            classes = VOC_CLASSES if len(ap) == len(VOC_CLASSES) else None
        names = classes or [f"class {c}" for c in range(len(ap))]
        warnings.warn(
            f"{protocol}: {len(missing)} classes have no positive image "
            f"({', '.join(names[c] for c in missing)}); "
            "their AP is NaN and they are left out of the mean",
            stacklevel=2,
        )
    mean = float(np.nanmean(ap)) if len(missing) < len(ap) else float("nan")
    below = []
    if protocol == "reference":  # AP 0 by the reference's rule, counted in the mean
        below = [
            int(c)
            for c in range(scores.shape[1])
            if c not in missing and not (scores[:, c] >= REFERENCE_SCORE_FLOOR).any()
        ]
    return {
        "protocol": protocol,
        "ap": ap,
        "map": mean,
        "classes_without_positives": missing,
        "classes_below_floor": below,
    }


def chance_map(
    targets: np.ndarray, protocol: str = "voc07", draws: int = 200, seed: int = 0
) -> dict[str, float]:
    """mAP of uniformly random scores on these targets: the floor a model must beat.

    Measured, not assumed: on a small split the AP of random scores is far from the positive
    rate (11-point interpolation, few positives). Returns mean, std and the 99th percentile.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = np.array(
            [
                mean_average_precision(rng.random(targets.shape), targets, protocol)["map"]
                for _ in range(draws)
            ]
        )
    return {
        "mean": float(np.mean(maps)),
        "std": float(np.std(maps)),
        "p99": float(np.percentile(maps, 99)),
        "draws": draws,
    }
