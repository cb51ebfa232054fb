"""Real-size parity of every backbone with its torch reference (torchvision's models;
EfficientNet-Lite0: efficientnet-lite-pytorch): ImageNet logits of the converted Flax model
against the reference's, at 224x224 and 239x263, randomly initialised weights with
non-default BatchNorm statistics (real weights cannot be downloaded here; the layout rules
are the same); for a backbone whose genuine weights a pip package ships (EfficientNet-Lite0),
those weights too, against the torch implementation they were made for. Prints one line per
case and exits 1 if any is above the tolerance.

    python scripts/parity.py                      # every backbone; ~3 min on 2 cores
    python scripts/parity.py --arch efficientnet_lite0   # random and genuine weights
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


def parity(
    arch: str, sizes=SIZES, batch: int = 2, seed: int = 0, width: float = 1.0, dtype=None
) -> list[dict]:
    """Relative logit differences of the converted model against torchvision's (float32,
    torch on the CPU); ``dtype=jnp.bfloat16`` runs the Flax side in bfloat16."""
    torch.manual_seed(seed)
    tmodel = tm.randomize_batch_norm(tm.classifier(arch, width=width), seed).eval()
    state = {k: v.numpy().copy() for k, v in tmodel.state_dict().items()}
    variables, num_classes, width = layout.torch_to_flax(
        models.backbone(arch), state, f"torch {arch}"
    )
    options = {"width": width} | ({"dtype": dtype} if dtype is not None else {})
    model = models.build(arch, num_classes, **options)
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


def genuine_parity(arch: str, sizes=SIZES, batch: int = 2, seed: int = 0) -> list[dict]:
    """The same comparison with the genuine ImageNet weights a backbone's pip package ships
    (EfficientNet-Lite0's), against the torch implementation they were made for."""
    from voc_jax.convert import converter

    b = models.backbone(arch)
    result = converter.from_package(b)
    rows = []
    for h, w in sizes:
        stats = converter.verify_against_torch(
            result.variables, result.metadata, result.state, input_size=(h, w), batch=batch,
            seed=seed,
        )  # fmt: skip
        rows.append({"arch": f"{arch} (genuine)", "size": f"{h}x{w}", "relative": stats["max_rel"]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=models.ARCHITECTURES, action="append")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max |diff| / max |logit|")
    parser.add_argument("--width", type=float, default=1.0, help="narrower networks (dry runs)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the Flax side's compute dtype (bfloat16: set --tolerance to about 5e-2)",
    )
    args = parser.parse_args()
    dtype = jax.numpy.bfloat16 if args.dtype == "bfloat16" else None
    print(f"JAX on {jax.devices()[0]}, {args.dtype}; torchvision float32 on the CPU")
    worst = 0.0
    for arch in args.arch or models.ARCHITECTURES:
        start = time.perf_counter()
        width = args.width if arch != "alexnet" else 1.0
        rows = parity(arch, width=width, dtype=dtype)
        if models.backbone(arch).package is not None and dtype is None and args.width == 1.0:
            rows += genuine_parity(arch)
        for row in rows:
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
