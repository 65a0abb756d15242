"""Learning-rate schedules against the reference formulas (spec §5.1 poly off-by-one, §6 warm-up cosine)."""
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgmsnet_jax.training import optim, schedules


def test_poly_schedule_matches_reference_off_by_one():
    base, total = 0.02, 10
    sched = schedules.poly_schedule(base, total)
    expected = [base] + [base * (1 - (k - 1) / total) ** 0.9 for k in range(1, total + 1)]
    got = [float(sched(k)) for k in range(total + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0] == got[1] == pytest.approx(base)
    assert float(sched(total + 5)) == 0.0


def test_sgd_with_coupled_l2_first_update_matches_torch():
    tx = optim.build_optimizer("sgd", schedules.poly_schedule(0.01, 100), momentum=0.9, weight_decay=1e-4)
    params = {"w": jnp.ones((2,), jnp.float32)}
    grads = {"w": jnp.full((2,), 0.5, jnp.float32)}
    updates, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.01 * (0.5 + 1e-4), rtol=1e-6)
    # Step 1 still uses base_lr; momentum buffer = 0.9 * b0 + g.
    updates, _ = tx.update(grads, state, optax.apply_updates(params, updates))
    w1 = 1.0 - 0.01 * (0.5 + 1e-4)
    np.testing.assert_allclose(updates["w"], -0.01 * (0.9 * (0.5 + 1e-4) + 0.5 + 1e-4 * w1), rtol=1e-6)


def test_warmup_cosine_per_epoch_matches_reference():
    sched = schedules.warmup_cosine_per_epoch(1e-3, 50, 5000, steps_per_epoch=3)
    assert float(sched(0)) == 0.0 and float(sched(2)) == 0.0  # epoch 0 trains with lr 0
    assert float(sched(3 * 49)) == pytest.approx(1e-3, rel=1e-6)
    assert float(sched(3 * 10 + 2)) == pytest.approx(10 * 1e-3 / 49, rel=1e-6)
    e = 1234
    assert float(sched(3 * e)) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * (e - 50) / 4950)), rel=1e-5)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="config.optim.schedule"):
        optim.build_schedule("cosine_typo", lr=0.1, steps_per_epoch=1, epochs=1)
