"""voc_jax/scoring.py against a plain loop over patches."""

import numpy as np

from voc_jax.scoring import image_scores


def test_pooling_matches_a_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 10, 21)).astype(np.float32) * 3
    valid = rng.random((3, 10)) > 0.3
    got = {k: np.asarray(v) for k, v in image_scores(logits, valid, exponent=5.0).items()}
    for b in range(3):
        power, mean, best = np.zeros(20), np.zeros(20), np.zeros(20)
        n = 0
        for k in range(10):
            if not valid[b, k]:
                continue
            e = np.exp(logits[b, k] - logits[b, k].max())
            p = (e / e.sum())[1:]  # background excluded
            power += p**5
            mean += p
            best = np.maximum(best, p)
            n += 1
        np.testing.assert_allclose(got["power"][b], power, rtol=1e-4, atol=1e-12)
        np.testing.assert_allclose(got["mean"][b], mean / n, rtol=1e-5)
        np.testing.assert_allclose(got["max"][b], best, rtol=1e-5)


def test_exponent_one_is_the_probability_sum():
    logits = np.zeros((1, 4, 21), np.float32)
    out = image_scores(logits, np.ones((1, 4), bool), exponent=1.0)
    np.testing.assert_allclose(np.asarray(out["power"]), np.full((1, 20), 4 / 21), rtol=1e-6)
