"""Optimizers of the reference recipes: SGD + coupled L2 + poly (2D), AdamW + warm-up cosine (3D)."""
from __future__ import annotations

import optax

from lgmsnet_jax.training import schedules


def build_schedule(name: str, *, lr: float, steps_per_epoch: int, epochs: int, power: float = 0.9,
                   warmup_epochs: int = 50) -> optax.Schedule:
    """Learning-rate schedule by name: "poly" (per iteration), "warmup_cosine" (per epoch) or "constant".

    Args:
      name: schedule name.
      lr: base / peak learning rate.
      steps_per_epoch: optimizer steps per epoch.
      epochs: number of epochs of the run.
      power: poly exponent.
      warmup_epochs: epochs of linear warm-up for "warmup_cosine".

    Returns:
      An optax schedule over the optimizer step count.
    """
    if name == "poly":
        return schedules.poly_schedule(lr, steps_per_epoch * epochs, power)
    if name == "warmup_cosine":
        return schedules.warmup_cosine_per_epoch(lr, warmup_epochs, epochs, steps_per_epoch)
    if name == "constant":
        return optax.constant_schedule(lr)
    raise ValueError(f"Unknown schedule {name!r} (config.optim.schedule); known: poly, warmup_cosine, constant")


def build_optimizer(name: str, schedule: optax.Schedule, *, momentum: float = 0.9, weight_decay: float = 1e-4,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """The reference optimizers.

    "sgd": torch SGD(momentum, weight_decay) = coupled L2 added to the gradient of *every* parameter (BN/LN
    affine and biases included, ref main.py) before heavy-ball momentum (dampening 0, no Nesterov).
    "adamw": torch AdamW (decoupled decay, applied to all parameters as in main3d.py).

    Args:
      name: "sgd" or "adamw".
      schedule: learning-rate schedule.
      momentum: SGD momentum.
      weight_decay: L2 (sgd) or decoupled (adamw) weight decay.
      b1, b2, eps: AdamW moments.

    Returns:
      An optax GradientTransformation.
    """
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum))
    if name == "adamw":
        return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r} (config.optim.name); known: sgd, adamw")
