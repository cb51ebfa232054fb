"""``voc_jax.predict`` for a whole-image workdir: the photo at each scale through the network,
the image probabilities (the sigmoid of the pooled logits) and, for free, a localisation map
per class: the sigmoid of the class's logit at every position of the first scale's map, over
the part of the canvas the photo covers (Oquab et al. 2015's "localisation for free")."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from voc_jax import xla_options
from voc_jax.data.pipeline import ImageError, decode_image
from voc_jax.image.experiment import ImageExperiment
from voc_jax.image.inputs import fit, pad_value, valid_grid


class ImagePredictor:
    def __init__(self, exp: ImageExperiment, variables: Any):
        self.exp = exp
        self.variables = jax.device_put(variables)
        s = exp.settings.image
        self.inputs, self.pooling = s.inputs, s.pooling
        self.pad = pad_value(exp.preprocessing)
        module, prep = exp.module, exp.preprocessing

        def positions(variables, pixels):
            return module.apply(variables, prep.normalize(pixels, module.dtype))

        self._positions = xla_options.jit(positions)

    def __call__(self, path: str) -> dict:
        from voc_jax.image.pooling import pool

        rgb = decode_image(str(path), orient=True)
        h, w = rgb.shape[:2]
        if min(h, w) < 2:
            raise ImageError(f"{path}: is {w}x{h} pixels, too small")
        logits, valid, first = [], [], None
        for side, scale in zip(self.inputs.sides, self.inputs.scales, strict=True):
            canvas, extent = fit(rgb, side, self.inputs, self.pad, scale=scale)
            out = np.asarray(self._positions(self.variables, canvas[None]))[0]  # [gh, gw, C]
            mask = valid_grid(extent, canvas.shape[:2], out.shape[:2])
            if first is None:
                first = (out, mask, extent, canvas.shape[:2])
            logits.append(out.reshape(-1, out.shape[-1]))
            valid.append(mask.reshape(-1))
        pooled = np.asarray(pool(np.concatenate(logits)[None], np.concatenate(valid)[None],
                                 self.pooling))[0]  # fmt: skip
        out, mask, extent, (height, width) = first
        rows, cols = mask.any(axis=1).sum(), mask.any(axis=0).sum()
        heat = 1.0 / (1.0 + np.exp(-out[:rows, :cols].astype(np.float64)))
        # The cells' span in the photo's pixels (the last cells may reach past its edge).
        span = (
            rows * height / out.shape[0] * h / extent[0],
            cols * width / out.shape[1] * w / extent[1],
        )
        return {
            "image": rgb,
            "scores": 1.0 / (1.0 + np.exp(-pooled.astype(np.float64))),
            "heat": heat,
            "heat_span": span,
            "positions": int(np.concatenate(valid).sum()),
            "pooling": self.pooling,
        }


def score_meaning(result: dict) -> str:
    p = result["pooling"]
    how = {"avg": "average", "max": "maximum", "lse": f"log-sum-exp, r={p.r:g}",
           "topk": f"mean of the {p.k} best"}[p.kind]  # fmt: skip
    return (
        f"image score: the probability of the class, sigmoid of its logit pooled over "
        f"{result['positions']} map positions ({how})"
    )
