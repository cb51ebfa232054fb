"""voc_jax/predict.py: score maps against a loop, and the CLI on a briefly trained workdir."""

from __future__ import annotations

import shutil

import numpy as np

from tests.helpers import call
from voc_jax import predict
from voc_jax.classes import VOC_CLASSES
from voc_jax.predict import score_map


def test_score_map_matches_a_loop():
    rng = np.random.default_rng(0)
    h, w = 30, 40
    boxes = []
    for _ in range(25):
        x0, y0 = rng.integers(0, w - 5), rng.integers(0, h - 5)
        boxes.append((x0, y0, x0 + rng.integers(3, w - x0 + 1), y0 + rng.integers(3, h - y0 + 1)))
    boxes = np.array(boxes, float)
    values = rng.random(25)
    got = score_map(boxes, values, h, w)
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (x0, y0, x1, y1), v in zip(boxes.astype(int), values, strict=True):
        total[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    want = np.where(count > 0, total / np.maximum(count, 1), 0)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert score_map(boxes, values, h, w, stride=4).shape == (8, 10)


def test_predict_cli_writes_pngs_and_goes_on_after_a_bad_image(
    tmp_path, trained_tiny, tiny_data_root, capsys
):
    images = sorted((tiny_data_root / "JPEGImages").glob("*.jpg"))
    assert len(images) >= 2
    # The same file name in another folder must not overwrite the first one's figure.
    twin = tmp_path / "other" / images[0].name
    twin.parent.mkdir()
    shutil.copy(images[0], twin)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    argv = ["voc_jax.predict", f"--workdir={trained_tiny}", "--top=2", f"--out={out}"]
    argv += [str(images[0]), str(broken), str(twin), str(images[1])]
    code, stdout, stderr = call(predict.main, argv, capsys)
    assert code == 2  # one image failed: reported, the others still predicted
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(broken) in errors[0] and "Traceback" not in stderr
    for image in (images[0], twin, images[1]):
        assert f"{image}:" in stdout
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(
        [f"{images[0].stem}.png", f"{images[0].stem}-2.png", f"{images[1].stem}.png"]
    )
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in out.glob("*.png"))


def test_predictor_scores_are_the_evaluation_pooling(trained_tiny, tiny_data_root):
    """The predictor runs the evaluation step: its image scores are sum(p^5) of its patch
    probabilities over every candidate, and the probabilities are softmax rows."""
    from voc_jax import workdir
    from voc_jax.experiment import Experiment

    config = workdir.load_config(trained_tiny)
    exp = Experiment.build(config)
    _, variables = workdir.restore_variables(trained_tiny, exp.model.variables)
    image = next((tiny_data_root / "JPEGImages").glob("*.jpg"))
    result = predict.Predictor(exp, variables)(image)
    np.testing.assert_allclose(result["probs"].sum(-1), 1.0, rtol=1e-5)
    want = (result["probs"][:, 1:] ** config.eval.exponent).sum(0)
    np.testing.assert_allclose(result["scores"], want, rtol=1e-5, atol=1e-12)
    assert len(result["probs"]) == len(result["boxes"])


def test_score_maps_share_one_scale_with_a_colour_bar_and_say_what_the_score_is():
    """Two classes whose probabilities differ by 1e5: both panels on the same 0-1 scale
    (a car at 2e-5 no longer looks as hot as a person at 0.9), one colour bar, and the score's
    meaning written on the figure."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    boxes = np.array([[0, 0, 20, 20], [10, 10, 40, 30]], np.float32)
    probs = np.zeros((2, 21))
    probs[:, 15] = [0.9, 0.8]  # person
    probs[:, 7] = [2e-5, 1e-5]  # car
    probs[:, 0] = 1 - probs.sum(1)
    result = {"image": rng.integers(0, 255, (30, 40, 3), np.uint8), "boxes": boxes,
              "probs": probs, "scores": (probs[:, 1:] ** 5).sum(0), "exponent": 5.0,
              "classes": VOC_CLASSES}  # fmt: skip
    fig = predict.figure(result, 2, "photo.jpg")
    overlays = [im for ax in fig.axes for im in ax.get_images()[1:]]
    assert len(overlays) == 2 and {im.get_clim() for im in overlays} == {(0.0, 1.0)}
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "p(class | patch)" in bars[0].get_ylabel()
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "sum over its 2 patches of p(class | patch)^5" in texts
    titles = [ax.get_title() for ax in fig.axes]
    assert "person: image score 0.918" in titles and "car: image score 3.3e-24" in titles
    plt.close(fig)
