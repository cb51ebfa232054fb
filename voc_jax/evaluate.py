"""Score a split and report per-class AP: ``python -m voc_jax.evaluate --workdir DIR``.

Writes into ``DIR/eval/<step>/``: ``scores.npz`` (image ids, targets, the three poolings),
the VOC devkit result files ``results/comp1_cls_<split>_<class>.txt`` (``<image id> <score>``),
the AP table as Markdown (also printed), CSV and JSON for every protocol, with the reference's
published numbers side by side on VOC 2007 test, ``pr_curves.png`` and ``ap_bars.png``.
Evaluation is deterministic for a checkpoint (test sampling is seeded per image).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from tqdm import tqdm

from voc_jax import class_config, cli, commands, distributed, experiment, metrics, multilabel
from voc_jax import workdir as workdir_lib
from voc_jax.classes import VOC_CLASSES, is_voc
from voc_jax.data.pipeline import iterating
from voc_jax.data.splits import load_splits
from voc_jax.data.voc import VocDataset, VocRecord
from voc_jax.errors import ConfigError
from voc_jax.experiment import Experiment

log = logging.getLogger(__name__)

# The neon reference's published AP on VOC 2007 test, its own protocol (docs/reference.md).
REFERENCE_AP = dict(
    zip(
        VOC_CLASSES,
        (81.17, 79.32, 81.21, 74.84, 52.89, 74.57, 87.72, 78.54, 63.00, 69.57)
        + (58.28, 74.06, 77.38, 79.91, 90.69, 69.05, 78.02, 59.55, 81.32, 82.26),
        strict=True,
    )
)
REFERENCE_MAP = 74.67
PROTOCOL_NAMES = {
    "voc07": "VOC07 official (11-point, difficult ignored)",
    "area": "all-points AP, difficult ignored",
    "reference": (
        "the neon reference's own computation (all-points, difficult positive, images "
        "scoring < 1e-6 never ranked but their positives kept in recall; mean over every class)"
    ),
}


def compute_scores(
    exp: Experiment, variables: Any, records: Sequence[VocRecord], *, progress: bool = True
) -> dict[str, np.ndarray]:
    """{'power'|'mean'|'max': [N, C]} image scores, one row per record, in record order.
    ``variables``: the params (and BatchNorm statistics) to score with."""
    dataset = exp.dataset(records, train=False)
    step = exp.eval_step()
    variables = exp.put_params(variables)
    shape = (len(records), len(exp.data.classes))
    out = {k: np.full(shape, np.nan) for k in ("power", "mean", "max")}
    with iterating(dataset, workers=exp.data.workers) as iterator:
        for _ in tqdm(range(len(dataset)), desc="evaluating", unit="batch", disable=not progress):
            # Every process's images, gathered on every process (padding has image_index -1).
            result = distributed.to_host(step(variables, exp.put_batch(next(iterator))))
            keep = result["image_index"] >= 0
            for pooling in out:
                out[pooling][result["image_index"][keep]] = result[pooling][keep]
    missing = np.isnan(out["power"]).any(axis=1)
    if missing.any():
        raise RuntimeError(f"{missing.sum()} images were not scored; this is a bug")
    return out


def ap_results(
    scores: np.ndarray,
    targets: np.ndarray,
    protocols: Sequence[str],
    classes: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    results = {}
    for protocol in protocols:
        r = metrics.mean_average_precision(scores, targets, protocol, classes)
        results[protocol] = {
            "ap": [float(a) for a in r["ap"]],
            "map": r["map"],
            "classes_without_positives": r["classes_without_positives"],
            "classes_below_floor": r["classes_below_floor"],
        }
    return results


def label_results(probabilities: np.ndarray, targets: np.ndarray, score: str) -> dict[str, Any]:
    return multilabel.label_results(probabilities, targets, score)


def format_labels(labels: dict[str, Any]) -> str:
    """Markdown: the label-set metrics, a row each for every label and the top-k."""
    names = multilabel.NAMES
    lines = ["| labels | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    k, t = labels["top_k"], labels["threshold"]
    for key, what in (("all", f"p >= {t:g}"), (f"top{k}", f"top-{k}, p >= {t:g}")):
        cells = [f"{100 * labels[key][n]:.2f}" if np.isfinite(labels[key][n]) else "n/a"
                 for n in names]  # fmt: skip
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"- labels: p is {labels['score']}; C: the mean over classes, "
                               "O: over all labels (docs/training.md)"])  # fmt: skip


def format_table(
    results: dict[str, dict[str, Any]], with_reference: bool, classes: Sequence[str] = VOC_CLASSES
) -> str:
    """Markdown: one row per class in the dataset's order, then mAP; every column named by its
    protocol; the reference's published column (its own protocol) when comparable."""
    protocols = list(results)
    header = ["class"] + [f"AP {p}" for p in protocols]
    if with_reference:
        header += ["published (reference protocol)", "difference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]

    def row(name, values, published):
        cells = [name] + [f"{100 * v:.2f}" if np.isfinite(v) else "n/a" for v in values]
        if with_reference:
            ours = values[protocols.index("reference")] if "reference" in protocols else np.nan
            cells += [f"{published:.2f}", f"{100 * ours - published:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")

    for c, name in enumerate(classes):
        row(name, [results[p]["ap"][c] for p in protocols], REFERENCE_AP.get(name, np.nan))
    row("**mAP**", [results[p]["map"] for p in protocols], REFERENCE_MAP)
    notes = [f"- AP {p}: {PROTOCOL_NAMES[p]}" for p in protocols]
    for p in protocols:
        below = results[p].get("classes_below_floor") or []
        if below:
            names = ", ".join(classes[c] for c in below)
            notes.append(f"- AP {p}: every image scores below 1e-6 for {names}: AP 0, in the mean")
    return "\n".join(lines + [""] + notes)


def write_result_files(
    out_dir: Path,
    split: str,
    ids: Sequence[str],
    scores: np.ndarray,
    classes: Sequence[str] = VOC_CLASSES,
) -> None:
    """The devkit's comp1 (classification, own training data) format, one file per class."""
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes):
        lines = "".join(f"{i} {s:.8g}\n" for i, s in zip(ids, scores[:, c], strict=True))
        (results / f"comp1_cls_{split}_{name}.txt").write_text(lines)


def read_result_files(
    directory: Path, split: str, classes: Sequence[str] = VOC_CLASSES
) -> tuple[list[str], np.ndarray]:
    columns, ids = [], None
    for name in classes:
        rows = [
            line.split()
            for line in (directory / f"comp1_cls_{split}_{name}.txt").read_text().splitlines()
        ]
        ids = ids or [r[0] for r in rows]
        columns.append([float(r[1]) for r in rows])
    return ids, np.array(columns).T


def write_plots(
    out_dir: Path,
    scores: np.ndarray,
    targets: np.ndarray,
    results,
    with_reference: bool,
    classes: Sequence[str] = VOC_CLASSES,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(classes) // 5))
    fig, axes = plt.subplots(rows, 5, figsize=(16, 3.25 * rows), sharex=True, sharey=True,
                             squeeze=False)  # fmt: skip
    for ax in axes.ravel()[len(classes) :]:
        ax.set_visible(False)
    for c, (name, ax) in enumerate(zip(classes, axes.ravel(), strict=False)):
        for protocol, style in (("voc07", "-"), ("reference", "--")):
            if np.isnan(results.get(protocol, {"ap": [np.nan] * len(classes)})["ap"][c]):
                continue
            pr = metrics.precision_recall(scores[:, c], targets[:, c], protocol)
            ax.plot(pr.recall, pr.precision, style, label=protocol)
        ap = results[next(iter(results))]["ap"][c]
        ax.set_title(f"{name} ({100 * ap:.1f})", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.supxlabel("recall")
    fig.supylabel("precision")
    fig.suptitle(f"precision-recall per class (title: AP {next(iter(results))})")
    fig.tight_layout()
    fig.savefig(out_dir / "pr_curves.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(14, 0.6 * len(classes)), 5))
    x = np.arange(len(classes))
    protocol = "reference" if "reference" in results else next(iter(results))
    ax.bar(x - 0.2, 100 * np.array(results[protocol]["ap"]), 0.4, label=f"voc-jax ({protocol})")
    if with_reference:
        ax.bar(x + 0.2, [REFERENCE_AP[n] for n in classes], 0.4, label="neon reference (published)")
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(f"per-class AP, mAP {100 * results[protocol]['map']:.2f} ({protocol})")
    fig.tight_layout()
    fig.savefig(out_dir / "ap_bars.png", dpi=80)
    plt.close(fig)


def is_voc2007_test(
    root: Path, split: str, n_images: int, classes: Sequence[str] = VOC_CLASSES
) -> bool:
    """Comparable with the published numbers: the real VOC 2007 test split, complete."""
    return (is_voc(classes) and split == "test" and not (root / "synthetic.json").exists()
            and n_images == 4952)  # fmt: skip


def evaluate(
    exp: Experiment,
    variables: Any,
    dataset: VocDataset,
    out_dir: Path,
    *,
    progress: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    """Scores + APs for ``dataset``; files into ``out_dir`` when ``write``."""
    records = dataset.records
    scores = compute_scores(exp, variables, records, progress=progress)
    targets = np.stack([r.targets() for r in records])
    results = ap_results(scores["power"], targets, exp.eval.protocols, dataset.classes)
    extra = {
        pooling: metrics.mean_average_precision(scores[pooling], targets, "voc07")["map"]
        for pooling in ("mean", "max")
    }
    classes = dataset.classes
    with_reference = is_voc2007_test(dataset.root, dataset.split, len(records), classes)
    labels = label_results(scores["max"], targets, "the highest patch probability")
    table = format_table(results, with_reference, classes) + "\n\n" + format_labels(labels)
    summary = {
        "split": dataset.split,
        "images": len(records),
        "classes": list(classes),
        "exponent": exp.eval.exponent,
        "results": results,
        "labels": labels,
        "voc07_map_other_poolings": extra,
        "table": table,
    }
    if write:
        ids = [r.image_id for r in records]
        write_outputs(out_dir, summary, ids, targets, scores)
        if exp.eval.plots:
            write_plots(out_dir, scores["power"], targets, results, with_reference, classes)
    return summary


def write_outputs(
    out_dir: Path,
    summary: dict[str, Any],
    ids: Sequence[str],
    targets: np.ndarray,
    scores: dict[str, np.ndarray],
    ranked: str = "power",
) -> None:
    """scores.npz, the devkit result files (of the ``ranked`` scores) and the AP table as
    Markdown, CSV and JSON."""
    results = summary["results"]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "scores.npz", image_ids=np.array(ids), targets=targets, **scores)
    classes = summary.get("classes", VOC_CLASSES)
    write_result_files(out_dir, summary["split"], ids, scores[ranked], classes)
    (out_dir / "ap_table.md").write_text(summary["table"] + "\n")
    with open(out_dir / "ap_table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class"] + [f"ap_{p}" for p in results])
        for c, name in enumerate(classes):
            writer.writerow([name] + [f"{results[p]['ap'][c]:.6f}" for p in results])
        writer.writerow(["mAP"] + [f"{results[p]['map']:.6f}" for p in results])
    (out_dir / "ap_table.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2) + "\n"
    )


def evaluate_and_report(
    exp: Experiment, variables: Any, dataset: VocDataset, workdir: Path, step: int
) -> dict[str, Any]:
    """Evaluate into ``WORKDIR/eval/<step>/`` and print the table (process 0)."""
    out_dir = workdir / "eval" / str(step)
    main = distributed.is_main()
    summary = evaluate(exp, variables, dataset, out_dir, progress=main, write=main)
    if main:
        log_metrics(workdir, summary, step)
        announce(summary, step, out_dir)
    return summary


def metric_row(summary: dict[str, Any]) -> dict[str, float]:
    """An evaluation as scalars: the mAP of each protocol, and the label-set metrics at the
    threshold and for the top-k (``eval_CF1``, ``eval_CF1_top3``, ...)."""
    row = {f"eval_map_{p}": r["map"] for p, r in summary["results"].items()}
    labels = summary["labels"]
    for key, suffix in (("all", ""), (f"top{labels['top_k']}", f"_top{labels['top_k']}")):
        row |= {f"eval_{name}{suffix}": labels[key][name] for name in multilabel.NAMES}
    return row


def log_metrics(workdir: Path, summary: dict[str, Any], step: int) -> None:
    """The evaluation's row in ``WORKDIR/metrics.jsonl`` and TensorBoard, beside training's
    (``kind: evaluation``, the split and image count); NaN where a metric is undefined."""
    from voc_jax.metric_writer import MetricWriter

    writer = MetricWriter(workdir)
    try:
        writer.write(step, metric_row(summary), kind="evaluation", split=summary["split"],
                     images=summary["images"])  # fmt: skip
    finally:
        writer.close()


def announce(summary: dict[str, Any], step: int, out_dir: Path) -> None:
    """Print an evaluation's table and where it was written (both families)."""
    print(f"\nAP on {summary['split']} ({summary['images']} images), step {step}:")
    print(summary["table"])
    print(f"written to {out_dir}")


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: Path,
    *,
    step: int | None = None,
    split: str | None = None,
) -> int:
    """Evaluate a checkpoint of ``workdir`` on ``split`` (default: the config's test split)."""
    if config.get("method", "patches") == "image":  # the whole-image family (voc_jax.image)
        from voc_jax.image import run as image_run

        return image_run.evaluate_workdir(config, workdir, step=step, split=split)
    experiment.validate(config)
    if split is not None:
        config = config.copy_and_resolve_references()
        config.data.test_split = split
    config = class_config.resolve(config)
    with distributed.workdir_lock(workdir, "evaluate"):
        workdir_lib.check_before_evaluating(config, workdir)
        workdir_lib.check_unchanged(config, workdir, workdir_lib.SHAPE_FIELDS, "evaluate")
        exp = Experiment.build(config)
        found, variables = workdir_lib.restore_variables(workdir, exp.model.variables, step)
        splits = load_splits(exp.data, workdir, train=False)
        splits.remember_decoded()
        evaluate_and_report(exp, exp.put_params(variables), splits.test, workdir, found)
    return 0


# ----------------------------------------------------------------------------- CLI


define_flags = commands.define_evaluate_flags


def run_command(fv: flags.FlagValues, positional: list[str]) -> int:
    if fv.workdir is None:
        raise ConfigError("--workdir is required")
    workdir = Path(fv.workdir)
    config = workdir_lib.load_config(workdir, given=fv.config)
    distributed.initialize(config)
    return evaluate_workdir(config, workdir, step=fv.checkpoint, split=fv.split)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.command(argv, define_flags, run_command, program="voc_jax.evaluate")


if __name__ == "__main__":
    sys.exit(main())
