"""The main job: pretrain, convert, train, evaluate and predict, end to end, offline.

The path a user takes with real ImageNet weights and VOC 2007, in miniature on generated data
(real weights and images cannot be downloaded here):

1. pretrain a torchvision AlexNet on the synthetic single-object source task
   (scripts/pretrain_synthetic.py; reused when the .pth exists; --pth FILE uses yours);
   ``--arch vgg16`` or ``--arch resnet50``: a quarter-width instance of that family instead;
2. convert it with convert/alexnet_to_flax.py --arch ... --verify;
3. train the smoke config on the synthetic VOC dataset (python -m voc_jax.train, frozen
   backbone, new head) and evaluate the test split (per-class AP table);
4. compare its mAP with chance (random scores on the same split): exit 1 unless it is above
   the 99th percentile of 200 random draws;
5. predict two test images with score maps (python -m voc_jax.predict).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from voc_jax import models

REPO = Path(__file__).resolve().parent.parent


def step(index: int, text: str) -> None:
    print(f"\n[{index}/5] {text}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code:
        from voc_jax.errors import UserError

        raise UserError(f"the step above failed (exit status {code}): {' '.join(cmd)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "quickstart")
    parser.add_argument("--pth", type=Path, help="your own torchvision-layout .pth of --arch")
    parser.add_argument(
        "--arch",
        choices=models.ARCHITECTURES,
        default="alexnet",
        help="the backbone family (vgg16, resnet50: a quarter-width instance)",
    )
    parser.add_argument(
        "--pretrain-arg",
        action="append",
        default=[],
        help="extra argument for scripts/pretrain_synthetic.py (repeatable)",
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="extra override for the smoke training (repeatable), e.g. --train-arg=--config.seed=1",
    )
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    t0 = time.time()

    name = f"source_{args.arch}"
    pth = args.pth.resolve() if args.pth else work / f"{name}.pth"
    if args.pth:
        step(1, f"using your weights {pth}")
    elif pth.exists():
        step(1, f"reusing the pretrained source network {pth} (delete it to pretrain again)")
    else:
        step(1, f"pretraining {args.arch} on the synthetic single-object source task (PyTorch)")
        run(
            [py, "scripts/pretrain_synthetic.py", "--out", str(pth), "--arch", args.arch]
            + args.pretrain_arg
        )
    source = pth.with_suffix(".json")
    if source.exists():
        info = json.loads(source.read_text())
        print(
            f"source-task accuracy {info['val_accuracy']:.3f} (chance {info['chance_accuracy']:.3f})"
        )

    converted = work / name
    step(2, "converting it to Flax, checked against torch")
    run(
        [py, "convert/alexnet_to_flax.py", "--arch", args.arch, "--pth", str(pth)]
        + ["--out", str(converted), "--force", "--verify", "--verify-size", "64", "71x83"]
    )
    width = json.loads((converted / "metadata.json").read_text())["architecture"]["width"]

    smoke = work / ("smoke" if args.arch == "alexnet" else f"smoke_{args.arch}")
    shutil.rmtree(smoke, ignore_errors=True)  # a fresh run each time
    step(3, "training the smoke config (frozen backbone, new head) and evaluating")
    started = time.time()
    run(
        [py, "-m", "voc_jax.train", "--config", "voc_jax/configs/smoke.py"]
        + [f"--workdir={smoke}", f"--config.init.weights={converted}"]
        + [f"--config.model.arch={args.arch}", f"--config.model.width={width}", *args.train_arg]
    )
    train_seconds = time.time() - started

    import numpy as np

    from voc_jax import metrics

    evals = sorted(
        (d for d in (smoke / "eval").iterdir() if d.name.isdigit()), key=lambda d: int(d.name)
    )
    summary = json.loads((evals[-1] / "ap_table.json").read_text())
    ours = summary["results"]["voc07"]["map"]
    chance = metrics.chance_map(np.load(evals[-1] / "scores.npz")["targets"], "voc07")
    step(4, "compared with chance")
    print(
        f"smoke: generate + train + evaluate {train_seconds:.0f} s; VOC07 mAP {100 * ours:.1f} "
        f"on {summary['images']} synthetic test images; random scores {100 * chance['mean']:.1f} "
        f"+- {100 * chance['std']:.1f} (99th percentile {100 * chance['p99']:.1f})"
    )
    if not ours > chance["p99"]:
        print("error: the smoke run did not beat chance", file=sys.stderr)
        return 1

    step(5, "predicting two test images with score maps")
    test_ids = (smoke / "data" / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    images = [str(smoke / "data" / "VOC2007" / "JPEGImages" / f"{i}.jpg") for i in test_ids[:2]]
    run([py, "-m", "voc_jax.predict", f"--workdir={smoke}", "--top=2", *images])
    print(f"\ndone in {time.time() - t0:.0f} s; outputs in {work}")
    return 0


if __name__ == "__main__":
    from voc_jax.cli import run_guarded

    sys.exit(run_guarded(main))
