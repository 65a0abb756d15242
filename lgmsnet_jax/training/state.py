"""`TrainState`: the pytree of everything a resumed run needs, and its construction from an NNX model.

The model is split once (`nnx.split`) into a static graphdef and array state; the steps merge them back inside
jit. The Grain iterator state is not an array and travels next to this state in the checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Arrays of one training run (or, with a leading axis on every leaf, of a vmapped ensemble).

    Attributes:
      step: () int32, optimizer steps done.
      params: nnx.State of the model's nnx.Param variables (f32).
      model_state: nnx.State of every other model variable (BatchNorm running stats, ...).
      opt_state: optax state for `params`.
      key: () typed PRNG key of the run; step k uses `jax.random.fold_in(key, k)`.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int):
    """Splits `model` once and initialises the optimizer.

    Args:
      model: an NNX module (its variables are taken, not copied).
      tx: optax transformation applied to the nnx.Param variables.
      seed: run seed for the PRNG key stored in the state.

    Returns:
      (graphdef, TrainState).
    """
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                       opt_state=tx.init(params), key=jax.random.key(seed))
    return graphdef, state


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """Rebuilds the NNX model (params + BN stats) from a graphdef and a TrainState."""
    return nnx.merge(graphdef, state.params, state.model_state)


def leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    """Flattens a pytree to (readable path, leaf) pairs, e.g. ("params/encoder1/conv/kernel", array)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(_key_str(k) for k in path), leaf) for path, leaf in flat]


def _key_str(k: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)
