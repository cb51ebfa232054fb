"""The main job, until training lands: convert an AlexNet and run it on a real JPEG.

Steps, each printed: (1) save a seeded, randomly initialised torchvision AlexNet as a .pth
(real ImageNet weights cannot be downloaded offline; pass --pth to use your own file),
(2) convert it with convert/alexnet_to_flax.py --verify, (3) load the converted directory,
(4) run the ImageNet classifier and the VOC transfer model on one JPEG and print the outputs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def find_jpeg(explicit: Path | None, workdir: Path) -> Path:
    """The given image, else a real VOC JPEG from ../shared/data, else a generated one."""
    if explicit is not None:
        return explicit
    shared = REPO.parent / "shared" / "data" / "voc2007-subset" / "VOCdevkit" / "VOC2007"
    jpegs = sorted((shared / "JPEGImages").glob("*.jpg")) if shared.is_dir() else []
    if jpegs:
        return jpegs[0]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    path = workdir / "generated.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path


def center_crop_224(path: Path) -> np.ndarray:
    """torchvision's eval transform: shorter side to 256, centre crop 224 (RGB uint8)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    s = 256 / min(w, h)
    image = image.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return np.asarray(image.crop((left, top, left + 224, top + 224)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "quickstart")
    parser.add_argument("--pth", type=Path, help="your own torchvision AlexNet state dict")
    parser.add_argument("--image", type=Path, help="a JPEG to classify")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    pth = args.pth
    if pth is None:
        import torch
        import torchvision

        torch.manual_seed(0)
        pth = args.workdir / "alexnet_random_init.pth"
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), pth)
        print(f"[1/4] saved a randomly initialised torchvision AlexNet (seed 0) to {pth}")
    else:
        print(f"[1/4] using {pth}")

    out = args.workdir / "alexnet_flax"
    cmd = [sys.executable, str(REPO / "convert" / "alexnet_to_flax.py"), "--pth", str(pth)]
    cmd += ["--out", str(out), "--force", "--verify"]
    print(f"[2/4] {' '.join(cmd)}")
    subprocess.run(cmd, check=True)

    import jax
    import jax.numpy as jnp

    from voc_jax import weights
    from voc_jax.classes import MODEL_CLASSES
    from voc_jax.model import TransferNet

    params, metadata = weights.load_converted(out)
    prep = weights.preprocessing_of(metadata)
    print(f"[3/4] loaded {out}: preprocessing {prep.to_dict()}")

    image_path = find_jpeg(args.image, args.workdir)
    x = prep.normalize(jnp.asarray(center_crop_224(image_path))[None])
    classifier = weights.classifier_from_metadata(metadata)
    logits = classifier.apply({"params": params}, x)
    top5 = np.argsort(-np.asarray(logits[0]))[:5]
    names = metadata.get("categories") or [f"imagenet class {i}" for i in range(1000)]
    print(f"[4/4] {image_path} ({Image.open(image_path).size[0]}x{Image.open(image_path).size[1]})")
    print("  ImageNet top-5 (meaningless for random weights):")
    for i in top5:
        print(f"    {names[i]:<24} logit {float(logits[0, i]):+.4f}")
    transfer = TransferNet(conv1_padding=metadata["architecture"]["conv1_padding"])
    tparams = weights.transfer_params(params, metadata, seed=0)
    probs = jax.nn.softmax(transfer.apply({"params": tparams}, x)[0])
    best = np.argsort(-np.asarray(probs))[:3]
    print("  VOC transfer model (head untrained) top-3 softmax:")
    for i in best:
        print(f"    {MODEL_CLASSES[i]:<24} p={float(probs[i]):.4f}")
    print(f"done in {time.time() - t0:.1f} s on {jax.devices()[0].platform}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
