"""The field's standard baseline: a linear classifier per class on the whole image's pooled
features, the VOC07 linear evaluation of the self-supervised literature, on the same converted
weights and photos as the patch method, made as strong as it honestly can be
(docs/real_voc.md, "The probe, one change at a time", measures each choice below).

Each photo goes through the pretrained backbone once, whole: resized to the network's input
size (``size``, bilinear with antialiasing, aspect not kept), or at its own size (``size=None``:
the network pools any size; each side rounded to a multiple of ``round_to`` pixels, at most
32 px, so that photos share a few compiled shapes instead of one per size, each compiled for
the smallest batch its photos need). The features are what the transfer head reads (AlexNet
and VGG-16: fc7; ResNet-50 and EfficientNet-Lite0: the globally pooled features), each
photo's scaled to unit length, then standardised with the training data's mean and
deviation. One scikit-learn L2 logistic regression per class: positives are the images with
a non-difficult object of the class, negatives those without any, difficult-only images are
left out (the official protocol ignores them); C is chosen per class by 5-fold
cross-validation on trainval (all-points AP; ``c_folds=0``: on train -> val), the grid widened
past an edge while it improves, then refit on trainval and scored on test. Nothing is chosen
on test. The APs use the same protocols as the method's evaluation (voc_jax.metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from voc_jax import metrics, multilabel, weights
from voc_jax.classes import VOC_CLASSES
from voc_jax.data.pipeline import decode_image
from voc_jax.data.voc import VocRecord
from voc_jax.models.transfer import TransferNet

log = logging.getLogger(__name__)
C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
C_LIMITS = (1e-8, 1e4)  # how far choose_c widens the grid past its edges


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    size: int | None = 224  # the network's input side; None: each photo at its own size
    round_to: int = 64  # own size: each side rounded to a multiple of this (>= 1): few compiles
    batch: int = 16  # photos per forward pass (of one shape)
    fit_batch: bool = True  # a shape with fewer photos: the smallest power of two holding them
    c_grid: tuple[float, ...] = C_GRID
    widen_c: bool = True  # past the grid's edge while the val AP improves (to C_LIMITS)
    select_by: str = "area"  # the val AP that chooses C: all-points (area) or 11-point (voc07)
    standardise: bool = True  # each feature to zero mean, unit deviation on the training split
    max_iter: int = 3000  # the solver's (lbfgs) iteration limit
    dtype: str = "float64"  # what scikit-learn solves in (float32 features are cast)
    c_folds: int = 5  # k > 1: C by k-fold cross-validation on trainval; 0: on train -> val
    l2_rows: bool = True  # each photo's feature vector scaled to unit length first
    protocols: tuple[str, ...] = ("voc07", "area")

    @property
    def name(self) -> str:
        return f"{self.size}px" if self.size else "own size"


def photo(path: Path, settings: ProbeSettings) -> np.ndarray:
    """The photo as the probe shows it: RGB uint8 at the probe's size."""
    rgb = decode_image(str(path))
    h, w = rgb.shape[:2]
    if settings.size:
        target = (settings.size, settings.size)
    else:
        r = settings.round_to
        target = (max(r, round(w / r) * r), max(r, round(h / r) * r))
        if target == (w, h):
            return rgb
    return np.asarray(Image.fromarray(rgb).resize(target, Image.BILINEAR))


class FeatureExtractor:
    """Converted weights -> the whole image's features (what the transfer head reads)."""

    def __init__(self, weights_dir: str | Path):
        converted, metadata = weights.load_converted(weights_dir)
        block = metadata["architecture"]
        b = weights.backbone_of(block)
        self.arch = b.name
        self.preprocessing = weights.preprocessing_of(metadata)
        self.model = TransferNet(
            arch=b.name, width=float(block.get("width", 1.0)), options=weights.options_of(block)
        )
        variables = weights.transfer_variables(converted, metadata, head_hidden=8, seed=0)
        self.variables = jax.device_put({k: v for k, v in variables.items() if k != "head"})
        prep = self.preprocessing
        self._apply = jax.jit(lambda v, x: self.model.apply(v, prep.normalize(x), stop="features"))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] uint8 of one shape -> [N, D] float32."""
        return np.asarray(self._apply(self.variables, pixels))


def shape_batch(photos: int, settings: ProbeSettings) -> int:
    """The batch one shape is compiled for: ``settings.batch``, or with ``fit_batch`` the
    smallest power of two that holds a shape's few photos (one compile per shape either way;
    a size shared by 3 photos no longer runs 16 forward passes)."""
    if not settings.fit_batch:
        return settings.batch
    return min(settings.batch, 1 << max(photos - 1, 0).bit_length())


def extract(
    extractor: FeatureExtractor,
    records: Sequence[VocRecord],
    settings: ProbeSettings,
    progress: bool = True,
) -> np.ndarray:
    """[N, D] features of the records' photos, in record order (batched by shape)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    photos = []
    for i, record in enumerate(tqdm(records, desc="decoding", unit="img", disable=not progress)):
        photos.append(photo(record.image_path, settings))
        by_shape.setdefault(photos[-1].shape, []).append(i)
    out: np.ndarray | None = None
    bar = tqdm(total=len(records), desc=f"features ({settings.name})", unit="img",
               disable=not progress)  # fmt: skip
    for indices in by_shape.values():
        batch = shape_batch(len(indices), settings)
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            pixels = np.stack([photos[i] for i in chunk])
            if len(chunk) < batch:  # one compiled batch size per shape
                pad = np.repeat(pixels[:1], batch - len(chunk), axis=0)
                pixels = np.concatenate([pixels, pad])
            features = extractor(pixels)[: len(chunk)]
            if out is None:
                out = np.zeros((len(records), features.shape[1]), np.float32)
            out[chunk] = features
            bar.update(len(chunk))
    bar.close()
    return out


# Solver outcomes since import (the study script reads them): fits run, fits that stopped at
# max_iter before converging.
CONVERGENCE = {"fits": 0, "not_converged": 0}


class _Constant:
    """The classifier of a class whose training images are all positive or all negative (a
    small dataset): one score for every image, which ranks nothing."""

    def __init__(self, value: float):
        self.value = value

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = 3000):
    from sklearn.linear_model import LogisticRegression

    if y.all() or not y.any():
        return _Constant(1.0 if y.any() else -1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = LogisticRegression(C=c, max_iter=max_iter).fit(x, y)
    CONVERGENCE["fits"] += 1
    CONVERGENCE["not_converged"] += sum("converge" in str(w.message).lower() for w in caught)
    return clf


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each feature vector scaled to unit L2 norm: the pooled activations' overall size varies
    with the photo (its size, its contrast), which says nothing about its classes
    (Razavian et al. 2014's off-the-shelf CNN features are used this way)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _standardise(
    train: np.ndarray, *others: np.ndarray, on: bool = True, dtype: str = "float64"
) -> list[np.ndarray]:
    """Each feature to zero mean and unit deviation on the training split (L2's penalty is
    not scale-invariant), in ``dtype`` (scikit-learn's lbfgs solves in the dtype it is given)."""
    train, others = np.asarray(train, dtype), [np.asarray(a, dtype) for a in others]
    if not on:
        return [train, *others]
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


@dataclasses.dataclass(frozen=True)
class CChoice:
    """The C chosen per class, and the classes whose C still lies on the edge of the grid
    after widening it (the best C may lie beyond: the report says so)."""

    cs: list[float]
    at_edge: dict[str, float]


def _widened(ap_of, grid: Sequence[float]) -> tuple[float, bool]:
    """(best C, still on an edge): the grid's best, then decade by decade past whichever
    edge it sits on while the val AP strictly improves, up to C_LIMITS."""
    grid = sorted(grid)
    aps = [ap_of(v) for v in grid]
    best = int(np.argmax(aps))  # ties: the smaller C (stronger regularisation)
    value, ap = grid[best], aps[best]
    if len(grid) < 2 or 0 < best < len(grid) - 1:
        return value, False
    step = 0.1 if best == 0 else 10.0
    while C_LIMITS[0] <= value * step <= C_LIMITS[1]:
        candidate = ap_of(value * step)
        if not candidate > ap:
            return value, False
        value, ap = value * step, candidate
    return value, True


def choose_c(
    train_x: np.ndarray,
    train_t: np.ndarray,
    val_x: np.ndarray,
    val_t: np.ndarray,
    grid: Sequence[float],
    widen: bool = True,
    **options: Any,
) -> CChoice:
    """Per class, the C whose train-fitted classifier has the best AP on val (``options``:
    those of ``choose_c_folds``)."""
    x = np.concatenate([train_x, val_x])
    t = np.concatenate([train_t, val_t])
    fold = (np.arange(len(train_x)), np.arange(len(train_x), len(x)))
    return choose_c_folds(x, t, [fold], grid, widen, **options)


def kfolds(n: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, held-out) index pairs over ``n`` images, shuffled with ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, k)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1 :])), np.sort(parts[i]))
            for i in range(k)]  # fmt: skip


def choose_c_folds(
    x: np.ndarray,
    t: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    grid: Sequence[float],
    widen: bool = True,
    *,
    select_by: str = "area",
    standardise: bool = True,
    max_iter: int = 3000,
    dtype: str = "float64",
    classes: Sequence[str] = (),
) -> CChoice:
    """Per class, the C whose classifiers, each fitted on a fold's training part, have the
    best mean AP on the folds' held-out parts (``select_by``: all-points ``area`` or 11-point
    ``voc07``; ``widen``: past the grid's edge while it improves, see ``_widened``). Each
    fold standardises on its own training part."""
    parts = [_standardise(x[a], x[b], on=standardise, dtype=dtype) for a, b in folds]
    chosen, at_edge = [], {}
    for c, name in enumerate(classes or VOC_CLASSES):

        def ap_of(value: float, c=c) -> float:
            aps = []
            for (fit_x, held_x), (a, b) in zip(parts, folds, strict=True):
                keep = t[a, c] != 0
                clf = _fit(fit_x[keep], t[a][keep, c] > 0, value, max_iter)
                ap = metrics.average_precision(clf.decision_function(held_x), t[b, c], select_by)
                aps.append(-1.0 if np.isnan(ap) else ap)
            return float(np.mean(aps))

        if widen:
            value, edge = _widened(ap_of, grid)
        else:
            aps = [ap_of(v) for v in grid]
            value, edge = grid[int(np.argmax(aps))], False
        chosen.append(float(value))
        if edge:
            at_edge[name] = float(value)
    return CChoice(chosen, at_edge)


def solver_options(settings: ProbeSettings) -> dict[str, Any]:
    return {"standardise": settings.standardise, "max_iter": settings.max_iter,
            "dtype": settings.dtype}  # fmt: skip


def select_c(
    settings: ProbeSettings,
    trainval_x: np.ndarray,
    trainval_t: np.ndarray,
    train_rows: Sequence[int],
    val_rows: Sequence[int],
    classes: Sequence[str] = VOC_CLASSES,
) -> CChoice:
    """C per class as ``settings`` says: on train -> val (the official split), or by
    ``c_folds``-fold cross-validation over trainval (less noise than one small val split)."""
    if settings.c_folds > 1:
        folds = kfolds(len(trainval_x), settings.c_folds)
    else:
        folds = [(np.asarray(train_rows), np.asarray(val_rows))]
    return choose_c_folds(trainval_x, trainval_t, folds, settings.c_grid, settings.widen_c,
                          select_by=settings.select_by, classes=classes,
                          **solver_options(settings))  # fmt: skip


def fit_and_score(
    trainval_x: np.ndarray,
    trainval_t: np.ndarray,
    test_x: np.ndarray,
    cs: Sequence[float],
    *,
    standardise: bool = True,
    max_iter: int = 3000,
    dtype: str = "float64",
) -> np.ndarray:
    """[N_test, C] decision values of the per-class classifiers refit on trainval."""
    trainval_x, test_x = _standardise(trainval_x, test_x, on=standardise, dtype=dtype)
    scores = np.zeros((len(test_x), len(cs)))
    for c, value in enumerate(cs):
        keep = trainval_t[:, c] != 0
        clf = _fit(trainval_x[keep], trainval_t[keep, c] > 0, value, max_iter)
        scores[:, c] = clf.decision_function(test_x)
    return scores


def targets_of(records: Sequence[VocRecord]) -> np.ndarray:
    return np.stack([r.targets() for r in records])


def run(
    extractor: FeatureExtractor,
    splits: dict[str, Sequence[VocRecord]],
    settings: ProbeSettings,
    progress: bool = True,
    classes: Sequence[str] = VOC_CLASSES,
) -> dict[str, Any]:
    """The whole baseline on ``splits`` (train, val, trainval, test) of a dataset with
    ``classes``: per-protocol APs of the test split, the chosen Cs, the test scores and the
    wall time."""
    start = time.perf_counter()
    trainval_ids = {r.image_id for r in splits["trainval"]}
    missing = [
        r.image_id for r in (*splits["train"], *splits["val"]) if r.image_id not in trainval_ids
    ]
    if missing:
        raise ValueError(f"train/val images not in trainval: {missing[:3]}")
    index = {r.image_id: i for i, r in enumerate(splits["trainval"])}
    trainval_x = extract(extractor, splits["trainval"], settings, progress)
    test_x = extract(extractor, splits["test"], settings, progress)
    features_s = time.perf_counter() - start
    if settings.l2_rows:
        trainval_x, test_x = unit_rows(trainval_x), unit_rows(test_x)
    rows = lambda records: [index[r.image_id] for r in records]  # noqa: E731
    trainval_t = targets_of(splits["trainval"])
    choice = select_c(settings, trainval_x, trainval_t, rows(splits["train"]), rows(splits["val"]),
                      classes)  # fmt: skip
    if choice.at_edge:
        names = ", ".join(f"{k} (C={v:g})" for k, v in choice.at_edge.items())
        log.warning("linear probe: C on the edge of the widened grid for %s", names)
    test_t = targets_of(splits["test"])
    scores = fit_and_score(trainval_x, trainval_t, test_x, choice.cs, **solver_options(settings))
    cs = choice.cs
    results = {}
    for protocol in settings.protocols:
        r = metrics.mean_average_precision(scores, test_t, protocol, classes)
        results[protocol] = {"ap": [float(a) for a in r["ap"]], "map": r["map"]}
    probabilities = 1.0 / (1.0 + np.exp(-scores))
    labels = multilabel.label_results(probabilities, test_t, "the classifier's probability")
    return {
        "results": results,
        "labels": labels,
        "c": dict(zip(classes, cs, strict=True)),
        "c_at_edge": choice.at_edge,
        "features_seconds": features_s,
        "seconds": time.perf_counter() - start,
        "feature_width": int(trainval_x.shape[1]),
        "scores": scores,
        "image_ids": [r.image_id for r in splits["test"]],
    }
