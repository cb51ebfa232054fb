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
Each method's run stays in OUT/<method>/ (a training workdir for the patch methods: resumed,
not redone, when the command is run again). ``--setting`` picks the size: ``reference`` (the
reference's own: 224-px patches, 448 per image, all 13 scales; a GPU's work),
``cpu`` (what two CPU cores do in about an hour and a half) or ``ci`` (minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voc_jax import cli, linear_probe, metrics
from voc_jax.classes import VOC_CLASSES
from voc_jax.errors import ConfigError, UserError

METHODS = ("frozen", "finetune", "probe", "probe_own", "chance")
PROTOCOLS = ("voc07", "area")
FINETUNE_HEADS = {"frozen": " from the frozen head", "fresh": ", fresh head"}
CONFIG = "voc_jax/configs/voc07_lite0.py"  # --config: the patch method's, for other weights
LABELS = {
    "frozen": "patches, frozen (Oquab)",
    "finetune": "patches, fine-tuned",  # + FINETUNE_HEADS[--finetune-head]
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
    about: str = ""


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
        "the 13 scales (11 at least), every image; frozen: 10 epochs from the cache; "
        "fine-tuned: 3 epochs (1e-3, 1e-4 in the last), to fit one GPU call",
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
        "sampled for training and spread for testing, updates of 32; frozen: 10 epochs from the "
        "cache; fine-tuned: 1 epoch at 1e-4 from the frozen run's head",
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
        "images (fine-tuned: 60, one epoch), every test image; the probe at 160 px",
    ),
}


def convert_weights(out: Path) -> Path:
    """EfficientNet-Lite0 from its pip package, checked against its torch implementation."""
    from voc_jax.convert import command

    target = out / "weights"
    if (target / "metadata.json").is_file():
        return target
    args = ["--arch", "efficientnet_lite0", "--package", "--out", str(target), "--verify"]
    if command.main(args) != 0:
        raise UserError(f"converting EfficientNet-Lite0 into {target} failed (above)")
    return target


def run_patches(method: str, args: argparse.Namespace, setting: Setting, weights: Path) -> dict:
    """One patch-method training (resumed if its workdir holds checkpoints), its AP table."""
    from voc_jax import train

    config = args.config + (":frozen" if method == "frozen" else "")
    workdir = args.out / method
    limits = (
        [
            f"--config.data.max_train_images={args.images}",
            f"--config.data.max_test_images={args.images}",
        ]
        if args.images
        else []
    )
    argv = [
        "voc_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.root={args.voc}",
        f"--config.init.weights={weights}",
        *setting.both,
        *getattr(setting, method),
        *limits,
        *args.train_arg,
    ]
    if method == "finetune" and args.finetune_head == "frozen":
        argv.insert(5, f"--config.init.head_from={frozen_head(args.out / 'frozen', workdir)}")
    start = time.perf_counter()
    code = train.main(argv)
    if code != 0:
        raise UserError(f"the {method} run failed (exit status {code}); its workdir: {workdir}")
    evals = sorted(
        (d for d in (workdir / "eval").iterdir() if d.name.isdigit()), key=lambda d: int(d.name)
    )
    table = json.loads((evals[-1] / "ap_table.json").read_text())
    return {
        "results": {p: table["results"][p] for p in PROTOCOLS},
        "seconds": time.perf_counter() - start,
        "workdir": str(workdir),
        "argv": argv[1:],
    }


def frozen_head(frozen: Path, workdir: Path) -> Path:
    """The frozen run, whose trained head starts the fine-tuned one (LP-FT: Kumar et al.
    2022, fine-tuning distorts pretrained features least from a fitted head). A fine-tuned
    run already under way resumes from its own checkpoints and needs nothing from it."""
    from voc_jax import workdir as workdir_lib

    if not workdir_lib.checkpoint_steps(workdir) and not workdir_lib.checkpoint_steps(frozen):
        raise UserError(
            f"the fine-tuned run starts from the frozen run's head, but {frozen} has no "
            "checkpoint: run --methods frozen,finetune (or pass --finetune-head fresh)"
        )
    return frozen


def run_probe(args: argparse.Namespace, weights: Path, size: int | None, splits) -> dict:
    settings = linear_probe.ProbeSettings(size=size)
    extractor = linear_probe.FeatureExtractor(weights)
    result = linear_probe.run(extractor, splits, settings)
    return {k: v for k, v in result.items() if k not in ("scores", "image_ids")} | {
        "settings": dataclasses.asdict(settings)
    }


def run_chance(splits, draws: int = 200, seed: int = 0) -> dict:
    """Random scores: per-class AP and mAP averaged over ``draws`` draws (seeded)."""
    targets = linear_probe.targets_of(splits["test"])
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    results = {}
    for protocol in PROTOCOLS:
        aps = np.array(
            [
                [metrics.average_precision(rng.random(len(targets)), targets[:, c], protocol)
                 for c in range(len(VOC_CLASSES))]
                for _ in range(draws)
            ]
        )  # fmt: skip
        results[protocol] = {"ap": aps.mean(0).tolist(), "map": float(aps.mean(1).mean())}
    return {"results": results, "seconds": time.perf_counter() - start, "draws": draws}


def load_real_splits(voc: Path, images: int = 0) -> dict:
    """train, val, trainval and test records (``images``: the first that many of trainval
    and test, and the train and val images among them)."""
    from voc_jax.data.voc import load_dataset

    splits = {}
    for split in ("train", "val", "trainval", "test"):
        if not (voc / "ImageSets" / "Main" / f"{split}.txt").is_file():
            raise ConfigError(f"--voc {voc}: no ImageSets/Main/{split}.txt (a VOC2007 directory?)")
        splits[split] = load_dataset(voc, split, images="sizes").records
    if images:
        for split in ("trainval", "test"):
            splits[split] = splits[split][:images]
        kept = {r.image_id for r in splits["trainval"]}
        for split in ("train", "val"):
            splits[split] = [r for r in splits[split] if r.image_id in kept]
    return splits


def method_label(method: str, setting: Setting, finetune_head: str = "frozen") -> str:
    label = LABELS[method].format(size=setting.probe_size)
    return label + FINETUNE_HEADS[finetune_head] if method == "finetune" else label


def table(rows: dict[str, dict]) -> str:
    """Markdown: classes and mAP down, each method's VOC07 and all-points AP across, and the
    wall time of each."""
    names = list(rows)
    header = ["class"] + [f"{rows[m]['label']}: {p}" for m in names for p in PROTOCOLS]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for c, name in enumerate([*VOC_CLASSES, "**mAP**"]):
        cells = [name]
        for m in names:
            for p in PROTOCOLS:
                r = rows[m]["results"][p]
                value = r["map"] if c == len(VOC_CLASSES) else r["ap"][c]
                text = f"{100 * value:.1f}"
                cells.append(f"**{text}**" if c == len(VOC_CLASSES) else text)
        lines.append("| " + " | ".join(cells) + " |")
    times = ["wall time"] + [t for m in names for t in (_minutes(rows[m]["seconds"]), "")]
    lines.append("| " + " | ".join(times) + " |")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def bar_plot(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(VOC_CLASSES) + 1)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(16, 5))
    for i, m in enumerate(names):
        r = rows[m]["results"]["voc07"]
        values = 100 * np.array([*r["ap"], r["map"]])
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width,
               label=f"{rows[m]['label']} ({100 * r['map']:.1f})")  # fmt: skip
    ax.set_xticks(x, [*VOC_CLASSES, "mAP"], rotation=45, ha="right")
    ax.set_ylabel("AP, VOC07 protocol (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=9, ncol=len(names), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def score_maps(args: argparse.Namespace, splits, count: int) -> list[str]:
    """The frozen run's score maps of the first ``count`` test photos with two classes or
    more (where a map shows which patch saw what)."""
    from voc_jax import predict

    workdir = args.out / "frozen"
    picked = [r for r in splits["test"] if len(set(r.labels.tolist())) >= 2][:count]
    if not picked or not (workdir / "config.json").is_file():
        return []
    out = args.out / "score_maps"
    predict.predict_images(
        workdir, [str(r.image_path) for r in picked], step=None, top=3, out=str(out)
    )
    return sorted(p.name for p in out.glob("*.png"))


def report(rows: dict, setting: Setting, args: argparse.Namespace, splits, maps) -> str:
    counts = {k: len(v) for k, v in splits.items()}
    command = " ".join(["python -m voc_jax.compare", *sys.argv[1:]]) if sys.argv[1:] else ""
    lines = [
        f"# The method on real photographs: {args.voc}",
        "",
        f"Setting `{setting.name}`: {setting.about}. Images: trainval {counts['trainval']} "
        f"(train {counts['train']}, val {counts['val']}), test {counts['test']}.",
        "",
        table(rows),
        "",
        "AP in %, on the test split; VOC07: the official 11-point protocol; area: all-points "
        "AP; difficult-only images ignored in both. Chance: the mean of 200 random draws. "
        "Wall time: this invocation's (a patch run resumed from, or reusing, an earlier "
        "invocation's workdir counts only what ran now).",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    for m in ("frozen", "finetune"):
        if m in rows:
            lines += ["", f"{m}: `python -m voc_jax.train {' '.join(rows[m]['argv'])}`"]
    if maps:
        lines += ["", "Score maps (the frozen run): " + ", ".join(f"score_maps/{m}" for m in maps)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if not (args.voc / "Annotations").is_dir():
        raise ConfigError(f"--voc {args.voc}: not a VOC2007 directory (no Annotations/)")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods {','.join(unknown)}: expected some of {','.join(METHODS)}")
    setting = SETTINGS[args.setting]
    args.out.mkdir(parents=True, exist_ok=True)
    splits = load_real_splits(args.voc, args.images)
    weights = Path(args.weights) if args.weights else None
    if weights is None and any(m != "chance" for m in args.methods):
        weights = convert_weights(args.out)
    rows: dict[str, dict] = {}
    for method in args.methods:
        label = method_label(method, setting, args.finetune_head)
        print(f"\n== {label}", flush=True)
        if method in ("frozen", "finetune"):
            rows[method] = run_patches(method, args, setting, weights)
        elif method == "probe":
            rows[method] = run_probe(args, weights, setting.probe_size, splits)
        elif method == "probe_own":
            rows[method] = run_probe(args, weights, None, splits)
        else:
            rows[method] = run_chance(splits)
        rows[method]["label"] = label
        mean = rows[method]["results"]["voc07"]["map"]
        print(f"{label}: VOC07 mAP {100 * mean:.2f}", flush=True)
    maps = score_maps(args, splits, args.score_maps) if "frozen" in rows else []
    results = {"setting": dataclasses.asdict(setting), "voc": str(args.voc), "methods": rows}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    bar_plot(rows, args.out / "ap_bars.png")
    text = report(rows, setting, args, splits, maps)
    (args.out / "report.md").write_text(text)
    print("\n" + text)
    if args.floor is not None:
        worst = min(rows[m]["results"]["voc07"]["map"] for m in rows if m != "chance")
        if not 100 * worst >= args.floor:
            print(f"error: a method's VOC07 mAP {100 * worst:.2f} is below the floor "
                  f"{args.floor:g}", file=sys.stderr)  # fmt: skip
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
        "--config", default=CONFIG, help="the patch method's config (match it to --weights)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=0,
        help="only the first N trainval and test images (a quick look; 0: all)",
    )
    parser.add_argument(
        "--floor",
        type=float,
        default=None,
        help="exit 1 when any method's VOC07 mAP (in %%) is below this (CI)",
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="an extra --config.x=... for both patch runs (repeatable)",
    )
    parser.add_argument(
        "--finetune-head",
        choices=("frozen", "fresh"),
        default="frozen",
        help="the fine-tuned run's head at the start: the frozen run's (OUT/frozen, LP-FT; "
        "the default) or a random one",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="remove the earlier runs of the --methods first (the others stay: a fine-tuned "
        "run redone alone still starts from the frozen run's head)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        if args.fresh:
            for m in set(args.methods) & set(METHODS):
                shutil.rmtree(args.out / m, ignore_errors=True)
        return run(args)

    return cli.argparse_command(argv, build_parser(), body)


if __name__ == "__main__":
    sys.exit(main())
