"""Per-image 2D metrics (spec §7.1) including the empty-mask quirk, and padded-batch averaging."""
import jax.numpy as jnp
import pytest

from lgmsnet_jax.training import metrics


def _pair():
    # Image 0: P=[1,1,0,0], G=[1,0,1,0]. Image 1: P=[1,0,0,0], G empty (quirk: G' becomes all True).
    p = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
    g = jnp.array([[1, 0, 1, 0], [0, 0, 0, 0]], jnp.float32)
    logits = jnp.where(p > 0, 3.0, -3.0).reshape(2, 2, 2, 1)
    return logits, g.reshape(2, 2, 2, 1)


def test_binary_metrics_match_hand_computed_values():
    logits, target = _pair()
    m = metrics.binary_metrics_per_image(logits, target)
    iou0 = (1 + 1e-5) / (3 + 1e-5)
    assert float(m["iou"][0]) == pytest.approx(iou0, rel=1e-6)
    assert float(m["dice"][0]) == pytest.approx(2 * iou0 / (iou0 + 1), rel=1e-6)
    se0 = 1 / (2 + 1e-6)
    assert float(m["se"][0]) == pytest.approx(se0, rel=1e-6)
    assert float(m["pc"][0]) == pytest.approx(se0, rel=1e-6)
    assert float(m["f1"][0]) == pytest.approx(2 * se0 * se0 / (2 * se0 + 1e-6), rel=1e-6)
    assert float(m["acc"][0]) == pytest.approx(0.5)


def test_empty_ground_truth_quirk_scores_all_pixels_as_foreground():
    logits, target = _pair()
    m = metrics.binary_metrics_per_image(logits, target)
    assert float(m["iou"][1]) == pytest.approx(1e-5 / (1 + 1e-5), rel=1e-6)
    assert float(m["se"][1]) == pytest.approx(0.25, rel=1e-5)  # TP=1, FN=3
    assert float(m["pc"][1]) == pytest.approx(1.0, rel=1e-5)  # FP=0
    assert float(m["acc"][1]) == pytest.approx(0.25)
    assert float(m["sp"][1]) == 0.0


def test_empty_prediction_and_empty_target_give_iou_one():
    m = metrics.binary_metrics_per_image(-jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 1)))
    assert float(m["iou"][0]) == pytest.approx(1.0)


def test_masked_sums_average_over_real_images_only():
    logits, target = _pair()
    m = metrics.binary_metrics_per_image(logits, target)
    sums = metrics.masked_sums(m, jnp.array([1.0, 0.0], jnp.float32))
    means = metrics.finalize_means({k: float(v) for k, v in sums.items()})
    assert means["count"] == 1
    assert means["iou"] == pytest.approx(float(m["iou"][0]), rel=1e-6)
