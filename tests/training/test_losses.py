"""Loss values against hand-computed numbers (spec §5.1 BCEDiceLoss, §6 DiceCELoss)."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from lgmsnet_jax.training import losses


def test_bce_dice_matches_hand_computed_value():
    l3 = math.log(3.0)
    logits = jnp.array([[0.0, 0.0], [l3, -l3]], jnp.float32).reshape(2, 1, 2, 1)
    target = jnp.array([[1.0, 0.0], [1.0, 0.0]], jnp.float32).reshape(2, 1, 2, 1)
    bce = (math.log(2.0) + -math.log(0.75)) / 2
    dice = ((1.0 + 1e-5) / (2.0 + 1e-5) + (1.5 + 1e-5) / (2.0 + 1e-5)) / 2
    expected = 0.5 * bce + 1.0 - dice
    got = float(losses.bce_dice_loss(logits, target))
    assert got == pytest.approx(expected, rel=1e-6)


def test_bce_dice_weights_drop_padded_samples():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(3, 4, 4, 1)).astype(np.float32))
    t = jnp.asarray((rng.random((3, 4, 4, 1)) > 0.5).astype(np.float32))
    full = losses.bce_dice_loss(z[:2], t[:2])
    padded = losses.bce_dice_loss(z, t, jnp.array([1.0, 1.0, 0.0], jnp.float32))
    assert float(padded) == pytest.approx(float(full), rel=1e-6)


def test_bce_dice_of_confident_correct_prediction_is_near_zero():
    t = jnp.ones((1, 4, 4, 1), jnp.float32)
    assert float(losses.bce_dice_loss(30.0 * (2 * t - 1), t)) < 1e-6


def test_bce_dice_runs_in_f32_for_bf16_logits():
    z = jnp.zeros((1, 2, 2, 1), jnp.bfloat16)
    assert losses.bce_dice_loss(z, jnp.ones((1, 2, 2, 1), jnp.float32)).dtype == jnp.float32


def test_dice_ce_matches_hand_computed_value():
    logits = jnp.zeros((1, 2, 2), jnp.float32)  # N=1, two voxels, K=2 -> p = 0.5 everywhere
    labels = jnp.array([[0, 1]], jnp.int32)
    dice = 1.0 - 1.0 / (1.5 + 1e-6)  # per class: (2*0.5 + 0)/(0.25+0.25 + 1 + 1e-6)
    expected = dice + math.log(2.0)
    got = float(losses.dice_ce_loss(logits, labels[..., None]))
    assert got == pytest.approx(expected, rel=1e-6)


def test_dice_ce_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="do not match"):
        losses.dice_ce_loss(jnp.zeros((1, 4, 3)), jnp.zeros((1, 5), jnp.int32))
