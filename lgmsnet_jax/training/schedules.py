"""Learning-rate schedules of the reference recipes as optax schedules over the optimizer step count.

`poly_schedule` reproduces the 2D scripts' per-iteration poly decay including its off-by-one (spec §5.1);
`warmup_cosine_per_epoch` reproduces LinearWarmupCosineAnnealingLR stepped once per epoch (spec §6).
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def poly_schedule(base_lr: float, max_iterations: int, power: float = 0.9) -> optax.Schedule:
    """Poly decay as the reference applies it: steps 0 and 1 use `base_lr`, step k>=1 uses base_lr*(1-(k-1)/T)^p.

    # ref: main.py / main_kvasir.py: `lr_ = base_lr * (1 - iter_num / max_iterations) ** 0.9` is set *after*
    # optimizer step `iter_num` (0-based, before it is incremented), so it takes effect one step late.

    Args:
      base_lr: initial learning rate.
      max_iterations: T = steps_per_epoch * epochs.
      power: poly exponent.

    Returns:
      A schedule: step count (int) -> f32 learning rate.
    """
    if max_iterations <= 0:
        raise ValueError(f"poly_schedule: max_iterations must be positive, got {max_iterations}")

    def schedule(count):
        k = jnp.maximum(jnp.asarray(count, jnp.float32) - 1.0, 0.0)
        frac = jnp.clip(1.0 - k / jnp.float32(max_iterations), 0.0, 1.0)
        return jnp.float32(base_lr) * frac ** jnp.float32(power)

    return schedule


def warmup_cosine_per_epoch(
    peak_lr: float, warmup_epochs: int, max_epochs: int, steps_per_epoch: int, warmup_start_lr: float = 0.0,
    eta_min: float = 0.0,
) -> optax.Schedule:
    """LinearWarmupCosineAnnealingLR (per-epoch steps) expressed over optimizer steps.

    Epoch e = step // steps_per_epoch. e < W: lr = start + e*(peak-start)/(W-1) (epoch 0 uses `warmup_start_lr`);
    e >= W: lr = eta_min + 0.5*(peak-eta_min)*(1 + cos(pi*(e-W)/(E-W))).

    Args:
      peak_lr: learning rate after warm-up.
      warmup_epochs: W (the reference uses 50).
      max_epochs: E (the reference uses 5000).
      steps_per_epoch: optimizer steps per epoch.
      warmup_start_lr: lr of epoch 0.
      eta_min: final lr.

    Returns:
      A schedule: step count -> f32 learning rate.
    """
    if steps_per_epoch <= 0 or max_epochs <= warmup_epochs:
        raise ValueError(
            f"warmup_cosine_per_epoch: need steps_per_epoch > 0 and max_epochs > warmup_epochs, got "
            f"{steps_per_epoch}, {max_epochs}, {warmup_epochs}")

    def schedule(count):
        e = jnp.floor_divide(jnp.asarray(count, jnp.int32), steps_per_epoch).astype(jnp.float32)
        w = jnp.float32(warmup_epochs)
        warm = warmup_start_lr + e * (peak_lr - warmup_start_lr) / jnp.maximum(w - 1.0, 1.0)
        progress = (e - w) / jnp.float32(max_epochs - warmup_epochs)
        cos = eta_min + 0.5 * (peak_lr - eta_min) * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(e < w, warm, cos).astype(jnp.float32)

    return schedule
