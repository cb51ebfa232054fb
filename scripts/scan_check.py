"""Check that the train step's two forms agree on this backend: the micro-batch updates as a
``lax.scan`` (the default off the CPU) and unrolled as straight-line code (the CPU default).

    python scripts/scan_check.py --out scan.json [--width 1.0] [--patch-size 224]

Same state, same batch, one call each: prints and writes the largest parameter difference;
exit status 1 if it exceeds the tolerance (float rounding of a different program order).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from voc_jax.data.pipeline import epoch_dataset
from voc_jax.data.synthetic import SyntheticConfig, generate
from voc_jax.data.voc import load_dataset
from voc_jax.experiment import Experiment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=float, default=1.0, help="model.width (1.0: AlexNet)")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--patches", type=int, default=64, help="patches per image (2 updates)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rtol", type=float, default=1e-3)
    args = parser.parse_args()
    from voc_jax.configs import voc07_alexnet

    config = voc07_alexnet.get_config()
    config.model.width = args.width
    config.model.dtype = args.dtype
    config.patches.size = args.patch_size
    config.patches.per_image = config.patches.min_patches = args.patches
    config.patches.min_scales = 4
    config.batch_size = args.patches // 2
    root = generate(
        Path(tempfile.mkdtemp()) / "VOC2007",
        SyntheticConfig(num_trainval=2, num_test=1, min_side=160, max_side=320),
    )
    records = load_dataset(root, "trainval").records
    exp = Experiment.build(config)
    batch = epoch_dataset(records, exp.patches, images_per_batch=1, train=True, seed=0)[0]
    optimizer = exp.optimizer(10)
    results = {}
    for unroll in (True, False):
        state = jax.tree.map(jax.numpy.copy, exp.initial_state(optimizer))
        step = exp.train_step(optimizer, unroll=unroll)
        state, metrics = step(state, batch)
        results[unroll] = (jax.tree.map(np.asarray, state.params), float(metrics["loss"]))
    diffs = [
        float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
        for a, b in zip(
            jax.tree.leaves(results[True][0]), jax.tree.leaves(results[False][0]), strict=True
        )
    ]
    report = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "width": args.width,
        "patch_size": args.patch_size,
        "dtype": args.dtype,
        "loss_unrolled": results[True][1],
        "loss_scan": results[False][1],
        "max_relative_param_diff": max(diffs),
        "rtol": args.rtol,
        "equal": max(diffs) <= args.rtol,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0 if report["equal"] else 1


if __name__ == "__main__":
    from voc_jax.cli import run_guarded

    sys.exit(run_guarded(main))
