"""Sliding-window inference: window grid, weighting, padding, and equality with a direct forward pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmsnet_jax.inference import importance_map, scan_starts, sliding_window_inference, window_starts


def _conv_predict(seed=0, c_in=2, k=3):
    """A 3x3x3 'SAME' conv: every output voxel depends on its neighbours, so windows' borders matter."""
    w = jax.random.normal(jax.random.key(seed), (3, 3, 3, c_in, k), jnp.float32)

    def predict(x):
        return jax.lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

    return predict


def _pointwise(x):
    """Voxel-wise channel mixing: the same answer whatever window a voxel is seen in."""
    a = jnp.asarray([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]], jnp.float32)
    bias = jnp.asarray([0.5, -1.0, 2.0], jnp.float32).reshape((1,) * (x.ndim - 1) + (3,))
    return jnp.einsum("...c,ck->...k", x, a) + bias


def test_scan_starts_follow_monai_rule():
    assert scan_starts([10], [4], 0.5) == [[0, 2, 4, 6]]
    assert scan_starts([11], [4], 0.25) == [[0, 3, 6, 7]]  # last start pulled back to end at 11
    assert scan_starts([8], [8], 0.5) == [[0]]
    assert scan_starts([9], [4], 0.0) == [[0, 4, 5]]
    assert scan_starts([5], [4], 0.9) == [[0, 1]]  # interval int(0.4) -> 1
    assert window_starts([10, 4], [4, 4], 0.5).tolist() == [[0, 0], [2, 0], [4, 0], [6, 0]]
    with pytest.raises(ValueError, match="overlap"):
        scan_starts([8], [4], 1.0)


def test_gaussian_importance_map_is_symmetric_with_unit_peak():
    w = importance_map((6, 5, 4), "gaussian", 0.125)
    assert w.shape == (6, 5, 4) and w.dtype == np.float32
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    # Along axis 0 (sigma = 0.75): weights exp(-0.5 (d / 0.75)^2) relative to the centre pair at d = 0.5.
    ratio = w[0, 2, 1] / w[2, 2, 1]
    assert ratio == pytest.approx(np.exp(-0.5 * (2.5 / 0.75) ** 2) / np.exp(-0.5 * (0.5 / 0.75) ** 2), rel=1e-5)
    np.testing.assert_array_equal(importance_map((3, 3), "constant"), np.ones((3, 3), np.float32))


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_window_covering_the_volume_equals_direct_forward(mode):
    predict = _conv_predict()
    vol = jax.random.normal(jax.random.key(1), (2, 8, 6, 4, 2), jnp.float32)
    out = sliding_window_inference(predict, vol, (8, 6, 4), mode=mode, sw_batch_size=2)
    np.testing.assert_allclose(out, predict(vol), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap,sw", [(0.5, 4), (0.25, 3), (0.0, 1), (0.8, 5)])
def test_pointwise_predictor_is_reproduced_for_any_grid(mode, overlap, sw):
    vol = jax.random.normal(jax.random.key(2), (2, 11, 9, 7, 2), jnp.float32)  # not divisible by the roi
    out = sliding_window_inference(_pointwise, vol, (4, 5, 4), overlap=overlap, mode=mode, sw_batch_size=sw)
    assert out.shape == (2, 11, 9, 7, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _pointwise(vol), rtol=1e-5, atol=1e-5)


def test_constant_predictor_gives_constant_output_on_small_volume():
    def const(x):
        return jnp.full(x.shape[:-1] + (2,), 3.5, jnp.float32)

    vol = jnp.ones((3, 10, 5, 1), jnp.float32)  # smaller than the roi on axes 0 and 2
    out = sliding_window_inference(const, vol, (8, 4, 8), overlap=0.5, mode="gaussian", sw_batch_size=2)
    assert out.shape == (3, 10, 5, 2)
    np.testing.assert_allclose(np.asarray(out), np.full((3, 10, 5, 2), 3.5, np.float32), rtol=1e-6)


def test_small_volume_is_padded_with_pad_value_and_cropped_back():
    vol = jnp.arange(3 * 2 * 2, dtype=jnp.float32).reshape(3, 2, 2, 1) + 1.0

    def window_mean(x):  # sees the padding through the window mean
        m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        return jnp.broadcast_to(m, x.shape)

    out = sliding_window_inference(window_mean, vol, (4, 4, 4), mode="constant", pad_value=-1.0, sw_batch_size=1)
    expected = (np.arange(12, dtype=np.float64).sum() + 12 + (64 - 12) * -1.0) / 64
    np.testing.assert_allclose(out, np.full((3, 2, 2, 1), expected), rtol=1e-6)


def _numpy_reference(predict, vol, roi, overlap, mode):
    """Plain-loop MONAI-style averaging over the same grid."""
    vol = np.asarray(vol)
    starts = window_starts(vol.shape[:-1], roi, overlap)
    w = importance_map(roi, mode)[..., None].astype(np.float64)
    acc, norm = None, np.zeros(vol.shape[:-1] + (1,))
    for s in starts:
        sl = tuple(slice(a, a + r) for a, r in zip(s, roi))
        y = np.asarray(predict(jnp.asarray(vol[sl][None])))[0].astype(np.float64)
        if acc is None:
            acc = np.zeros(vol.shape[:-1] + (y.shape[-1],))
        acc[sl] += y * w
        norm[sl] += w
    return acc / norm


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_matches_a_plain_loop_for_a_translation_dependent_predictor(mode):
    predict = _conv_predict(seed=3)
    vol = jax.random.normal(jax.random.key(4), (10, 7, 9, 2), jnp.float32)
    roi = (6, 4, 4)
    fn = jax.jit(functools.partial(sliding_window_inference, predict, roi_size=roi, overlap=0.5, mode=mode,
                                   sw_batch_size=3))
    out = fn(vol)
    ref = _numpy_reference(predict, vol, roi, 0.5, mode)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # It really is translation dependent: a direct forward on the whole volume differs.
    assert np.abs(np.asarray(predict(vol[None])[0]) - ref).max() > 1e-2


def test_rejects_wrong_rank_and_bad_predictor():
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window_inference(_pointwise, jnp.zeros((4, 4, 2)), (4, 4, 4))
    with pytest.raises(ValueError, match="expected"):
        sliding_window_inference(lambda x: x[:, :2], jnp.zeros((4, 4, 4, 2)), (4, 4, 4), sw_batch_size=1)
