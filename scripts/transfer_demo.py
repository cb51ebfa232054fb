"""Does transfer work here? Pretrain, convert, then train three ways and draw the seed's figure.

Offline and in miniature, through exactly the path a user takes with real weights:

1. ``scripts/pretrain_synthetic.py``: a torchvision AlexNet trained in PyTorch on the synthetic
   single-object source task (the ImageNet role), saved as a torchvision ``.pth``;
2. ``convert/alexnet_to_flax.py --pth ... --verify``: the real converter;
3. ``python -m voc_jax.train --config voc_jax/configs/transfer_demo.py`` three times on the same
   synthetic VOC data with the same seeds and epochs: (a) from scratch, (b) pretrained with
   everything fine-tuned, (c) pretrained with the backbone frozen (Oquab et al.); each is
   evaluated on the test split after every epoch (``python -m voc_jax.evaluate``'s code);
4. ``transfer_demo.png`` (test mAP and training loss per epoch, the three curves),
   ``transfer_demo.md`` (per-class AP and mAP of the final epoch, wall times) and
   ``transfer_demo.json`` in the workdir.

    python scripts/transfer_demo.py                  # about 17 minutes on 2 CPU cores
    python scripts/transfer_demo.py --quick          # tiny sizes: checks the plumbing

Stages whose outputs exist are reused (a finished run is not retrained; an interrupted one
resumes from its checkpoint); ``--force`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from voc_jax.classes import VOC_CLASSES
from voc_jax.metric_writer import read_metrics

REPO = Path(__file__).resolve().parents[1]

RUNS = {
    "scratch": "from scratch",
    "finetune": "pretrained, all layers fine-tuned",
    "frozen": "pretrained, backbone frozen",
}
PROTOCOL = "voc07"

# Tiny sizes for --quick: every stage runs, nothing is expected to learn; an eighth-wide
# AlexNet (the same layers, the same converter path) so that its compiles and steps are brief.
QUICK_WIDTH = 0.125
QUICK_PRETRAIN = ["--classes", "10", "--train-per-class", "6", "--val-per-class", "2"]
QUICK_PRETRAIN += ["--epochs", "1", "--batch-size", "16", "--width", str(QUICK_WIDTH)]
QUICK_TRAIN = [
    f"--config.model.width={QUICK_WIDTH}",
    "--config.num_epochs=2",
    "--config.data.synthetic.num_trainval=4",
    "--config.data.synthetic.num_test=3",
    "--config.data.synthetic.min_side=96",
    "--config.data.synthetic.max_side=160",
    "--config.patches.canvas=(160, 160)",
    "--config.patches.per_image=8",
    "--config.patches.min_patches=8",
    "--config.batch_size=8",
    "--config.model.head_hidden=32",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=Path("runs/transfer_demo"))
    p.add_argument("--pth", type=Path, help="use this pretrained .pth instead of pretraining")
    p.add_argument("--epochs", type=int, help="target epochs (default: the config's, 6)")
    p.add_argument(
        "--frozen-lr", type=float, default=0.01, help="learning rate of the frozen run's head"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, a minute or two")
    p.add_argument("--force", action="store_true", help="delete the workdir's results first")
    p.add_argument(
        "--pretrain-arg",
        action="append",
        default=[],
        help="extra argument for pretrain_synthetic.py (repeatable), e.g. --pretrain-arg=--epochs=4",
    )
    p.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="extra override for all three runs (repeatable), e.g. --train-arg=--config.seed=1",
    )
    return p.parse_args(argv)


def run(cmd: list[str], log: Path) -> float:
    """Run one stage as its own process, tee its output to ``log``; return the wall time."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            f.write(raw.decode(errors="replace"))
            sys.stdout.buffer.write(raw)
            sys.stdout.flush()
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"stage failed with exit code {code}: {' '.join(cmd)} (log: {log})")
    return time.perf_counter() - start


def epoch_curves(workdir: Path) -> dict[str, list]:
    """Per epoch: test mAP (from eval/<step>/ap_table.json) and mean training loss."""
    evals = []
    for d in (workdir / "eval").iterdir():
        table = d / "ap_table.json"
        if d.name.isdigit() and table.exists():
            evals.append((int(d.name), json.loads(table.read_text())))
    evals.sort(key=lambda e: e[0])
    losses = {r["epoch"]: r["epoch_loss"] for r in read_metrics(workdir) if "epoch_loss" in r}
    return {
        "steps": [s for s, _ in evals],
        "map": [e["results"][PROTOCOL]["map"] for _, e in evals],
        "ap": [e["results"][PROTOCOL]["ap"] for _, e in evals],
        "loss": [losses[k] for k in sorted(losses)],
    }


def first_epoch_reaching(curve: list[float], level: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= level - 1e-12), None)


def write_figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_map, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in results.items():
        epochs = np.arange(1, len(r["map"]) + 1)
        ax_map.plot(epochs, 100 * np.array(r["map"]), marker="o", label=RUNS[name])
        ax_loss.plot(np.arange(1, len(r["loss"]) + 1), r["loss"], marker="o", label=RUNS[name])
    chance = results[next(iter(results))].get("chance_map")
    if chance is not None:
        ax_map.axhline(100 * chance, color="grey", ls=":", label="chance (random scores)")
    ax_map.set(xlabel="epoch", ylabel=f"test mAP ({PROTOCOL}, %)", title="Test mAP per epoch")
    ax_loss.set(xlabel="epoch", ylabel="mean patch cross-entropy", title="Training loss")
    for ax in (ax_map, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Transfer on synthetic VOC: AlexNet pretrained on synthetic single objects")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def chance_map(workdir: Path) -> float:
    """Mean voc07 mAP of random scores on this test split: the floor the curves start from."""
    from voc_jax.metrics import chance_map as chance

    last = max(
        (d for d in (workdir / "eval").iterdir() if d.name.isdigit()), key=lambda d: int(d.name)
    )
    return chance(np.load(last / "scores.npz")["targets"], PROTOCOL)["mean"]


def markdown_table(results: dict) -> str:
    names = list(results)
    head = "| class | " + " | ".join(RUNS[n] for n in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    rows = [head, rule]
    for c, cls in enumerate(VOC_CLASSES):
        cells = [f"{100 * results[n]['ap'][-1][c]:.1f}" for n in names]
        rows.append(f"| {cls} | " + " | ".join(cells) + " |")
    rows.append(
        "| **mAP** | " + " | ".join(f"**{100 * results[n]['map'][-1]:.1f}**" for n in names) + " |"
    )
    rows.append(
        "| epochs to reach scratch's final mAP | "
        + " | ".join(str(results[n]["epochs_to_scratch_final"] or "never") for n in names)
        + " |"
    )
    rows.append(
        "| training + evaluation wall time | "
        + " | ".join(f"{results[n]['wall_seconds']:.0f} s" for n in names)
        + " |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir.resolve()
    if args.force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    start = time.perf_counter()
    py = sys.executable
    times: dict[str, float] = {}

    # 1. the source network
    pth = args.pth.resolve() if args.pth else work / "source_alexnet.pth"
    if not pth.exists():
        if args.pth:
            raise SystemExit(f"--pth {args.pth} does not exist")
        cmd = [py, "scripts/pretrain_synthetic.py", "--out", str(pth)]
        cmd += (QUICK_PRETRAIN if args.quick else []) + args.pretrain_arg
        times["pretrain"] = run(cmd, logs / "pretrain.log")
    source_json = pth.with_suffix(".json")
    source = json.loads(source_json.read_text()) if source_json.exists() else {}

    # 2. the real converter
    converted = work / "source_alexnet"
    if not (converted / "metadata.json").exists():
        size = str(source.get("source", {}).get("size", 64))
        cmd = [py, "convert/alexnet_to_flax.py", "--pth", str(pth), "--out", str(converted)]
        cmd += ["--verify", "--verify-size", size, "--force"]
        times["convert"] = run(cmd, logs / "convert.log")

    # 3. three runs on the same data, seeds and epochs
    common = [
        "-m",
        "voc_jax.train",
        "--config",
        str(REPO / "voc_jax/configs/transfer_demo.py"),
        f"--config.data.root={work / 'data' / 'VOC2007'}",
        "--config.data.generate=True",  # the first run generates it, the others reuse it
    ]
    common += (QUICK_TRAIN if args.quick else []) + args.train_arg
    if args.epochs:
        common.append(f"--config.num_epochs={args.epochs}")
    variants = {
        "scratch": [],
        "finetune": [f"--config.init.weights={converted}"],
        "frozen": [
            f"--config.init.weights={converted}",
            "--config.optim.trainable=('head/.*',)",
            f"--config.optim.learning_rate={args.frozen_lr}",
            f"--config.optim.lr_changes=((4, {args.frozen_lr / 10:g}),)",
        ],
    }
    results: dict[str, dict] = {}
    for name, extra in variants.items():
        run_dir = work / name
        done = run_dir / "done.json"
        if not done.exists():
            wall = run([py, *common, f"--workdir={run_dir}", *extra], logs / f"train_{name}.log")
            done.write_text(json.dumps({"wall_seconds": wall}) + "\n")
        results[name] = epoch_curves(run_dir) | json.loads(done.read_text())

    # 4. figure, table, JSON
    scratch_final = results["scratch"]["map"][-1]
    for r in results.values():
        r["epochs_to_scratch_final"] = first_epoch_reaching(r["map"], scratch_final)
    chance = chance_map(work / "scratch")
    for r in results.values():
        r["chance_map"] = chance
    write_figure(results, work / "transfer_demo.png")
    table = markdown_table(results)
    (work / "transfer_demo.md").write_text(table + "\n")
    summary = {
        "quick": args.quick,
        "protocol": PROTOCOL,
        "source_task": {
            k: source.get(k) for k in ("val_accuracy", "chance_accuracy", "wall_seconds")
        },
        "chance_map": chance,
        "runs": results,
        "stage_seconds": times,
        "total_seconds": time.perf_counter() - start,
    }
    (work / "transfer_demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + table)
    if source:
        print(
            f"\nsource task: accuracy {source['val_accuracy']:.3f} "
            f"(chance {source['chance_accuracy']:.3f})"
        )
    print(f"chance mAP (random scores): {100 * chance:.1f}")
    print(f"written: {work / 'transfer_demo.png'}, {work / 'transfer_demo.md'}")
    print(f"total wall time of this invocation: {summary['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    from voc_jax.cli import run_guarded

    sys.exit(run_guarded(main))
