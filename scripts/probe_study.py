"""Where the linear probe's points go: one change at a time, on the same features.

Features are extracted once per input variant (the photo resized to 224 px; each photo at its
own size with its sides rounded to 1 (exact), 16, 32 or 64 px, every shape compiled for
batches of 16 or for the fewest its photos need; the wall time of each extraction, its
compiles included, is measured in this run; ``--fresh-features`` measures again) and kept in ``OUT/features_<variant>.npz``; then
every classifier variant runs on the same features: the protocol of voc_jax.linear_probe
before this study (float32 to scikit-learn, C from the fixed grid chosen by all-points AP),
and each single change (float64, the widened grid, C chosen by 11-point AP, no
standardisation, a larger max_iter, float16 features, a half-decade grid). Nothing is chosen
on test: C is chosen on train -> val, the classifier refit on trainval, scored on test.
Prints a table and writes ``OUT/probe_study.json``.

    python scripts/probe_study.py --weights runs/compare/weights --out runs/probe_study \
        [--voc ../shared/data/voc2007-subset/VOCdevkit/VOC2007] [--inputs 224,own16,own16fit]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from voc_jax import linear_probe as lp
from voc_jax import metrics

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VOC_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_VOC = SHARED / "voc2007-subset" / "VOCdevkit" / "VOC2007"
INPUTS = {
    "224": lp.ProbeSettings(size=224),
    # own size, sides rounded to 16 and every shape compiled for batches of 16 (as before)
    "own16": lp.ProbeSettings(size=None, round_to=16, fit_batch=False),
    # the same, each shape's batch fitted to its photos (a power of two, at most 16)
    "own16fit": lp.ProbeSettings(size=None, round_to=16),
    "own32fit": lp.ProbeSettings(size=None, round_to=32),
    "own64fit": lp.ProbeSettings(size=None, round_to=64),
    "own1fit": lp.ProbeSettings(size=None, round_to=1),  # exact sizes: one compile each
}
BEFORE = {"widen_c": False, "dtype": "float32", "l2_rows": False, "c_folds": 0}  # the old probe
HALF_DECADES = tuple(float(10**e) for e in np.arange(-5, 2.01, 0.5))
CLASSIFIERS = {
    "before": {},
    "now (voc_jax's defaults)": {
        "widen_c": True,
        "dtype": "float64",
        "l2_rows": True,
        "c_folds": 5,
    },
    "float64 to scikit-learn": {"dtype": "float64"},
    "widened C grid": {"widen_c": True},
    "C chosen by 11-point AP": {"select_by": "voc07"},
    "not standardised": {"standardise": False},
    "max_iter 20000": {"max_iter": 20000},
    "float16 features": {"features": "float16"},
    "half-decade C grid": {"c_grid": HALF_DECADES},
    "float64 + widened": {"dtype": "float64", "widen_c": True},
    "C by 3-fold CV on trainval": {"c_folds": 3},
    "C by 5-fold CV on trainval": {"c_folds": 5},
    "C by 11-point AP + not standardised": {"select_by": "voc07", "standardise": False},
    "rows L2-normalised": {"l2_rows": True},
    "rows L2-normalised + not standardised": {"l2_rows": True, "standardise": False},
    "rows L2-normalised + C by 5-fold CV": {"l2_rows": True, "c_folds": 5},
    "rows L2-normalised + float64 + widened": {
        "l2_rows": True,
        "dtype": "float64",
        "widen_c": True,
    },
    "not standardised + widened": {"standardise": False, "widen_c": True},
    "not standardised + float64 + widened": {
        "standardise": False,
        "dtype": "float64",
        "widen_c": True,
    },
}


def features(name: str, extractor, splits, out: Path, fresh: bool = False) -> dict:
    """The trainval and test features of one input variant (extracted once, then read)."""
    path = out / f"features_{name}.npz"
    if path.is_file() and not fresh:
        data = np.load(path)
        return {"trainval": data["trainval"], "test": data["test"], "seconds": float(data["s"])}
    start = time.perf_counter()
    trainval = lp.extract(extractor, splits["trainval"], INPUTS[name])
    test = lp.extract(extractor, splits["test"], INPUTS[name])
    seconds = time.perf_counter() - start
    np.savez(path, trainval=trainval, test=test, s=seconds)
    return {"trainval": trainval, "test": test, "seconds": seconds}


def classify(feats: dict, splits, changes: dict) -> dict:
    """One classifier variant on fixed features: voc07 / area mAP and the solver's record."""
    changes = dict(BEFORE | changes)
    cast = changes.pop("features", None)
    settings = dataclasses.replace(lp.ProbeSettings(), **changes)
    trainval_x, test_x = feats["trainval"], feats["test"]
    if settings.l2_rows:
        trainval_x, test_x = lp.unit_rows(trainval_x), lp.unit_rows(test_x)
    if cast:
        trainval_x, test_x = trainval_x.astype(cast), test_x.astype(cast)
    index = {r.image_id: i for i, r in enumerate(splits["trainval"])}
    rows = lambda split: [index[r.image_id] for r in splits[split]]  # noqa: E731
    lp.CONVERGENCE.update(fits=0, not_converged=0)
    start = time.perf_counter()
    trainval_t = lp.targets_of(splits["trainval"])
    choice = lp.select_c(settings, trainval_x, trainval_t, rows("train"), rows("val"))
    scores = lp.fit_and_score(
        trainval_x, trainval_t, test_x, choice.cs, **lp.solver_options(settings)
    )
    targets = lp.targets_of(splits["test"])
    result = {
        p: metrics.mean_average_precision(scores, targets, p)["map"] for p in ("voc07", "area")
    }
    return result | {
        "seconds": time.perf_counter() - start,
        "fits": lp.CONVERGENCE["fits"],
        "not_converged": lp.CONVERGENCE["not_converged"],
        "c_at_edge": choice.at_edge,
    }


def markdown(table: dict) -> str:
    """The study as one Markdown table: classifier variants down, input variants across
    (VOC07 / all-points mAP), and each input's feature-extraction wall time."""
    inputs = list(table)
    variants = list(dict.fromkeys(v for name in inputs for v in table[name]["classifiers"]))
    lines = ["| classifier \\ input | " + " | ".join(inputs) + " |",
             "|---|" + "---:|" * len(inputs)]  # fmt: skip
    for variant in variants:
        cells = []
        for name in inputs:
            r = table[name]["classifiers"].get(variant)
            cells.append(f"{100 * r['voc07']:.2f} / {100 * r['area']:.2f}" if r else "")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    times = [f"{table[name]['extract_seconds']:.0f} s" for name in inputs]
    lines.append("| features: wall time | " + " | ".join(times) + " |")
    return "\n".join(lines)


def main() -> int:
    from voc_jax.compare import load_real_splits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voc", type=Path, default=DEFAULT_VOC)
    parser.add_argument("--weights", type=Path, required=True, help="converted weights")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--inputs", default=",".join(INPUTS), help="of " + ",".join(INPUTS))
    parser.add_argument("--classifiers", default=",".join(CLASSIFIERS), help="'' for none")
    parser.add_argument("--fresh-features", action="store_true", help="extract (and time) again")
    parser.add_argument("--table", action="store_true", help="print OUT's table and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads((args.out / "probe_study.json").read_text())))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    splits = load_real_splits(args.voc)
    extractor = lp.FeatureExtractor(args.weights)
    path = args.out / "probe_study.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.inputs.split(","):
        feats = features(name, extractor, splits, args.out, args.fresh_features)
        table[name] = table.get(name, {}) | {"extract_seconds": feats["seconds"]}
        table[name].setdefault("classifiers", {})
        for variant in filter(None, args.classifiers.split(",")):
            r = classify(feats, splits, CLASSIFIERS[variant])
            table[name]["classifiers"][variant] = r
            print(f"{name:6s} {variant:26s} voc07 {100 * r['voc07']:.2f}  area "
                  f"{100 * r['area']:.2f}  ({r['seconds']:.0f} s, {r['not_converged']}/"
                  f"{r['fits']} fits hit max_iter, edge {r['c_at_edge']})", flush=True)  # fmt: skip
        print(f"{name}: features in {feats['seconds']:.0f} s", flush=True)
        path.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
