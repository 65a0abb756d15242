"""Augmentations and normalisation: hand-computed values and invariants."""
import numpy as np
import pytest

from data_pipelines import transforms as T
from data_pipelines import warps as W


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
    m = W.affine_matrix(np.random.default_rng(0), 16, 20, scale=(1, 1), translate=0.0, rotate=0.0)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    a, b = W.warp(img, mask, W.invert_affine(m), reflect=False)
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
    out, m = W.warp(img, mask, inv, reflect=True, disp=disp)
    want = np.array([5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(out[0, :, 0], want * 10)
    np.testing.assert_array_equal(m[0], (want >= 10).astype(np.uint8))


def test_mesh_warp_applies_the_displacement():
    # A uniform displacement of +3 px in x through the mesh equals the shift itself.
    img = np.tile(np.arange(32, dtype=np.uint8)[None, :, None], (16, 1, 3)) * 5
    mask = (img[..., 0] > 80).astype(np.uint8)
    gy, gx = np.meshgrid([0.0, 8.0, 16.0], [0.0, 16.0, 32.0], indexing="ij")
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    out, m = W.warp(img, mask, ident, reflect=True, disp=(gy, gx, np.zeros_like(gy), np.full_like(gy, 3.0)))
    np.testing.assert_array_equal(out[:, :29], img[:, 3:])
    np.testing.assert_array_equal(m[:, :29], mask[:, 3:])



def test_coarse_displacement_field_has_the_full_resolution_spread():
    from scipy import ndimage

    h = w = 128
    sigma = 16.0
    gy, gx = np.meshgrid(np.arange(8.0, 128, 16), np.arange(8.0, 128, 16), indexing="ij")
    rng = np.random.default_rng(0)
    coarse = np.concatenate([W.displacement_field(rng, gy, gx, h, w, 1.0, sigma, step=4)[0].ravel()
                             for _ in range(300)])
    full = np.concatenate([ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma)[8::16, 8::16].ravel()
                           for _ in range(40)])
    want = np.sqrt(1 / 3 / (4 * np.pi * sigma ** 2))  # 0.0102: white-noise variance through a unit Gaussian
    assert abs(full.std() / want - 1) < 0.25
    assert abs(coarse.std() / full.std() - 1) < 0.25


# ---------------------------------------------------------------- fast Kvasir warps: equivalences and invariants

def _old_color_jitter(image, rng, brightness=(0.6, 1.6), contrast=(0.8, 1.2), saturation=(0.9, 1.1), hue=(-0.01, 0.01)):
    """The (H*W, 3) float32 formulation the planar `color_jitter` replaced, step by step."""
    x = image.astype(np.float32)
    b, c = rng.uniform(*brightness), rng.uniform(*contrast)
    s, h = rng.uniform(*saturation), rng.uniform(*hue)
    for op in rng.permutation(4):
        if op == 0:
            x = np.floor(np.clip(x * np.float32(b), 0, 255))
        elif op == 1:
            mean = np.float32((x @ T._GREY).mean())
            x = np.floor(np.clip(x * np.float32(c) + mean * np.float32(1 - c), 0, 255))
        else:
            x = np.rint(np.clip(x @ (T._saturation_matrix(s) if op == 2 else T._hue_matrix(h)), 0, 255))
    return x.astype(np.uint8)


def test_planar_color_jitter_equals_the_interleaved_formulation():
    img = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    for s in range(20):
        got = T.color_jitter(img[:, ::-1], np.random.default_rng(s))  # a strided view, as flips give
        want = _old_color_jitter(img[:, ::-1], np.random.default_rng(s))
        assert got.flags.c_contiguous and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).max() <= 1  # float summation order only
        assert (got != want).mean() < 1e-3


def test_flip_folded_into_the_warp_equals_warping_the_flipped_image():
    img = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    aff = W.invert_affine(W.affine_matrix(np.random.default_rng(2), 32, 48))
    for fx, fy in [(True, False), (False, True), (True, True)]:
        flipped = img[:, ::-1] if fx else img
        flipped = flipped[::-1] if fy else flipped
        want = np.asarray(W.pil_affine(T.Image.fromarray(np.ascontiguousarray(flipped)), (48, 32), aff,
                                       T.Image.Resampling.BILINEAR))
        got = np.asarray(W.pil_affine(T.Image.fromarray(img), (48, 32), W.compose(aff, W.flip_matrix(32, 48, fx, fy)),
                                      T.Image.Resampling.BILINEAR))
        assert np.abs(got.astype(int) - want).max() <= 1


def test_fold_runs_reproduce_reflect_101_and_pad_matches_numpy():
    n = 5
    for lo, hi in [(-3, 9), (-14, 20), (0, 5), (2, 4)]:
        idx = np.zeros(hi - lo, int)
        for dst, first, length, rev in W._fold_runs(lo, hi, n):
            idx[dst:dst + length] = first - np.arange(length) if rev else first + np.arange(length)
        want = np.pad(np.arange(n), (max(0, -lo), max(0, hi - n)), mode="reflect")[max(0, lo):][:hi - lo]
        np.testing.assert_array_equal(idx, want)
    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    got = np.asarray(W._reflect_pad(T.Image.fromarray(img), -4, -13, 15, 9))
    np.testing.assert_array_equal(got, np.pad(img, ((13, 2), (4, 6), (0, 0)), mode="reflect"))


def test_upsample2_holds_the_pixels_and_their_midpoints():
    img = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    up = W.upsample2(img)
    assert up.mode == "RGBX" and up.size == (17, 11)
    u = np.asarray(up)[..., :3].astype(float)
    np.testing.assert_array_equal(u[0::2, 0::2], img)
    x = img.astype(float)
    assert np.abs(u[0::2, 1::2] - (x[:, :-1] + x[:, 1:]) / 2).max() <= 0.5
    assert np.abs(u[1::2, 0::2] - (x[:-1] + x[1:]) / 2).max() <= 0.5
    assert np.abs(u[1::2, 1::2] - (x[:-1, :-1] + x[:-1, 1:] + x[1:, :-1] + x[1:, 1:]) / 4).max() <= 1.0
    with pytest.raises(ValueError, match="uint32"):
        W.upsample2(img, np.empty((11, 16), np.uint32))


def test_half_pixel_sampling_is_bilinear_within_a_quarter_pixel():
    # On a ramp of slope 4 grey levels/px, a <= 0.25 px position error moves the value by <= 1 (+ rounding).
    h, w = 40, 60
    ramp = np.repeat((np.arange(w) * 4)[None, :, None], 3, 2).repeat(h, 0).astype(np.uint8)
    up = W.upsample2(ramp)
    np.testing.assert_array_equal(np.asarray(W.sample(up, (w, h), np.array([[1.0, 0, 0], [0, 1.0, 0]]), True))[..., :3], ramp)
    for s in range(5):
        m = W.invert_affine(W.affine_matrix(np.random.default_rng(s), h, w, scale=(0.8, 1.2), translate=0.05, rotate=10))
        fine = np.asarray(W.sample(up, (w, h), m, True))[..., 0].astype(int)
        exact = np.asarray(W.sample(T.Image.fromarray(ramp), (w, h), m, False))[..., 0].astype(int)
        inner = (fine > 8) & (exact > 8) & (fine < 4 * (w - 2)) & (exact < 4 * (w - 2))  # away from the 0 border
        assert inner.mean() > 0.5
        assert np.abs(fine - exact)[inner].max() <= 2


def _smooth_image(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([128 + 90 * np.sin(xx / 11.0), 128 + 90 * np.cos(yy / 9.0), 128 + 60 * np.sin((xx + yy) / 15.0)],
                    -1).astype(np.uint8)


@pytest.mark.parametrize("upsampled", [False, True])
def test_folded_warp_equals_the_reflect_padded_warp(upsampled):
    h, w = 48, 64
    # Exact bilinear: any image, to rounding. Half-pixel sampling: a smooth image, to its position rounding.
    img = _smooth_image(h, w) if upsampled else np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (np.random.default_rng(1).random((h, w)) > 0.5).astype(np.uint8)
    src = W.upsample2(img) if upsampled else T.Image.fromarray(img)
    rng = np.random.default_rng(2)
    for t in range(12):
        inv = W.invert_affine(W.elastic_affine_matrix(rng, h, w, alpha_affine=15.0))
        flip = W.flip_matrix(h, w, t % 2 == 0, t % 3 == 0)
        got_i, got_m = W.folded_warp(src, T.Image.fromarray(mask), inv, flip, upsampled=upsampled)
        want_i, want_m = W.warp(img, mask, W.compose(inv, flip), reflect=True)
        d = np.abs(np.asarray(got_i)[..., :3].astype(int) - want_i)
        np.testing.assert_array_equal(np.asarray(got_m), want_m)
        if upsampled:
            assert d.mean() < 1.0 and d.max() <= 6
        else:
            assert d.max() <= 1


def test_folded_warp_reflects_beyond_two_image_sizes():
    # A 4x zoom-out centred on the image reaches 1.5 sizes beyond each side: 3 fold tiles per axis and side.
    h = w = 16
    img = np.tile((np.arange(w, dtype=np.uint8) * 16)[None, :, None], (h, 1, 3))
    inv = np.array([[4.0, 0, -1.5 * w], [0, 4.0, -1.5 * h]])
    out, _ = W.folded_warp(T.Image.fromarray(img), T.Image.fromarray(img[..., 0]), inv)
    x = 4.0 * (np.arange(w) + 0.5) - 1.5 * w - 0.5   # source pixel-centre coordinate of each output column
    period = 2 * (w - 1)
    folded = np.abs(x) % period
    folded = np.where(folded <= w - 1, folded, period - folded)
    np.testing.assert_allclose(np.asarray(out)[0, :, 0], folded * 16, atol=1)


def test_one_pass_affine_and_elastic_equals_two_passes_on_a_smooth_image():
    h = w = 96
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = _smooth_image(h, w)
    mask = ((yy - 40) ** 2 + (xx - 50) ** 2 < 25 ** 2).astype(np.uint8)
    rng = np.random.default_rng(3)
    for _ in range(6):
        aff = W.invert_affine(W.affine_matrix(rng, h, w))
        ela = W.invert_affine(W.elastic_affine_matrix(rng, h, w, alpha_affine=20.0))
        one_i, one_m = W.folded_warp(T.Image.fromarray(smooth), T.Image.fromarray(mask), ela, aff)
        mid_i, mid_m = W.warp(smooth, mask, aff, reflect=False)
        two_i, two_m = W.warp(mid_i, mid_m, ela, reflect=True)
        # Compare away from the affine's 0 border (blurred once vs twice there): where a white image stays white.
        white = np.full_like(smooth, 255)
        w1 = np.asarray(W.folded_warp(T.Image.fromarray(white), T.Image.fromarray(mask), ela, aff)[0])
        w2 = W.warp(W.warp(white, mask, aff, reflect=False)[0], mask, ela, reflect=True)[0]
        inner = (w1 == 255).all(-1) & (w2 == 255).all(-1)
        assert inner.mean() > 0.2
        d = np.abs(np.asarray(one_i).astype(int) - two_i)[inner]
        assert d.mean() < 1.0 and np.percentile(d, 99) <= 3  # one resampling blur less
        assert (np.asarray(one_m) != two_m).mean() < 0.01


def test_displacement_field_tolerance_skips_only_fields_below_it():
    gy, gx = np.meshgrid(np.arange(0.0, 65, 16), np.arange(0.0, 65, 16), indexing="ij")
    full = W.displacement_field(np.random.default_rng(0), gy, gx, 64, 64, 1.0, 8.0)
    peak = max(np.abs(full[0]).max(), np.abs(full[1]).max())
    assert W.displacement_field(np.random.default_rng(0), gy, gx, 64, 64, 1.0, 8.0, tolerance=10 * peak) is None
    again = W.displacement_field(np.random.default_rng(0), gy, gx, 64, 64, 1.0, 8.0, tolerance=peak / 2)
    np.testing.assert_array_equal(again[0], full[0])


@pytest.mark.parametrize("exact", [False, True])
def test_kvasir_augment_outputs_are_contiguous_uint8_with_a_binary_mask(exact):
    img = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = (img[..., 1] > 128).astype(np.uint8)
    warped = 0
    for s in range(24):
        a, m = T.augment_kvasir(img, mask, np.random.default_rng(s), exact_bilinear=exact)
        assert a.shape == (64, 80, 3) and a.dtype == np.uint8 and m.shape == (64, 80) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 1}
        warped += a.flags.c_contiguous and not np.shares_memory(a, img)
    assert warped >= 12  # P(some warp fires) = 0.75


def test_kvasir_augment_is_thread_safe():
    import concurrent.futures

    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = (img[..., 0] > 128).astype(np.uint8)
    run = lambda s: T.augment_kvasir(img, mask, np.random.default_rng(s))  # noqa: E731
    want = [run(s) for s in range(16)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, range(16)))
    for (a, m), (b, n) in zip(got, want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(m, n)
