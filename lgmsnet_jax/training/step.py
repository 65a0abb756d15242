"""Pure train and eval steps: functions of (graphdef, TrainState, batch), jit-able, donate-able and vmappable.

No host syncs and no Python branches on array values; randomness comes from fold_in(state.key, state.step).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lgmsnet_jax import packing
from lgmsnet_jax.training import metrics as metrics_lib
from lgmsnet_jax.training.state import TrainState
from lgmsnet_jax.training.tasks import Task


def _reseed(model: nnx.Module, key: jax.Array) -> None:
    # Stochastic layers (dropout) draw from nnx RNG streams; reseeding them from the per-step key makes a resumed
    # run draw the same numbers. The check is on graph structure (static), not on array values.
    streams = {path[-2] for path, _ in nnx.to_flat_state(nnx.state(model, nnx.RngKey)) if len(path) >= 2}
    if streams:
        nnx.reseed(model, **{s: jax.random.fold_in(key, i) for i, s in enumerate(sorted(map(str, streams)))})


def _loss_and_state(params, model_state, graphdef, batch, key, task: Task):
    # Rebuild the Variable containers at this trace level: BatchNorm mutates its stats, and Variables created
    # outside jax.grad's trace may not be mutated inside it (flax TraceContextError).
    model_state = jax.tree.map(lambda x: x, model_state)
    model = nnx.merge(graphdef, params, model_state)
    _reseed(model, key)
    logits = model(batch["image"], train=True)
    loss = task.loss_fn(logits.astype(jnp.float32), batch)
    _, _, new_model_state = nnx.split(model, nnx.Param, ...)
    return loss, new_model_state


def train_step(graphdef: nnx.GraphDef, state: TrainState, batch: dict[str, jax.Array], *, task: Task,
               tx: optax.GradientTransformation, schedule: optax.Schedule, grad_accum_steps: int = 1):
    """One optimizer step (optionally over `grad_accum_steps` micro-batches).

    Args:
      graphdef: static model graph from `create_train_state`.
      state: TrainState (donated by the jitted wrapper).
      batch: {"image": (B, H, W, C) f32, "mask": (B, H, W, 1) f32, ...}, global batch (sharded on "data").
      task: loss definition.
      tx: optimizer.
      schedule: the learning-rate schedule inside `tx` (reported as "lr").
      grad_accum_steps: split the batch into this many micro-batches, average their gradients; BatchNorm sees
        micro-batch statistics and its running stats are updated once per micro-batch.

    Returns:
      (new TrainState, {"loss", "lr", "grad_norm", "param_norm"} f32 scalars).
    """
    key = jax.random.fold_in(state.key, state.step)
    grad_fn = jax.value_and_grad(_loss_and_state, has_aux=True)
    if grad_accum_steps == 1:
        (loss, model_state), grads = grad_fn(state.params, state.model_state, graphdef, batch, key, task)
    else:
        k = grad_accum_steps
        b = batch["image"].shape[0]
        if b % k:
            raise ValueError(f"batch size {b} is not divisible by grad_accum_steps {k}")
        # (B, ...) -> (B/k, k, ...) -> (k, B/k, ...): micro-batch i takes rows i::k, so every device keeps its own
        # rows and the "data" sharding survives the reshape.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1), batch)

        def body(carry, xs):
            g_acc, ms, l_acc = carry
            mb, i = xs
            (l, ms), g = grad_fn(state.params, ms, graphdef, mb, jax.random.fold_in(key, i), task)
            return (jax.tree.map(jnp.add, g_acc, g), ms, l_acc + l), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, model_state, loss), _ = jax.lax.scan(
            body, (zeros, state.model_state, jnp.zeros((), jnp.float32)), (micro, jnp.arange(k)))
        grads = jax.tree.map(lambda g: g / k, grads)
        loss = loss / k
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state,
                           key=state.key)
    # param_norm lets the host refuse to checkpoint a state that an overflowing update made non-finite.
    out = {"loss": loss, "lr": jnp.asarray(schedule(state.step), jnp.float32), "grad_norm": optax.tree.norm(grads),
           "param_norm": optax.tree.norm(params)}
    return new_state, out


def eval_step(graphdef: nnx.GraphDef, state: TrainState, batch: dict[str, jax.Array], *, task: Task):
    """Evaluates one padded batch in eval mode (BatchNorm running stats).

    Args:
      graphdef: static model graph.
      state: TrainState (not donated).
      batch: {"image", "mask", "valid": (B,) f32 1 for real rows}.
      task: metric definition.

    Returns:
      (sums: dict of f32 scalars incl. "count", pictures: (B, ..., 1) f32 predicted maps).
    """
    model = nnx.merge(graphdef, state.params, state.model_state)
    logits = task.predict_fn(model, batch["image"]).astype(jnp.float32)
    per = task.metrics_fn(logits, batch)
    return metrics_lib.masked_sums(per, batch["valid"]), task.to_picture(logits)


def jit_steps(graphdef: nnx.GraphDef, *, task: Task, tx: optax.GradientTransformation, schedule: optax.Schedule,
              grad_accum_steps: int = 1, state_sharding: Any = None, batch_sharding: Any = None,
              replicated: Any = None, compiler_options: dict | None = None):
    """jax.jit-compiled (train_step(state, batch), eval_step(state, batch)) with the state donated.

    Args:
      graphdef: static model graph (closed over).
      task, tx, schedule, grad_accum_steps: as in `train_step`.
      state_sharding: sharding pytree (or one sharding) for the state; None lets jit decide.
      batch_sharding: sharding of batch leaves.
      replicated: sharding for scalar outputs.
      compiler_options: XLA options for both steps (e.g. a lower CPU optimisation level for quick demos).

    Returns:
      (train_fn, eval_fn).
    """
    train = functools.partial(train_step, graphdef, task=task, tx=tx, schedule=schedule,
                              grad_accum_steps=grad_accum_steps)
    evaluate = functools.partial(eval_step, graphdef, task=task)
    opts = {"compiler_options": compiler_options} if compiler_options else {}
    if state_sharding is None:
        return jax.jit(train, donate_argnums=0, **opts), jax.jit(evaluate, **opts)
    train_fn = jax.jit(train, donate_argnums=0, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, replicated), **opts)
    eval_fn = jax.jit(evaluate, in_shardings=(state_sharding, batch_sharding),
                      out_shardings=(replicated, batch_sharding), **opts)
    return train_fn, eval_fn


@dataclasses.dataclass(frozen=True)
class PackedTrain:
    """The train step over a packed TrainState (`packing.PackSpec`: one buffer per dtype), for the training loop.

    Attributes:
      step: jitted (packed, batch) -> (packed, metrics), the packed state donated.
      pack: jitted TrainState -> packed (once, and after a resume).
      unpack: jitted packed -> TrainState (for evaluation and checkpoints; the packed state stays valid).
    """

    step: Callable
    pack: Callable
    unpack: Callable


def jit_packed_train(graphdef: nnx.GraphDef, state: TrainState, *, task: Task, tx: optax.GradientTransformation,
                     schedule: optax.Schedule, grad_accum_steps: int = 1, state_sharding: Any = None,
                     batch_sharding: Any = None, replicated: Any = None,
                     compiler_options: dict | None = None) -> PackedTrain:
    """`jit_steps`' train step, with the state passed as a few flat buffers instead of ~560 arrays.

    Unpacked at trace time, so the step computes exactly what `train_step` computes; what changes is the host's
    share: no Python flatten of `nnx.Variable` containers and a handful of call arguments per step (packing.py).

    Args:
      graphdef: static model graph (closed over).
      state: a TrainState (or its `jax.eval_shape`) giving the packing's structure, shapes and dtypes.
      task, tx, schedule, grad_accum_steps, state_sharding, batch_sharding, replicated, compiler_options: as in
        `jit_steps`; `state_sharding` must be one sharding for the whole state (the loop replicates it).

    Returns:
      PackedTrain.
    """
    spec = packing.spec_of(state)
    train = functools.partial(train_step, graphdef, task=task, tx=tx, schedule=schedule,
                              grad_accum_steps=grad_accum_steps)

    def packed_step(packed, batch):
        new_state, metrics = train(spec.unpack(packed), batch)
        return spec.pack(new_state), metrics

    opts = {"compiler_options": compiler_options} if compiler_options else {}
    if state_sharding is not None:
        opts.update(in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, replicated))
    return PackedTrain(jax.jit(packed_step, donate_argnums=0, **opts), *packing.jitted(spec, state_sharding))
