"""voc_jax/data/patches.py against plain loops written from docs/reference.md and hand-worked counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voc_jax.data import patches as P

SCALES = P.REFERENCE_SCALES


def reference_grid(width, height, scales=SCALES, min_patches=448, min_scales=11):
    """docs/reference.md, literally: scale by scale, x positions (outer loop) x y positions (inner loop),
    stop rule after a scale."""
    boxes, scale_of = [], []
    for k, s in enumerate(scales):
        size = (min(width, height) - 1) / s
        centres = []
        for length in (width, height):
            n = math.ceil((length - 1) / size)
            if n > 1:
                n *= 2
            if n == 1:
                centres.append([(length - 1) / 2])
            else:
                first, last = size / 2, (length - 1) - size / 2
                centres.append([first + i * (last - first) / (n - 1) for i in range(n)])
        for cx in centres[0]:
            for cy in centres[1]:
                boxes.append((cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2))
                scale_of.append(k)
        if len(boxes) >= min_patches and k + 1 >= min_scales:
            break
    return np.array(boxes), np.array(scale_of)


def reference_labels(patches, gt_boxes, gt_labels):
    out = []
    for px0, py0, px1, py1 in patches:
        patch_area = (px1 - px0) * (py1 - py0)
        hits = []
        for (gx0, gy0, gx1, gy1), label in zip(gt_boxes, gt_labels, strict=True):
            iw = max(0.0, min(px1, gx1) - max(px0, gx0))
            ih = max(0.0, min(py1, gy1) - max(py0, gy0))
            inter = iw * ih
            if inter >= 0.2 * patch_area and inter >= 0.6 * (gx1 - gx0) * (gy1 - gy0):
                hits.append(label)
        out.append(hits[0] if len(hits) == 1 else 0)
    return np.array(out)


def per_scale_counts(width, height):
    _, scale = P.patch_boxes(width, height)
    return np.bincount(scale).tolist()


def test_hand_worked_500x375():
    # m = min - 1 = 374, size = 374 / s. y: (375-1)/size = s -> ceil(s) = 1,2,2,2,3,3,3,4,4,4,5,
    # doubled when > 1. x: 499 s / 374 = 1.33, 1.73, 2.13, 2.67, 3.07, 3.47, 4.003, 4.40, 4.80,
    # 5.34, 5.74 -> 2,2,3,3,4,4,5,5,5,6,6 -> doubled. Cumulative at 4.3: 600 >= 448: stop.
    nx = [4, 4, 6, 6, 8, 8, 10, 10, 10, 12, 12]
    ny = [1, 4, 4, 4, 6, 6, 6, 8, 8, 8, 10]
    assert per_scale_counts(500, 375) == [a * b for a, b in zip(nx, ny, strict=True)]
    assert sum(per_scale_counts(500, 375)) == 600


def test_hand_worked_500x333():
    # m = 332. y: ceil(s) as above. x: 499 s / 332 = 1.50, 1.95, 2.40, 3.006, 3.46, 3.91, 4.51,
    # 4.96, 5.41, 6.01, 6.46 -> 2,2,3,4,4,4,5,5,6,7,7 -> doubled. Total 660 at 11 scales.
    nx = [4, 4, 6, 8, 8, 8, 10, 10, 12, 14, 14]
    ny = [1, 4, 4, 4, 6, 6, 6, 8, 8, 8, 10]
    assert per_scale_counts(500, 333) == [a * b for a, b in zip(nx, ny, strict=True)]


def test_hand_worked_500x500():
    # Square: n = ceil(s) on both axes: 1; 2,2,2 -> 4x4; 3,3,3 -> 6x6; 4,4,4 -> 8x8; 5 -> 10x10.
    # 1 + 3*16 + 3*36 + 3*64 + 100 = 449 >= 448 after exactly 11 scales.
    assert per_scale_counts(500, 500) == [1, 16, 16, 16, 36, 36, 36, 64, 64, 64, 100]


def test_later_scales_only_when_short_of_patches():
    # A square image gives exactly 449 patches at 11 scales and any other aspect ratio more, so
    # with the reference values scales 4.6 and 5 are never needed; ask for 500 and they are.
    assert len(per_scale_counts(500, 500)) == 11
    _, scale = P.patch_boxes(500, 500, min_patches=500)
    assert np.bincount(scale).tolist()[11:] == [100]  # 549 patches after the 12th scale
    _, scale = P.patch_boxes(500, 500, min_patches=10_000)
    assert scale.max() == 12  # all 13 scales, 649 patches, fewer than asked


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 2000), st.integers(2, 2000))
def test_reference_values_always_use_eleven_scales(width, height):
    _, scale = P.patch_boxes(width, height)
    assert scale.max() == 10 and len(scale) >= 448


def test_first_patches_of_a_non_square_image_go_column_by_column():
    # 500x375, scale 1: size 374, 4 x positions, 1 y position -> left to right.
    # Scale 1.3: size 374/1.3, 4 x 4 grid: the first four patches share the leftmost column
    # (same x0) and go down it, then the next column starts at the top again.
    boxes, scale = P.patch_boxes(500, 375)
    size = 374 / 1.3
    x_step = (499 - size) / 3
    y_step = (374 - size) / 3
    second = boxes[scale == 1]
    want = [
        (i * x_step, j * y_step, i * x_step + size, j * y_step + size)
        for i in range(4)
        for j in range(4)
    ]
    np.testing.assert_allclose(second, want, atol=1e-9)
    np.testing.assert_allclose(boxes[:4, 1], 0.0, atol=1e-9)  # scale 1: one row
    assert boxes[4, 0] == boxes[5, 0] < boxes[8, 0] and boxes[4, 1] < boxes[5, 1]


def test_single_patch_is_centred():
    boxes, _ = P.patch_boxes(500, 500, scales=(1.0,), min_patches=1, min_scales=1)
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 499.0, 499.0]])


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 1200), st.integers(2, 1200))
def test_geometry_equals_the_reference_loop(width, height):
    boxes, scale = P.patch_boxes(width, height)
    want_boxes, want_scale = reference_grid(width, height)
    np.testing.assert_array_equal(scale, want_scale)
    np.testing.assert_allclose(boxes, want_boxes, rtol=0, atol=1e-9)
    # Every box lies inside the image's continuous extent [0, L-1].
    assert boxes.min() >= -1e-9
    assert (boxes[:, 2] <= width - 1 + 1e-9).all() and (boxes[:, 3] <= height - 1 + 1e-9).all()


@settings(max_examples=50, deadline=None)
@given(
    st.integers(20, 600),
    st.integers(20, 600),
    st.lists(st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.5, 6.0]), min_size=1, max_size=6, unique=True),
    st.integers(1, 600),
    st.integers(1, 6),
)
def test_geometry_knobs_equal_the_reference_loop(width, height, scales, min_patches, min_scales):
    scales = sorted(scales)
    boxes, scale = P.patch_boxes(width, height, scales, min_patches, min_scales)
    want_boxes, want_scale = reference_grid(width, height, scales, min_patches, min_scales)
    np.testing.assert_array_equal(scale, want_scale)
    np.testing.assert_allclose(boxes, want_boxes, rtol=0, atol=1e-9)


def random_gt(rng, width, height, n):
    x0 = rng.uniform(0, width - 2, n)
    y0 = rng.uniform(0, height - 2, n)
    x1 = np.minimum(x0 + rng.uniform(1, width, n), width - 1)
    y1 = np.minimum(y0 + rng.uniform(1, height, n), height - 1)
    return np.stack([x0, y0, x1, y1], 1), rng.integers(1, 21, n)


@pytest.mark.parametrize("seed", range(30))
def test_labels_equal_the_reference_loop(seed):
    rng = np.random.default_rng(seed)
    width, height = rng.integers(100, 500, 2)
    boxes, _ = P.patch_boxes(int(width), int(height))
    gt, labels = random_gt(rng, width, height, int(rng.integers(0, 6)))
    np.testing.assert_array_equal(
        P.patch_labels(boxes, gt, labels), reference_labels(boxes, gt, labels)
    )


def test_label_rule_hand_examples():
    patch = np.array([[0.0, 0.0, 100.0, 100.0]])
    # A 50x50 box inside: 25% of the patch, 100% of the box -> its label.
    assert P.patch_labels(patch, [[10, 10, 60, 60]], [7]).tolist() == [7]
    # A 40x40 box inside: only 16% of the patch -> background.
    assert P.patch_labels(patch, [[10, 10, 50, 50]], [7]).tolist() == [0]
    # A big box whose overlap is 100% of the patch but under 60% of the box -> background.
    assert P.patch_labels(patch, [[0, 0, 200, 200]], [7]).tolist() == [0]
    # Two qualifying boxes, even of the same class -> background.
    assert P.patch_labels(patch, [[0, 0, 60, 60], [40, 40, 100, 100]], [7, 7]).tolist() == [0]
    # Exactly at the thresholds qualifies (>=).
    assert P.patch_labels(patch, [[0, 0, 50, 40]], [3]).tolist() == [3]  # 2000 = 20% of 10000


def test_difficult_modes():
    patch = np.array([[0.0, 0.0, 100.0, 100.0]])
    gt = [[0, 0, 60, 60], [40, 40, 100, 100]]
    one = [[0, 0, 60, 60]]
    assert P.patch_labels(patch, one, [5], [True]).tolist() == [5]  # reference: ordinary
    assert P.patch_labels(patch, one, [5], [True], difficult="ignore").tolist() == [P.IGNORE]
    assert P.patch_labels(patch, one, [5], [True], difficult="exclude").tolist() == [0]
    # The difficult box still counts as a second qualifying box under "ignore" ...
    assert P.patch_labels(patch, gt, [5, 6], [False, True], difficult="ignore").tolist() == [0]
    # ... and is removed entirely under "exclude".
    assert P.patch_labels(patch, gt, [5, 6], [False, True], difficult="exclude").tolist() == [5]
    with pytest.raises(ValueError, match="difficult"):
        P.patch_labels(patch, one, [5], difficult="maybe")


def test_no_objects_all_background():
    boxes, _ = P.patch_boxes(300, 200)
    assert (P.patch_labels(boxes, np.zeros((0, 4)), []) == 0).all()


@pytest.mark.parametrize("n_pos", [0, 5, 447, 448, 600])
def test_train_sampling(n_pos):
    rng = np.random.default_rng(0)
    labels = np.zeros(1000, np.int32)
    positions = np.sort(rng.choice(1000, n_pos, replace=False))
    labels[positions] = rng.integers(1, 21, n_pos)
    labels[np.setdiff1d(np.arange(1000), positions)[:50]] = P.IGNORE
    chosen = P.sample_train(labels, np.random.default_rng(1))
    assert len(chosen) == 448 and len(set(chosen.tolist())) == 448
    assert (labels[chosen] != P.IGNORE).all()
    if n_pos >= 448:
        assert sorted(chosen.tolist()) == positions[:448].tolist()  # the first 448 positives
    else:
        assert set(positions.tolist()) <= set(chosen.tolist())  # every positive
    again = P.sample_train(labels, np.random.default_rng(1))
    np.testing.assert_array_equal(chosen, again)  # seeded
    unshuffled = P.sample_train(labels, np.random.default_rng(1), shuffle=False)
    assert unshuffled[: min(n_pos, 448)].tolist() == positions[: min(n_pos, 448)].tolist()


def test_train_sampling_with_too_few_patches():
    labels = np.array([0, 0, 3, P.IGNORE])
    chosen = P.sample_train(labels, np.random.default_rng(0), num=10)
    assert len(chosen) == 10 and set(chosen.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="ignored"):
        P.sample_train(np.full(4, P.IGNORE), np.random.default_rng(0))


def test_test_sampling():
    rng = np.random.default_rng(0)
    idx = P.sample_test(600, rng)
    assert len(set(idx.tolist())) == 448 and idx.min() >= 0 and idx.max() < 600
    spread = P.sample_test(600, mode="spread")
    assert len(spread) == 448 and spread[0] == 0 and spread[-1] == 599
    np.testing.assert_array_equal(spread, P.sample_test(600, mode="spread"))
    small = P.sample_test(100, rng)
    assert small[:100].tolist() == list(range(100)) and (small[100:] == -1).all()
    with pytest.raises(ValueError, match="rng"):
        P.sample_test(600)
