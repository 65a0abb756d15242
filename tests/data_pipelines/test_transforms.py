"""Augmentations and normalisation: hand-computed values and invariants."""
import numpy as np
import pytest

from data_pipelines import transforms as T


def test_imagenet_normalize_matches_hand_computed_values():
    px = np.array([[[255, 0, 128]]], np.uint8)
    want = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(T.normalize(px, "imagenet")[0, 0], want, rtol=1e-6)


def test_reference_bgr_normalize_swaps_channels_and_divides_twice():
    px = np.array([[[255, 0, 128]]], np.uint8)  # RGB; the reference reads BGR = (128, 0, 255)
    want = [(128 / 255 - 0.485) / 0.229 / 255, (0 - 0.456) / 0.224 / 255, (1 - 0.406) / 0.225 / 255]
    np.testing.assert_allclose(T.normalize(px, "reference_bgr")[0, 0], want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", T.NORMALIZATIONS)
def test_denormalize_inverts_normalize(mode):
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(T.denormalize(T.normalize(img, mode), mode), img)


def _dihedral(a):
    return [np.rot90(f, k) for f in (a, a[::-1]) for k in range(4)]


def test_busi_augment_is_a_joint_dihedral_transform_with_reference_probabilities():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    mask = img[..., 0].copy()
    rng = np.random.default_rng(0)
    unchanged, n = 0, 4000
    for _ in range(n):
        a, m = T.augment_busi(img, mask, rng)
        assert any(np.array_equal(a, d) for d in _dihedral(img))
        np.testing.assert_array_equal(a[..., 0], m)  # the mask follows the image
        unchanged += np.array_equal(a, img)
    # identity: (no rotation or k=0) and no flip = (0.5 + 0.5/4) * 0.5 = 0.3125 (flip d never gives identity)
    assert abs(unchanged / n - 0.3125) < 0.03


@pytest.mark.parametrize("alpha", [1.0, 3000.0])  # 3000: a visible elastic field, through the mesh warp
def test_kvasir_augment_keeps_mask_binary_and_aligned_with_image(alpha):
    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - 30) ** 2 + (xx - 25) ** 2 < 15 ** 2).astype(np.uint8)
    img = np.stack([mask * 255, np.full((h, w), 90), xx * 4], -1).astype(np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(40):
        a, m = T.augment_kvasir(img, mask, rng, elastic_alpha=alpha)
        assert a.shape == img.shape and a.dtype == np.uint8 and m.shape == mask.shape
        assert set(np.unique(m)) <= {0, 1}
        # Red encodes the mask; colour jitter moves it by at most ~x1.9, bilinear edges by one pixel.
        agree = ((a[..., 0] > 100) == (m == 1)).mean()
        assert agree > 0.97


def test_kvasir_augment_is_a_function_of_the_rng():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = (img[..., 0] > 128).astype(np.uint8)
    for s in range(5):
        a = T.augment_kvasir(img, mask, np.random.default_rng(s))
        b = T.augment_kvasir(img, mask, np.random.default_rng(s))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_brightness_only_jitter_truncates_like_a_uint8_lut():
    img = np.array([[[10, 100, 200]]], np.uint8)
    out = T.color_jitter(img, np.random.default_rng(3), brightness=(1.5, 1.5), contrast=(1, 1), saturation=(1, 1), hue=(0, 0))
    np.testing.assert_array_equal(out[0, 0], [15, 150, 255])


def test_hue_rotation_keeps_grey_and_zero_is_identity():
    np.testing.assert_allclose(T._hue_matrix(0.0), np.eye(3), atol=1e-6)
    grey = np.full((1, 3), 77.0, np.float32)
    np.testing.assert_allclose(grey @ T._hue_matrix(0.3), grey, atol=1e-3)


def test_affine_with_identity_parameters_leaves_image_unchanged():
    img = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    mask = (img[..., 0] > 100).astype(np.uint8)
    m = T.affine_matrix(np.random.default_rng(0), 16, 20, scale=(1, 1), translate=0.0, rotate=0.0)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    a, b = T.warp(img, mask, T._invert(m), reflect=False)
    np.testing.assert_array_equal(a, img)
    np.testing.assert_array_equal(b, mask)


@pytest.mark.parametrize("mesh", [False, True])
def test_warp_reflects_at_the_border(mesh):
    # A pure shift by +5 px in x (inverse map x -> x - 5) with reflect-101 border: column j < 5 reads 5 - j.
    img = np.tile(np.arange(20, dtype=np.uint8)[None, :, None], (8, 1, 3)) * 10
    mask = (img[..., 0] >= 100).astype(np.uint8)
    inv = np.array([[1.0, 0, -5.0], [0, 1.0, 0]])
    gy, gx = np.meshgrid([0.0, 4.0, 8.0], [0.0, 10.0, 20.0], indexing="ij")
    disp = (gy, gx, np.zeros_like(gy), np.zeros_like(gy)) if mesh else None
    out, m = T.warp(img, mask, inv, reflect=True, disp=disp)
    want = np.array([5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(out[0, :, 0], want * 10)
    np.testing.assert_array_equal(m[0], (want >= 10).astype(np.uint8))


def test_mesh_warp_applies_the_displacement():
    # A uniform displacement of +3 px in x through the mesh equals the shift itself.
    img = np.tile(np.arange(32, dtype=np.uint8)[None, :, None], (16, 1, 3)) * 5
    mask = (img[..., 0] > 80).astype(np.uint8)
    gy, gx = np.meshgrid([0.0, 8.0, 16.0], [0.0, 16.0, 32.0], indexing="ij")
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    out, m = T.warp(img, mask, ident, reflect=True, disp=(gy, gx, np.zeros_like(gy), np.full_like(gy, 3.0)))
    np.testing.assert_array_equal(out[:, :29], img[:, 3:])
    np.testing.assert_array_equal(m[:, :29], mask[:, 3:])



def test_coarse_displacement_field_has_the_full_resolution_spread():
    from scipy import ndimage

    h = w = 128
    sigma = 16.0
    gy, gx = np.meshgrid(np.arange(8.0, 128, 16), np.arange(8.0, 128, 16), indexing="ij")
    rng = np.random.default_rng(0)
    coarse = np.concatenate([T.displacement_field(rng, gy, gx, h, w, 1.0, sigma, step=4)[0].ravel()
                             for _ in range(300)])
    full = np.concatenate([ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma)[8::16, 8::16].ravel()
                           for _ in range(40)])
    want = np.sqrt(1 / 3 / (4 * np.pi * sigma ** 2))  # 0.0102: white-noise variance through a unit Gaussian
    assert abs(full.std() / want - 1) < 0.25
    assert abs(coarse.std() / full.std() - 1) < 0.25
