"""Classes present in images, with score maps: ``python -m voc_jax.predict --workdir DIR IMG...``

Every candidate patch of the image (the training geometry, not a sample) goes through the
model; the image score of a class is the reference's pooling (sum of p^exponent). For the top
classes a score map spreads each patch's probability over its area and divides by how many
patches cover each pixel (Oquab et al.'s localisation picture). Prints the ranked classes and
writes ``<out>/<image stem>.png``: the image and one overlay per top class.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from voc_jax import experiment
from voc_jax.classes import VOC_CLASSES
from voc_jax.data import patches as P
from voc_jax.data.crops import crop_patches
from voc_jax.data.pipeline import decode_image, fit_canvas, pad_to_canvas

log = logging.getLogger(__name__)


def score_map(
    boxes: np.ndarray, values: np.ndarray, height: int, width: int, stride: int = 1
) -> np.ndarray:
    """[H/stride, W/stride] mean of ``values`` over the patches covering each pixel (0 where
    none does). Each box adds its value to a rectangle through a 2-D difference array."""
    h, w = -(-height // stride), -(-width // stride)
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1))
    x0 = np.clip(np.floor(boxes[:, 0] / stride).astype(int), 0, w)
    y0 = np.clip(np.floor(boxes[:, 1] / stride).astype(int), 0, h)
    x1 = np.clip(np.ceil(boxes[:, 2] / stride).astype(int), 0, w)
    y1 = np.clip(np.ceil(boxes[:, 3] / stride).astype(int), 0, h)
    for grid, v in ((total, values), (count, np.ones_like(values))):
        np.add.at(grid, (y0, x0), v)
        np.add.at(grid, (y0, x1), -v)
        np.add.at(grid, (y1, x0), -v)
        np.add.at(grid, (y1, x1), v)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = count.cumsum(0).cumsum(1)[:h, :w]
    return np.where(count > 0.5, total / np.maximum(count, 1), 0.0)


class Predictor:
    def __init__(self, config, params, setup: experiment.ModelSetup):
        self.config, self.params, self.setup = config, params, setup
        self.patch_cfg = experiment.patch_config(config)
        size, chunk = config.patches.size, config.batch_size

        def probabilities(params, image, image_size, boxes):
            patches = crop_patches(image[None], image_size[None], boxes[None], size)[0]
            x = setup.preprocessing.normalize(patches, setup.model.dtype)
            logits = jax.lax.map(
                lambda c: setup.model.apply({"params": params}, c),
                x.reshape(-1, chunk, *x.shape[1:]),
            )
            return jax.nn.softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)

        self._probabilities = jax.jit(probabilities)

    def __call__(self, path: str | Path) -> dict:
        c = self.patch_cfg
        rgb = decode_image(str(path))
        rgb, _ = fit_canvas(rgb, np.zeros((0, 4), np.float32), c.canvas)
        h, w = rgb.shape[:2]
        boxes, _ = P.patch_boxes(w, h, c.scales, c.min_patches, c.min_scales)
        n = len(boxes)
        padded = -(-n // self.config.batch_size) * self.config.batch_size
        # Pad to a multiple of the batch size and to a few fixed lengths (fewer compiles).
        padded = max(padded, 1 << int(np.ceil(np.log2(max(padded, 1)))))
        boxes_in = np.concatenate([boxes, np.repeat(boxes[:1], padded - n, 0)]).astype(np.float32)
        probs = np.asarray(
            self._probabilities(
                self.params,
                jnp.asarray(pad_to_canvas(rgb, c.canvas)),
                jnp.asarray([h, w], jnp.int32),
                jnp.asarray(boxes_in),
            )
        )[:n]
        scores = (probs[:, 1:] ** self.config.eval.exponent).sum(0)
        return {"image": rgb, "boxes": boxes, "probs": probs, "scores": scores}


def save_figure(result: dict, out: Path, top: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, boxes, probs, scores = (result[k] for k in ("image", "boxes", "probs", "scores"))
    h, w = image.shape[:2]
    best = np.argsort(-scores)[:top]
    fig, axes = plt.subplots(1, top + 1, figsize=(4 * (top + 1), 4 * h / w + 0.6))
    axes[0].imshow(image)
    axes[0].set_title(title, fontsize=9)
    for ax, c in zip(axes[1:], best, strict=True):
        heat = score_map(boxes, probs[:, c + 1], h, w, stride=4)
        ax.imshow(image)
        ax.imshow(
            heat, extent=(0, w, h, 0), cmap="jet", alpha=0.5, vmin=0, vmax=max(heat.max(), 1e-6)
        )
        ax.set_title(f"{VOC_CLASSES[c]}  score {scores[c]:.3g}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "training workdir (config.json, checkpoints)")
    flags.DEFINE_integer("checkpoint", None, "checkpoint step (default: the latest)")
    flags.DEFINE_integer("top", 3, "classes to show score maps for")
    flags.DEFINE_string("out", None, "where PNGs go (default WORKDIR/predict)")


def main(argv: Sequence[str]) -> int:
    from voc_jax import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    images = argv[1:]
    if FLAGS.workdir is None or not images:
        print("usage: python -m voc_jax.predict --workdir DIR IMAGE...", file=sys.stderr)
        return 2
    workdir = Path(FLAGS.workdir)
    config = experiment.load_config(workdir)
    setup = experiment.build_model(config)
    params = train.restore_state(config, setup, workdir, FLAGS.checkpoint).params
    predictor = Predictor(config, params, setup)
    out_dir = Path(FLAGS.out) if FLAGS.out else workdir / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in images:
        result = predictor(path)
        ranked = np.argsort(-result["scores"])
        print(f"{path}: {len(result['boxes'])} patches")
        for c in ranked[: max(FLAGS.top, 5)]:
            print(f"  {VOC_CLASSES[c]:<12} {result['scores'][c]:.4g}")
        target = out_dir / f"{Path(path).stem}.png"
        save_figure(result, target, FLAGS.top, Path(path).name)
        print(f"  wrote {target}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
