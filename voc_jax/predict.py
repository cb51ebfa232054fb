"""Classes present in images, with score maps: ``python -m voc_jax.predict --workdir DIR IMG...``

Every candidate patch of the image (the training geometry, not a sample) goes through the
evaluation step (crops where the configuration puts them: the host on a CPU, the device
elsewhere); the image score of a class is the reference's pooling (sum of p^exponent). For the top
classes a score map spreads each patch's probability over its area and divides by how many
patches cover each pixel (Oquab et al.'s localisation picture). Prints the ranked classes and
writes ``<out>/<image stem>.png``: the image and one overlay per top class.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import flags

from voc_jax import cli, commands
from voc_jax import workdir as workdir_lib
from voc_jax.data import patches as P
from voc_jax.data.pipeline import ImageError, decode_image, example_from_boxes, fit_canvas
from voc_jax.data.voc import set_max_pixels
from voc_jax.errors import ConfigError
from voc_jax.experiment import Experiment

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
    """One image -> every candidate patch's class probabilities and the image scores, through
    the evaluation step (the same crops, chunked forward and pooling as evaluation)."""

    def __init__(self, exp: Experiment, variables):
        self.variables = jax.device_put(variables)  # params (and BatchNorm statistics)
        self.patch_cfg, self.chunk = exp.patches, exp.train.batch_size
        self.exponent = exp.eval.exponent
        self._step = exp.eval_step(probabilities=True)

    def __call__(self, path: str | Path) -> dict:
        c = self.patch_cfg
        rgb = decode_image(str(path), orient=True)  # a phone photo's EXIF orientation
        rgb, _ = fit_canvas(rgb, np.zeros((0, 4), np.float32), c.canvas)
        h, w = rgb.shape[:2]
        if min(h, w) < 2:
            raise ImageError(f"{path}: is {w}x{h} pixels, too small for patches")
        boxes, _ = P.patch_boxes(w, h, c.scales, c.min_patches, c.min_scales)
        n, chunk = len(boxes), self.chunk
        # Pad to a multiple of the batch size and to a few fixed lengths (fewer compiles).
        padded = -(-n // chunk) * chunk
        padded = max(padded, 1 << int(np.ceil(np.log2(max(padded, 1)))))
        padded = -(-padded // chunk) * chunk
        all_boxes = np.concatenate([boxes, np.repeat(boxes[:1], padded - n, 0)])
        valid = np.arange(padded) < n
        example = example_from_boxes(rgb, all_boxes, np.full(padded, -1), valid, 0, c)
        out = self._step(self.variables, {k: np.asarray(v)[None] for k, v in example.items()})
        probs = np.asarray(out["probs"][0, :n])
        scores = np.asarray(out["power"][0])
        return {"image": rgb, "boxes": boxes, "probs": probs, "scores": scores,
                "exponent": self.exponent}  # fmt: skip


def score_meaning(result: dict) -> str:
    """What the printed and drawn image score is, in words."""
    if "heat" in result:  # the whole-image family
        from voc_jax.image.predict import score_meaning as image_meaning

        return image_meaning(result)
    return (
        f"image score: the sum over its {len(result['boxes'])} patches of "
        f"p(class | patch)^{result['exponent']:g} (at most {len(result['boxes'])})"
    )


def figure(result: dict, top: int, title: str):
    """The image and the top classes' score maps, all on one colour scale (probability 0-1)
    with one colour bar, so that maps are comparable across panels and images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, scores = result["image"], result["scores"]
    h, w = image.shape[:2]
    best = np.argsort(-scores)[:top]
    fig, axes = plt.subplots(1, top + 1, figsize=(4 * (top + 1) + 0.8, 4 * h / w + 1.0))
    axes[0].imshow(image)
    axes[0].set_title(title, fontsize=9)
    shown = None
    for ax, c in zip(axes[1:], best, strict=True):
        if "heat" in result:  # the whole-image family: its map positions' probabilities
            heat = result["heat"][:, :, c]
            span_h, span_w = result["heat_span"]
            extent = (0, span_w, span_h, 0)
        else:
            heat = score_map(result["boxes"], result["probs"][:, c + 1], h, w, stride=4)
            extent = (0, w, h, 0)
        ax.imshow(image)
        shown = ax.imshow(
            heat,
            extent=extent,
            cmap="jet",
            alpha=0.5,
            vmin=0.0,
            vmax=1.0,
            interpolation="bilinear" if "heat" in result else "antialiased",
        )
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(f"{result['classes'][c]}: image score {scores[c]:.3g}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    if shown is not None:
        bar = fig.colorbar(shown, ax=list(axes), fraction=0.02, pad=0.01)
        bar.set_label(
            "p(class) at each map position"
            if "heat" in result
            else "p(class | patch), mean of the patches covering each pixel",
            fontsize=8,
        )
    fig.text(0.01, 0.01, score_meaning(result), fontsize=8)
    return fig


def save_figure(result: dict, out: Path, top: int, title: str) -> None:
    import matplotlib.pyplot as plt

    fig = figure(result, top, title)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)


def output_names(paths: Sequence[str]) -> list[str]:
    """``<stem>.png`` per image, made unique (``a.png``, ``a-2.png``) when stems repeat, so
    that two ``img.jpg`` from two folders never overwrite each other."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


define_flags = commands.define_predict_flags


def predict_images(
    workdir: Path,
    images: Sequence[str],
    *,
    step: int | None,
    top: int,
    out: str | None,
    max_pixels: int | None = None,
) -> int:
    """Predict every image; a bad one is reported (one error line) and the rest go on;
    exit status 2 at the end if any failed."""
    config = workdir_lib.load_config(workdir)
    workdir_lib.check_before_evaluating(config, workdir)
    set_max_pixels(max_pixels or config.data.max_image_pixels)
    out_dir = Path(out) if out else workdir / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):  # before the predictions, not after
        raise ConfigError(f"{out_dir}: cannot write there (permission denied); pass --out DIR")
    predictor, found, classes = make_predictor(config, workdir, step)
    width = max(12, *(len(n) for n in classes))
    failed = 0
    for path, name in zip(images, output_names(images), strict=True):
        try:
            result = predictor(path) | {"classes": classes}
        except ImageError as e:
            cli.report(str(e))
            failed += 1
            continue
        ranked = np.argsort(-result["scores"])
        what = f"{len(result['boxes'])} patches" if "boxes" in result else "whole image"
        print(f"{path}: {what} (checkpoint step {found}); {score_meaning(result)}")
        for c in ranked[: max(top, 5)]:
            print(f"  {classes[c]:<{width}} {result['scores'][c]:.4g}")
        target = out_dir / name
        save_figure(result, target, top, Path(path).name)
        print(f"  wrote {target}")
    if failed:
        print(f"{failed} of {len(images)} images could not be predicted", file=sys.stderr)
        return cli.EXIT_USER_ERROR
    return 0


def make_predictor(config, workdir: Path, step: int | None) -> tuple:
    """(predictor, checkpoint step, class names) of the workdir's method family; the class
    names are the run's own (its config.json's data.classes)."""
    if config.get("method", "patches") == "image":
        from voc_jax.image import run as image_run
        from voc_jax.image.experiment import ImageExperiment
        from voc_jax.image.predict import ImagePredictor

        exp = ImageExperiment.build(config)
        found, variables = image_run.restore_for_evaluation(exp, workdir, step)
        return ImagePredictor(exp, variables), found, exp.settings.data.classes
    exp = Experiment.build(config)
    found, variables = workdir_lib.restore_variables(workdir, exp.model.variables, step)
    return Predictor(exp, variables), found, exp.data.classes


def run_command(fv: flags.FlagValues, images: list[str]) -> int:
    if fv.workdir is None or not images:
        raise ConfigError("usage: python -m voc_jax.predict --workdir DIR IMAGE...")
    return predict_images(
        Path(fv.workdir), images, step=fv.checkpoint, top=fv.top, out=fv.out,
        max_pixels=fv.max_pixels,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    return cli.command(argv, define_flags, run_command, program="voc_jax.predict")


if __name__ == "__main__":
    sys.exit(main())
