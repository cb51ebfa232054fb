"""Real-size parity of every backbone with torchvision: ImageNet logits of the converted Flax
model against torchvision's, at 224x224 and 239x263, randomly initialised weights with
non-default BatchNorm statistics (real weights cannot be downloaded here; the layout rules
are the same). Prints one line per case and exits 1 if any is above the tolerance.

    python scripts/parity.py                      # alexnet, vgg16, resnet50; ~2 min on 2 cores
    python scripts/parity.py --arch resnet50 --tolerance 1e-5
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
import torch

from voc_jax import models
from voc_jax.convert import layout
from voc_jax.convert import torch_models as tm

SIZES = ((224, 224), (239, 263))


def parity(arch: str, sizes=SIZES, batch: int = 2, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    tmodel = tm.randomize_batch_norm(tm.classifier(arch), seed).eval()
    state = {k: v.numpy().copy() for k, v in tmodel.state_dict().items()}
    variables, num_classes, width = layout.torch_to_flax(arch, state, f"torchvision {arch}")
    model = models.build(arch, num_classes, width=width)
    apply = jax.jit(model.apply)
    rows = []
    for h, w in sizes:
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            want = tmodel(x).numpy()
        with jax.default_matmul_precision("highest"):
            got = np.asarray(apply(variables, x.numpy().transpose(0, 2, 3, 1)))
        scale = float(np.abs(want).max())
        rows.append(
            {"arch": arch, "size": f"{h}x{w}", "relative": float(np.abs(got - want).max()) / scale}
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=models.ARCHITECTURES, action="append")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max |diff| / max |logit|")
    args = parser.parse_args()
    worst = 0.0
    for arch in args.arch or models.ARCHITECTURES:
        start = time.perf_counter()
        for row in parity(arch):
            worst = max(worst, row["relative"])
            print(
                f"{row['arch']:9s} {row['size']:8s} max |flax - torch| / max |logit| = "
                f"{row['relative']:.2e} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    ok = worst <= args.tolerance
    print(f"worst {worst:.2e}: {'within' if ok else 'ABOVE'} the tolerance {args.tolerance:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
