"""Model size and cost: trainable-parameter counts and FLOPs (XLA cost analysis)."""

from __future__ import annotations

import math

from flax import nnx


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (nnx.Param leaves); BatchNorm running statistics are not counted."""
    return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
