"""3D metrics: per-class Dice without background, HD95 in mm (brute force and known shapes), summaries."""

import itertools

import numpy as np
import pytest

from lgmsnet_jax.training import metrics3d


def test_dice_per_class_hand_values():
    label = np.zeros((4, 4, 1), np.int32)
    pred = np.zeros((4, 4, 1), np.int32)
    label[0, :, 0] = 1          # 4 voxels of class 1
    pred[0, :3, 0] = 1          # 3 of them found
    pred[1, 0, 0] = 1           # and 1 false positive
    label[2, :2, 0] = 2         # class 2 missed entirely
    pred[3, 3, 0] = 3           # class 3 predicted but absent from the label
    dice = metrics3d.dice_per_class(pred, label, num_classes=4)
    np.testing.assert_allclose(dice[:2], [2 * 3 / (4 + 4), 0.0])
    assert np.isnan(dice[2])
    np.testing.assert_array_equal(metrics3d.dice_per_class(label, label, 4)[:2], [1.0, 1.0])


def _brute_surface(mask):
    out = np.zeros_like(mask)
    for idx in zip(*np.nonzero(mask)):
        for axis, step in itertools.product(range(3), (-1, 1)):
            nb = list(idx)
            nb[axis] += step
            if not 0 <= nb[axis] < mask.shape[axis] or not mask[tuple(nb)]:
                out[idx] = True
    return out


def _brute_hd95(pred, gt, spacing):
    sp = np.asarray(spacing, np.float64)
    a = np.argwhere(_brute_surface(pred)) * sp
    b = np.argwhere(_brute_surface(gt)) * sp
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hd95_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(6):
        shape = (9, 8, 7)
        # Noisy masks: many small components, many touching the volume border.
        gt = rng.random(shape) < 0.3 + 0.05 * trial
        pred = gt ^ (rng.random(shape) < 0.15)
        spacing = (1.0, 0.7, 2.5) if trial % 2 else (1.5, 1.5, 1.5)
        assert metrics3d.hd95(pred, gt, spacing) == pytest.approx(_brute_hd95(pred, gt, spacing), rel=1e-9)


def test_hd95_known_shapes():
    # Two parallel planes 3 voxels apart along an axis with 2 mm voxels: every distance is 6 mm.
    a = np.zeros((8, 5, 5), bool)
    b = np.zeros((8, 5, 5), bool)
    a[2] = True
    b[5] = True
    assert metrics3d.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    # Two single voxels: a 3-4-5 triangle in mm.
    p = np.zeros((6, 6, 3), bool)
    g = np.zeros((6, 6, 3), bool)
    p[1, 1, 1] = True
    g[4, 5, 1] = True
    assert metrics3d.hd95(p, g, (1.0, 1.0, 7.0)) == pytest.approx(5.0)
    # One far outlier voxel among 26 surface voxels of a 3x3x3 cube does not move the 95th percentile.
    cube = np.zeros((20, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    noisy = cube.copy()
    noisy[15, 2, 2] = True
    assert metrics3d.hd95(noisy, cube, (1.0, 1.0, 1.0)) == 0.0
    assert metrics3d.hd95(cube, cube, (1.0, 1.0, 1.0)) == 0.0


def test_hd95_empty_masks():
    g = np.zeros((4, 5, 6), bool)
    assert np.isnan(metrics3d.hd95(g, g, (1, 1, 1)))
    g[1, 1, 1] = True
    assert np.isnan(metrics3d.hd95(g, np.zeros_like(g), (1, 1, 1)))
    assert metrics3d.hd95(np.zeros_like(g), g, (1.0, 2.0, 2.0)) == pytest.approx(np.sqrt(16 + 100 + 144))


def test_evaluate_and_summarize_skip_absent_classes():
    label = np.zeros((6, 6, 6), np.int32)
    label[1:3, 1:3, 1:3] = 1
    label[4:6, 4:6, 4:6] = 2
    pred = label.copy()
    pred[4:6, 4:6, 4:6] = 0  # class 2 missed
    case_a = metrics3d.evaluate_case(pred, label, 3, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(case_a["dice"], [1.0, 0.0])
    np.testing.assert_allclose(case_a["hd95"], [0.0, np.sqrt(3 * 36)])
    case_b = {"dice": np.array([0.5, np.nan]), "hd95": np.array([2.0, np.nan])}
    s = metrics3d.summarize([case_a, case_b], ("A", "B"))
    assert s["dice/A"] == pytest.approx(0.75) and s["dice/B"] == pytest.approx(0.0)
    assert s["dice"] == pytest.approx((0.5 + 0.5) / 2)  # case means 0.5 and 0.5
    assert s["dice_class_mean"] == pytest.approx((0.75 + 0.0) / 2)
    assert s["hd95/A"] == pytest.approx(1.0)
