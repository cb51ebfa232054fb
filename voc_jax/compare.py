"""The method on real photographs, measured against the field's standard baseline:
``python -m voc_jax.compare --voc DIR --out DIR``.

On one VOC 2007 directory (trainval for training, test for scoring; train and val choose the
baseline's C) and one set of converted ImageNet weights (default: EfficientNet-Lite0 from its
pip package, converted and verified into OUT/weights), it runs:

- ``frozen``: the patch method, Oquab et al.'s variant (the backbone frozen, the new head
  trained from a feature cache of the pooled features; ``voc07_lite0.py:frozen``);
- ``finetune``: the patch method with the config's blocks fine-tuned (``voc07_lite0.py``),
  starting from the frozen run's trained head (LP-FT; ``--finetune-head fresh``: a random one);
- ``probe``: the linear probe of the self-supervised literature (voc_jax.linear_probe): the
  whole photo resized to the network's input size, its pooled features, one logistic
  regression per class, C chosen on train/val, refit on trainval;
- ``probe_own``: the same at each photo's own size (the network pools any size);
- ``chance``: random scores (the mean AP of 200 draws, per class).

It writes OUT/report.md (one table: per class and mean, VOC07 and all-points AP, each
method's wall time; the settings and the command), OUT/results.json, OUT/ap_bars.png (the
methods side by side) and OUT/score_maps/ (a few test photos, the frozen run's score maps).
Each patch method's run stays in OUT/<method>/ (a training workdir). OUT is compare's own:
new, empty, or marked by an earlier invocation (voc_jax.compare_out); anything else is
refused. A run an earlier invocation left there is reused (resumed, or re-evaluated when it
had finished) only when its fingerprint (the whole training config, the weights' digest, the
images, the head it starts from) is unchanged, and the report says so; otherwise the command
stops, naming what changed, before any work (``--fresh`` redoes it). Every flag, the VOC
directory and each run's config against the weights are checked before the first method. ``--setting`` picks the size: ``reference`` (the
reference's own: 224-px patches, 448 per image, all 13 scales; a GPU's work),
``cpu`` (what two CPU cores do in about an hour and a half) or ``ci`` (minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voc_jax import class_config, cli, compare_out, linear_probe, metrics
from voc_jax.classes import VOC_CLASSES
from voc_jax.errors import ConfigError, DataError, UserError

METHODS = ("frozen", "finetune", "image_frozen", "image_finetune", "probe", "probe_own", "chance")
TRAINED = ("frozen", "finetune", "image_frozen", "image_finetune")  # training runs in OUT/<m>
HEAD_SOURCE = {"finetune": "frozen", "image_finetune": "image_frozen"}  # LP-FT: whose head
IMAGE_CONFIG = "voc_jax/configs/voc07_image.py"  # the whole-image family's, ARCH,VARIANT
PROTOCOLS = ("voc07", "area")
FINETUNE_HEADS = {"frozen": " from the frozen head", "fresh": ", fresh head"}
CONFIG = "voc_jax/configs/voc07_lite0.py"  # --config: the patch method's, for other weights
DEFAULT_ARCH = "efficientnet_lite0"  # the default weights' (from the package)
LABELS = {
    "frozen": "patches, frozen (Oquab)",
    "finetune": "patches, fine-tuned",  # + FINETUNE_HEADS[--finetune-head]
    "image_frozen": "whole image, frozen",
    "image_finetune": "whole image, fine-tuned",  # + FINETUNE_HEADS[--finetune-head]
    "probe": "linear probe, {size} px",
    "probe_own": "linear probe, own size",
    "chance": "chance",
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """How large a comparison is: the patch methods' config overrides (both, then each) and
    the probe's input side."""

    name: str
    both: tuple[str, ...]
    frozen: tuple[str, ...] = ()
    finetune: tuple[str, ...] = ()
    probe_size: int = 224
    about: str = ""  # the patch methods' shared settings, in words
    about_frozen: str = ""
    about_finetune: str = ""
    # The whole-image family's overrides (both, then each) and their words.
    image_both: tuple[str, ...] = ()
    image_frozen: tuple[str, ...] = ()
    image_finetune: tuple[str, ...] = ()
    about_image: str = ""
    about_image_frozen: str = ""
    about_image_finetune: str = ""

    def describe(self, methods: Sequence[str]) -> str:
        """The setting in words, for the methods that ran (never one that did not)."""
        parts = [f"patches: {self.about}"] if {"frozen", "finetune"} & set(methods) else []
        parts += [f"frozen: {self.about_frozen}"] if "frozen" in methods else []
        parts += [f"fine-tuned: {self.about_finetune}"] if "finetune" in methods else []
        image = {"image_frozen", "image_finetune"} & set(methods)
        parts += [f"whole image: {self.about_image}"] if image else []
        parts += [f"frozen: {self.about_image_frozen}"] if "image_frozen" in methods else []
        parts += [f"fine-tuned: {self.about_image_finetune}"] if "image_finetune" in methods else []
        sizes = [f"{self.probe_size} px"] if "probe" in methods else []
        sizes += ["the photos' own sizes"] if "probe_own" in methods else []
        if sizes:
            parts.append("the probe at " + " and at ".join(sizes))
        return "; ".join(parts) or "chance only"


# The cpu setting's whole-image fine-tuning: what two cores fit beside the rest (docs/image.md).
# Measured there: 448 px and 4 epochs beat the frozen head (85.5 against 85.0), 320 px and
# 2 epochs did not (83.5).
IMAGE_CPU_FINETUNE = (
    "--config.num_epochs=4",
    "--config.optim.warmup_epochs=0.5",
)
IMAGE_CPU_FINETUNE_ABOUT = (
    "448 px, 4 epochs (AdamW 1e-4 after a half-epoch warm-up, cosine), crops, flips"
)
SMALL_GEOMETRY = (
    "--config.patches.scales=(1.0, 1.6, 2.3, 3.0)",
    "--config.patches.min_scales=4",
    "--config.patches.test_sampling=spread",
)
SETTINGS = {
    "reference": Setting(
        "reference",
        both=("--config.data.max_train_images=0",),
        finetune=("--config.num_epochs=3", "--config.optim.lr_changes=((2, 1e-4),)"),
        about="the reference's own setting: 224-px patches, 448 per image (7 updates of 64), "
        "the 13 scales (11 at least), every image",
        about_frozen="10 epochs from the feature cache",
        about_finetune="3 epochs (1e-3, 1e-4 in the last), to fit one GPU call",
        image_both=("--config.data.max_train_images=0",),
        about_image="448-px canvases (the longer side; aspect kept), average pooling, every image",
        about_image_frozen="20 epochs from the map cache (AdamW 1e-2, cosine)",
        about_image_finetune="10 epochs (AdamW 1e-4 after a 1-epoch warm-up, cosine), crops and "
        "flips",
    ),
    "cpu": Setting(
        "cpu",
        both=(
            "--config.data.max_train_images=0",
            "--config.patches.size=128",
            "--config.patches.per_image=64",
            "--config.patches.min_patches=64",
            "--config.batch_size=32",
            "--config.eval.images_per_step=1",
            *SMALL_GEOMETRY,
        ),
        frozen=("--config.num_epochs=10",),
        # One epoch is what fits; the head starts as the frozen run trained it, so the
        # features need adjusting, not rebuilding: a tenth of the recipe's rate.
        finetune=("--config.num_epochs=1", "--config.optim.learning_rate=1e-4"),
        about="two CPU cores' size: 128-px patches at 4 scales (1, 1.6, 2.3, 3), 64 per image "
        "sampled for training and spread for testing, updates of 32",
        about_frozen="10 epochs from the feature cache",
        about_finetune="1 epoch at 1e-4",
        image_both=("--config.data.max_train_images=0",),
        image_finetune=IMAGE_CPU_FINETUNE,
        about_image="448-px canvases (the longer side; aspect kept), average pooling, every image",
        about_image_frozen="20 epochs from the map cache (AdamW 1e-2, cosine)",
        about_image_finetune=IMAGE_CPU_FINETUNE_ABOUT,
    ),
    "ci": Setting(
        "ci",
        both=(
            "--config.data.max_train_images=200",
            "--config.patches.size=96",
            "--config.patches.per_image=32",
            "--config.patches.min_patches=32",
            "--config.batch_size=32",
            "--config.eval.images_per_step=2",
            "--config.eval.plots=False",
            *SMALL_GEOMETRY,
        ),
        frozen=("--config.num_epochs=6", "--config.optim.lr_changes=((4, 1e-4),)"),
        finetune=("--config.num_epochs=1", "--config.data.max_train_images=60"),
        probe_size=160,
        about="minutes: 96-px patches at 4 scales, 32 per image, the first 200 trainval "
        "images, every test image",
        about_frozen="6 epochs from the feature cache (1e-4 from the fifth)",
        about_finetune="60 trainval images, one epoch",
        image_both=("--config.data.max_train_images=200", "--config.eval.plots=False"),
        image_finetune=(
            "--config.num_epochs=1",
            "--config.data.max_train_images=60",
            "--config.image.size=224",
        ),  # fmt: skip
        about_image="448-px canvases (the longer side), average pooling, the first 200 "
        "trainval images",
        about_image_frozen="20 epochs from the map cache",
        about_image_finetune="224 px, 60 trainval images, one epoch",
    ),
}


def convert_weights(out: Path) -> Path:
    """EfficientNet-Lite0 from its pip package, checked against its torch implementation
    (OUT/weights: compare's own, reused when an earlier invocation converted it)."""
    from voc_jax.convert import command

    target = out / "weights"
    if (target / "metadata.json").is_file():
        return target
    args = ["--arch", "efficientnet_lite0", "--package", "--out", str(target), "--verify"]
    if command.main(args) != 0:
        raise UserError(f"converting EfficientNet-Lite0 into {target} failed (above)")
    return target


@dataclasses.dataclass
class PatchRun:
    """One patch-method training compare runs: its argv, its resolved (validated) config and
    the fingerprint that says whether an earlier run in its workdir may be reused."""

    method: str
    workdir: Path
    argv: list[str]
    config: Any = None
    fingerprint: compare_out.Fingerprint | None = None


def image_arch(weights: Path | None) -> str:
    """The whole-image runs' backbone: the weights' (the package's Lite0 when not converted)."""
    if weights is None or not (weights / "metadata.json").is_file():
        return DEFAULT_ARCH
    from voc_jax import weights as weights_lib

    return weights_lib.backbone_of(weights_lib.read_metadata(weights / "metadata.json")
                                   ["architecture"]).name  # fmt: skip


def patch_argv(method: str, args: argparse.Namespace, setting: Setting, weights: Path) -> list[str]:
    """voc_jax.train's argv for ``method`` (without the fine-tuned run's head source)."""
    if method.startswith("image_"):
        variant = method.removeprefix("image_")
        config = f"{IMAGE_CONFIG}:{image_arch(weights)},{variant}"
        own = [*setting.image_both, *getattr(setting, method)]
        user = args.image_arg
    else:
        config = args.config + (":frozen" if method == "frozen" else "")
        own = [*setting.both, *getattr(setting, method)]
        user = args.train_arg
    limits = (
        [
            f"--config.data.max_train_images={args.images}",
            f"--config.data.max_test_images={args.images}",
        ]
        if args.images
        else []
    )
    return [
        "voc_jax.train",
        f"--config={config}",
        f"--workdir={args.out / method}",
        f"--config.data.root={args.voc}",
        f"--config.init.weights={weights}",
        *own,
        *limits,
        *user,
    ]


def resolve_patch_run(
    method: str, args: argparse.Namespace, setting: Setting, weights: Path | None
) -> PatchRun:
    """The run's config, parsed and validated as voc_jax.train would (every flag, the config
    file, the weights against the config), before anything runs. ``weights`` None: the
    package's EfficientNet-Lite0, not converted yet (its architecture is checked instead)."""
    from voc_jax import experiment
    from voc_jax import train as train_lib

    argv = patch_argv(method, args, setting, weights or args.out / "weights")
    if method in HEAD_SOURCE and args.finetune_head == "frozen":
        argv.insert(5, f"--config.init.head_from={args.out / HEAD_SOURCE[method]}")
    fv, _ = cli.parse(argv, train_lib.define_flags, program="voc_jax.train")
    config = fv.config
    if method.startswith("image_"):
        from voc_jax.image import validation as image_validation

        checked = config.copy_and_resolve_references()
        if weights is None:
            checked.init.weights = ""
        image_validation.validate(checked)
    elif weights is None:
        if config.model.arch != DEFAULT_ARCH or config.model.width != 1.0:
            raise ConfigError(
                f"--config {args.config}: a {config.model.arch} model (width "
                f"{config.model.width:g}), but the default weights are {DEFAULT_ARCH}'s; pass "
                f"--weights DIR converted for it, or --config {CONFIG}"
            )
        probe = config.copy_and_resolve_references()
        probe.init.weights = ""
        experiment.validate(probe)
    else:
        experiment.validate(config)
    return PatchRun(method, args.out / method, argv, config)


def run_patches(run: PatchRun) -> dict:
    """One patch-method training (resumed, or only re-evaluated, when its workdir holds an
    earlier run with the same fingerprint), its AP table."""
    from voc_jax import train
    from voc_jax import workdir as workdir_lib

    earlier = workdir_lib.checkpoint_steps(run.workdir)
    start = time.perf_counter()
    code = train.train_and_evaluate(run.config, run.workdir)
    if code != 0:
        raise CompareStopped(code, f"the {run.method} run stopped (exit status {code}); its "
                             f"workdir {run.workdir} resumes when the command is run again")  # fmt: skip
    evals = sorted(
        (d for d in (run.workdir / "eval").iterdir() if d.name.isdigit()),
        key=lambda d: int(d.name),
    )
    table = json.loads((evals[-1] / "ap_table.json").read_text())
    final = max(workdir_lib.checkpoint_steps(run.workdir), default=0)
    reused = None
    if earlier:
        reused = {"earlier_step": max(earlier), "final_step": final,
                  "retrained": max(earlier) < final}  # fmt: skip
    return {
        "results": {p: table["results"][p] for p in PROTOCOLS},
        **({"labels": table["labels"]} if "labels" in table else {}),
        "seconds": time.perf_counter() - start,
        "workdir": str(run.workdir),
        "argv": run.argv[1:],
        "fingerprint": run.fingerprint.digest,
        "reused": reused,
    }


class CompareStopped(UserError):
    """A training run compare started ended early (interrupted, or a non-finite loss): its
    exit status is compare's, and the run resumes when the command is run again."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def run_probe(
    weights: Path, size: int | None, splits, c_folds: int = 5, classes: Sequence[str] = VOC_CLASSES
) -> dict:
    settings = linear_probe.ProbeSettings(size=size, c_folds=c_folds)
    extractor = linear_probe.FeatureExtractor(weights)
    result = linear_probe.run(extractor, splits, settings, classes=classes)
    return {k: v for k, v in result.items() if k not in ("scores", "image_ids")} | {
        "settings": dataclasses.asdict(settings)
    }


def run_chance(splits, draws: int = 200, seed: int = 0) -> dict:
    """Random scores: per-class AP averaged over ``draws`` draws (seeded); the mAP over the
    classes that have a positive test image, as every other row's."""
    targets = linear_probe.targets_of(splits["test"])
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    results = {}
    for protocol in PROTOCOLS:
        aps = np.array(
            [
                [metrics.average_precision(rng.random(len(targets)), targets[:, c], protocol)
                 for c in range(targets.shape[1])]
                for _ in range(draws)
            ]
        )  # fmt: skip
        ap = aps.mean(0)  # NaN where the class has no positive test image
        mean = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
        results[protocol] = {"ap": [float(a) for a in ap], "map": mean}
    return {"results": results, "seconds": time.perf_counter() - start, "draws": draws}


def voc_classes(voc: Path) -> tuple[str, ...]:
    """The VOC-layout dataset's classes: its classes.txt, or VOC's 20."""
    from voc_jax.data.formats import dataset_classes

    return dataset_classes("voc", voc, (), "trainval")[0]


def load_real_splits(voc: Path, images: int = 0, classes: Sequence[str] = VOC_CLASSES) -> dict:
    """train, val, trainval and test records (``images``: the first that many of trainval
    and test, and the train and val images among them; only those are read and checked).
    train and val must lie in trainval (the probe chooses C on them and refits on trainval)."""
    from voc_jax.data.voc import load_dataset, read_split

    for split in ("train", "val", "trainval", "test"):
        if not (voc / "ImageSets" / "Main" / f"{split}.txt").is_file():
            raise ConfigError(f"--voc {voc}: no ImageSets/Main/{split}.txt (a VOC2007 directory?)")
    # trainval and test are read and checked; train and val are parts of trainval, taken from
    # it (reading them again would parse and check every trainval file twice).
    # With ``images``, only the first that many of each are (a quick look at full VOC would
    # parse 10,000 annotations to use 48).
    loaded = {s: load_dataset(voc, s, images="sizes", classes=classes, first=images).records
              for s in ("trainval", "test")}  # fmt: skip
    for split in ("trainval", "test"):
        if not loaded[split]:
            raise DataError(f"--voc {voc}: ImageSets/Main/{split}.txt lists no image")
    by_id = {r.image_id: r for r in loaded["trainval"]}
    in_trainval = set(read_split(voc, "trainval"))
    splits = {}
    for split in ("train", "val"):
        ids = read_split(voc, split)
        stray = [i for i in ids if i not in in_trainval]
        if stray:
            raise DataError(
                f"{voc / 'ImageSets' / 'Main' / (split + '.txt')}: {len(stray)} image(s) not in "
                f"trainval.txt (first: {stray[0]}); train and val must be parts of trainval"
            )
        splits[split] = [by_id[i] for i in ids if i in by_id]  # with images: those read
    return splits | loaded


def method_label(method: str, setting: Setting, finetune_head: str = "frozen") -> str:
    label = LABELS[method].format(size=setting.probe_size)
    return label + FINETUNE_HEADS[finetune_head] if method in HEAD_SOURCE else label


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.1f}"


def table(rows: dict[str, dict], classes: Sequence[str] = VOC_CLASSES) -> str:
    """Markdown: classes and mAP down, each method's VOC07 and all-points AP across, and the
    wall time of each. A class without a positive test image has no AP: n/a."""
    names = list(rows)
    header = ["class"] + [f"{rows[m]['label']}: {p}" for m in names for p in PROTOCOLS]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for c, name in enumerate([*classes, "**mAP**"]):
        cells = [name]
        for m in names:
            for p in PROTOCOLS:
                r = rows[m]["results"][p]
                value = r["map"] if c == len(classes) else r["ap"][c]
                text = _percent(value)
                cells.append(f"**{text}**" if c == len(classes) else text)
        lines.append("| " + " | ".join(cells) + " |")
    times = ["wall time"] + [t for m in names for t in (_minutes(rows[m]["seconds"]), "")]
    lines.append("| " + " | ".join(times) + " |")
    return "\n".join(lines)


def label_table(rows: dict[str, dict]) -> str:
    """Markdown: each method's label-set metrics (voc_jax.multilabel) at the threshold and for
    its top-k labels; empty when no row has them (chance has none)."""
    from voc_jax import multilabel

    named = [m for m in rows if "labels" in rows[m]]
    if not named:
        return ""
    lines = ["| method | labels | " + " | ".join(multilabel.NAMES) + " |",
             "|---|---|" + "---:|" * len(multilabel.NAMES)]  # fmt: skip
    for m in named:
        labels = rows[m]["labels"]
        k, t = labels["top_k"], labels["threshold"]
        for key, what in (("all", f"p >= {t:g}"), (f"top{k}", f"top-{k}, p >= {t:g}")):
            cells = [_percent(labels[key][n]) for n in multilabel.NAMES]
            lines.append(f"| {rows[m]['label']} | {what} | " + " | ".join(cells) + " |")
    scores = "; ".join(f"{rows[m]['label']}: {rows[m]['labels']['score']}" for m in named)
    return "\n".join(lines + ["", f"In %. p: {scores}. C: the mean over classes; O: over all "
                               "labels; difficult-only pairs ignored (docs/training.md)."])  # fmt: skip


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def bar_plot(rows: dict[str, dict], path: Path, classes: Sequence[str] = VOC_CLASSES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(classes) + 1)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(16, 0.7 * len(classes)), 5))
    for i, m in enumerate(names):
        r = rows[m]["results"]["voc07"]
        values = np.nan_to_num(100 * np.array([*r["ap"], r["map"]], dtype=float))
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width,
               label=f"{rows[m]['label']} ({_percent(r['map'])})")  # fmt: skip
    ax.set_xticks(x, [*classes, "mAP"], rotation=45, ha="right")
    ax.set_ylabel("AP, VOC07 protocol (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=9, ncol=len(names), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def score_maps(out: Path, splits, count: int) -> list[str]:
    """The frozen run's score maps of the first ``count`` test photos with two classes or
    more (where a map shows which patch saw what)."""
    from voc_jax import predict

    workdir = out / "frozen"
    picked = [r for r in splits["test"] if len(set(r.labels.tolist())) >= 2][:count]
    if not picked or not (workdir / "config.json").is_file():
        return []
    maps = out / "score_maps"
    predict.predict_images(
        workdir, [str(r.image_path) for r in picked], step=None, top=3, out=str(maps)
    )
    return sorted(p.name for p in maps.glob("*.png"))


def reuse_notes(rows: dict) -> list[str]:
    """One line per row that an earlier invocation trained (in whole or in part)."""
    notes = []
    for row in rows.values():
        r = row.get("reused")
        if not r:
            continue
        if r["retrained"]:
            notes.append(f"- {row['label']}: resumed from step {r['earlier_step']} of an earlier "
                         f"invocation's run (same fingerprint), trained to step {r['final_step']} "
                         "now")  # fmt: skip
        else:
            notes.append(f"- {row['label']}: **reused**: trained to step {r['final_step']} by an "
                         "earlier invocation with the same fingerprint (config, weights, "
                         "images); only evaluated now")  # fmt: skip
    return notes


def c_edge_notes(rows: dict) -> list[str]:
    """The probe's classes whose chosen C lies on its grid's edge even after widening it."""
    notes = []
    for row in rows.values():
        edge = row.get("c_at_edge") or {}
        if edge:
            cells = ", ".join(f"{name} (C={c:g})" for name, c in edge.items())
            notes.append(f"- {row['label']}: C on the edge of the widened grid for {cells}: "
                         "the best C may lie beyond it")  # fmt: skip
    return notes


def family_notes(rows: dict, classes: Sequence[str] = VOC_CLASSES) -> list[str]:
    """Which classes each family wins: per class, the best patch row against the best
    whole-image row (VOC07 AP), as measured, whichever way it falls."""
    patch = [m for m in ("frozen", "finetune") if m in rows]
    image = [m for m in ("image_frozen", "image_finetune") if m in rows]
    if not patch or not image:
        return []

    def best(methods, c):
        return max(rows[m]["results"]["voc07"]["ap"][c] for m in methods)

    wins: dict[str, list[str]] = {"patches": [], "whole image": [], "tie": []}
    for c, name in enumerate(classes):
        a, b = best(patch, c), best(image, c)
        if not (np.isfinite(a) and np.isfinite(b)):
            continue
        wins["patches" if a > b else "whole image" if b > a else "tie"].append(name)
    lines = ["", "Per class, the better family (its best row, VOC07 AP):"]
    for family, names in wins.items():
        if names:
            lines.append(f"- {family} ({len(names)}): {', '.join(names)}")
    return lines


def report(
    rows: dict,
    setting: Setting,
    args: argparse.Namespace,
    splits,
    maps,
    classes: Sequence[str] = VOC_CLASSES,
) -> str:
    counts = {k: len(v) for k, v in splits.items()}
    command = " ".join(["python -m voc_jax.compare", *sys.argv[1:]]) if sys.argv[1:] else ""
    weights = args.weights or args.out / "weights"
    lines = [
        f"# The method on real photographs: {args.voc}",
        "",
        f"Setting `{setting.name}`: {setting.describe(list(rows))}. Images: trainval "
        f"{counts['trainval']} "
        f"(train {counts['train']}, val {counts['val']}), test {counts['test']}. Weights: "
        f"`{weights}`.",
        "",
        table(rows, classes),
        "",
        "AP in %, on the test split; VOC07: the official 11-point protocol; area: all-points "
        "AP; difficult-only images ignored in both; n/a: a class without a positive test "
        "image, left out of every mean. Chance: the mean of 200 random draws. Wall time: "
        "this invocation's.",
    ]
    labels = label_table(rows)
    lines += (
        ["", "The label sets the multi-label papers report beside mAP:", "", labels]
        if labels
        else []
    )
    reused = reuse_notes(rows)
    lines += ["", "Rows from earlier invocations:", *reused] if reused else []
    edges = c_edge_notes(rows)
    lines += ["", "The probe's C:", *edges] if edges else []
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += family_notes(rows, classes)
    for m in TRAINED:
        if m in rows:
            lines += ["", f"{m}: `python -m voc_jax.train {' '.join(rows[m]['argv'])}`"]
    if maps:
        lines += ["", "Score maps (the frozen run): " + ", ".join(f"score_maps/{m}" for m in maps)]
    return "\n".join(lines) + "\n"


ANY = "*"  # the floor of every method (but chance) that names none of its own


def parse_floors(values: Sequence[str]) -> dict[str, float]:
    """``--floor 60`` (every method but chance) and ``--floor image_frozen=75`` (one method),
    repeatable; each a VOC07 mAP in %."""
    floors = {}
    for text in values:
        for part in str(text).split(","):
            method, _, value = part.rpartition("=")
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not (np.isfinite(number) and 0 <= number <= 100):
                raise ConfigError(f"--floor {part}: must be a VOC07 mAP in % (0 to 100), or "
                                  "METHOD=mAP")  # fmt: skip
            floors[method or ANY] = number
    return floors


def below_floors(rows: dict, floors: dict[str, float]) -> list[str]:
    """One line per method whose VOC07 mAP lies below its floor (its own, else the shared)."""
    lines = []
    for m, row in rows.items():
        floor = floors.get(m, floors.get(ANY))
        if m == "chance" or floor is None:
            continue
        value = row["results"]["voc07"]["map"]
        if not (np.isfinite(value) and 100 * value >= floor):
            lines.append(f"{row['label']}: VOC07 mAP {_percent(value)} is below the floor "
                         f"{floor:g}")  # fmt: skip
    return lines


def check_flags(args: argparse.Namespace) -> None:
    """Every flag, before anything is read or written."""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods {','.join(unknown)}: expected some of {','.join(METHODS)}")
    if not args.methods or len(set(args.methods)) != len(args.methods):
        raise ConfigError(f"--methods {','.join(args.methods)}: name each method once")
    if args.images < 0:
        raise ConfigError(f"--images {args.images}: must be 0 (every image) or more")
    if args.probe_c_folds == 1 or args.probe_c_folds < 0:
        raise ConfigError(f"--probe-c-folds {args.probe_c_folds}: 0 (train -> val) or 2 or more")
    if args.score_maps < 0:
        raise ConfigError(f"--score-maps {args.score_maps}: must be 0 or more")
    if args.floor:
        args.floors = parse_floors(args.floor)
        unknown = sorted(set(args.floors) - {ANY} - set(args.methods))
        if unknown:
            raise ConfigError(f"--floor {','.join(unknown)}=...: not among --methods "
                              f"{','.join(args.methods)}")  # fmt: skip
        if "chance" in args.floors:
            raise ConfigError("--floor chance=...: chance has no floor (it is the baseline)")
        if not set(args.methods) - {"chance"}:
            raise ConfigError(
                "--floor: only chance would run, and the floor holds every method but chance; "
                "add a method to --methods or drop --floor"
            )
    if not (args.voc / "Annotations").is_dir():
        raise ConfigError(f"--voc {args.voc}: not a VOC2007 directory (no Annotations/)")
    if args.weights and not (Path(args.weights) / "metadata.json").is_file():
        raise ConfigError(
            f"--weights {args.weights}: no converted weights there (metadata.json missing); "
            "convert them with voc-jax-convert, or leave --weights out for EfficientNet-Lite0's"
        )


def plan_patch_runs(args, setting: Setting, weights: Path | None) -> list[PatchRun]:
    """Every patch run's config, resolved and validated (nothing runs or is written)."""
    runs = [resolve_patch_run(m, args, setting, weights) for m in args.methods if m in TRAINED]
    if args.finetune_head == "frozen":
        for r in runs:
            if r.method in HEAD_SOURCE:
                frozen_head(args, r.method, HEAD_SOURCE[r.method] in args.methods)
    return runs


def fingerprint_runs(
    out: compare_out.CompareOut, runs: list[PatchRun], weights: Path, splits, fresh: bool
) -> None:
    """Each run's fingerprint, checked against what an earlier invocation recorded."""
    from voc_jax import workdir as workdir_lib

    weights_digest = compare_out.weights_digest(weights)
    images = compare_out.images_digest([*splits["trainval"], *splits["test"]])
    digests: dict[str, str] = {}
    for run in runs:  # a head's source first, when both run
        starts = ""
        source = HEAD_SOURCE.get(run.method)
        if source and run.config.init.head_from:
            recorded = out.recorded(source) or {}
            starts = digests.get(source) or recorded.get("digest", "")
        # The config as the run will settle it: the dataset's class names (classes.txt) too
        settled = class_config.resolve(run.config)
        run.fingerprint = compare_out.Fingerprint.of(
            settled.to_dict(), weights_digest, images, starts
        )
        digests[run.method] = run.fingerprint.digest
        trained = bool(workdir_lib.checkpoint_steps(run.workdir))
        out.check_reuse(run.method, run.fingerprint, fresh, trained)


def frozen_head(args: argparse.Namespace, method: str, source_runs_now: bool) -> None:
    """The fine-tuned run starts from the frozen run's head (LP-FT: Kumar et al. 2022,
    fine-tuning distorts pretrained features least from a fitted head): the frozen run must
    run now or have a checkpoint, unless the fine-tuned run is under way already (and not
    being redone with --fresh)."""
    from voc_jax import workdir as workdir_lib

    source = HEAD_SOURCE[method]
    frozen = args.out / source
    if source_runs_now:
        return
    if not args.fresh and workdir_lib.checkpoint_steps(args.out / method):
        return
    if not workdir_lib.checkpoint_steps(frozen):
        raise UserError(
            f"the {method} run starts from the {source} run's head, but {frozen} has no "
            f"checkpoint: run --methods {source},{method} (or pass --finetune-head fresh)"
        )


def run(args: argparse.Namespace) -> int:
    """Check everything, then run the methods in order and write the report."""
    check_flags(args)
    setting = SETTINGS[args.setting]
    out = compare_out.CompareOut(args.out)
    out.check()
    classes = voc_classes(args.voc)
    splits = load_real_splits(args.voc, args.images, classes)
    needs_weights = any(m != "chance" for m in args.methods)
    weights = Path(args.weights) if args.weights else None
    if weights is None and (args.out / "weights" / "metadata.json").is_file():
        weights = args.out / "weights"  # converted by an earlier invocation
    runs = plan_patch_runs(args, setting, weights)
    if weights is not None and runs:
        fingerprint_runs(out, runs, weights, splits, args.fresh)
    out.claim()
    use_compile_cache(args.out / "xla_cache")
    if weights is None and needs_weights:
        weights = convert_weights(args.out)
        runs = plan_patch_runs(args, setting, weights)
        fingerprint_runs(out, runs, weights, splits, args.fresh)
    if args.fresh:
        for r in runs:
            out.remove_run(r.method)
    return run_methods(args, setting, out, runs, weights, splits, classes)


def use_compile_cache(directory: Path) -> None:
    """JAX's persistent compilation cache in OUT (unless the user set one): a second
    invocation skips the compiles, most of all the own-size probe's one per photo size. Set
    once OUT is compare's (the checks before may compile small programs, which would create
    it early), and JAX's cache state reset so that the next compile reads the setting."""
    import os

    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    compilation_cache.set_cache_dir(str(directory))
    compilation_cache.reset_cache()


def run_methods(args, setting: Setting, out, runs: list[PatchRun], weights, splits,
                classes: Sequence[str] = VOC_CLASSES) -> int:  # fmt: skip
    by_method = {r.method: r for r in runs}
    rows: dict[str, dict] = {}
    for method in args.methods:
        label = method_label(method, setting, args.finetune_head)
        print(f"\n== {label}", flush=True)
        if method in by_method:
            out.record(method, by_method[method].fingerprint)
            try:
                rows[method] = run_patches(by_method[method])
            except CompareStopped as stopped:
                print(str(stopped), file=sys.stderr, flush=True)
                return stopped.code
        elif method == "probe":
            rows[method] = run_probe(weights, setting.probe_size, splits, args.probe_c_folds,
                                     classes)  # fmt: skip
        elif method == "probe_own":
            rows[method] = run_probe(weights, None, splits, args.probe_c_folds, classes)
        else:
            rows[method] = run_chance(splits)
        rows[method]["label"] = label
        print(f"{label}: VOC07 mAP {_percent(rows[method]['results']['voc07']['map'])}",
              flush=True)  # fmt: skip
    maps = score_maps(args.out, splits, args.score_maps) if "frozen" in rows else []
    results = {
        "setting": dataclasses.asdict(setting),
        "voc": str(args.voc),
        "weights": str(weights) if weights else None,
        "classes": list(classes),
        "methods": rows,
    }
    out.write_text("results.json", json.dumps(results, indent=2) + "\n")
    bar_plot(rows, args.out / "ap_bars.png", classes)
    text = report(rows, setting, args, splits, maps, classes)
    out.write_text("report.md", text)
    print("\n" + text)
    if args.floor:
        below = below_floors(rows, args.floors)
        for line in below:
            print(f"error: {line}", file=sys.stderr)
        if below:
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m voc_jax.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--voc", type=Path, required=True, help="a VOC2007 directory")
    parser.add_argument("--out", type=Path, required=True, help="where everything goes")
    parser.add_argument(
        "--weights", help="converted weights (default: EfficientNet-Lite0 from its package)"
    )
    parser.add_argument("--setting", choices=tuple(SETTINGS), default="cpu")
    parser.add_argument(
        "--methods",
        type=lambda text: tuple(text.split(",")),
        default=METHODS,
        help=f"comma-separated, of {','.join(METHODS)} (default: all)",
    )
    parser.add_argument("--score-maps", type=int, default=3, help="test photos to map")
    parser.add_argument(
        "--probe-c-folds",
        type=int,
        default=linear_probe.ProbeSettings().c_folds,
        help="the probe's C by K-fold cross-validation on trainval (default %(default)s); 0: "
        "chosen on train -> val, the official split",
    )
    parser.add_argument(
        "--config", default=CONFIG, help="the patch method's config (match it to --weights)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=0,
        help="only the first N trainval and test images, the only ones read and checked (a quick "
        "look; 0: all)",
    )
    parser.add_argument(
        "--floor",
        action="append",
        default=[],
        help="exit 1 when a method's VOC07 mAP (in %%) is below its floor (CI): N for every "
        "method but chance, METHOD=N for one (repeatable, comma-separated)",
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="an extra --config.x=... for both patch runs (repeatable)",
    )
    parser.add_argument(
        "--image-arg",
        action="append",
        default=[],
        help="an extra --config.x=... for both whole-image runs (repeatable)",
    )
    parser.add_argument(
        "--finetune-head",
        choices=("frozen", "fresh"),
        default="frozen",
        help="the fine-tuned runs' head at the start: their frozen run's (OUT/frozen, "
        "OUT/image_frozen: LP-FT; the default) or a random one",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="redo the --methods' training runs that an earlier invocation left in OUT (only "
        "those compare made; the others stay: a fine-tuned run redone alone still starts from "
        "the frozen run's head). Without it a run is reused only when its config, weights and "
        "images are unchanged, and refused otherwise",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cli.argparse_command(argv, build_parser(), run)


if __name__ == "__main__":
    sys.exit(main())
