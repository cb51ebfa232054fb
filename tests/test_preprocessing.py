import numpy as np
import pytest

from voc_jax.preprocessing import NEON, TORCHVISION, Preprocessing


def test_torchvision_normalisation_matches_formula():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    got = np.asarray(TORCHVISION.normalize(rgb))
    want = (rgb / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_neon_normalisation_is_bgr_minus_mean():
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)  # R, G, B
    got = np.asarray(NEON.normalize(rgb))[0, 0]
    np.testing.assert_allclose(got, [30 - 102.98, 20 - 115.95, 10 - 122.77], rtol=1e-6)


def test_roundtrip_and_validation():
    assert Preprocessing.from_dict(NEON.to_dict()) == NEON
    with pytest.raises(ValueError, match="channel_order"):
        Preprocessing(channel_order="RBG")
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3 values"):
        Preprocessing(mean=(0.5, 0.5))
