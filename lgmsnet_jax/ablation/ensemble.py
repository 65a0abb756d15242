"""Vmapped ensembles: N training runs of one architecture as one compiled step over a leading member axis.

The per-run step is `training.step.train_step` unchanged; members differ in their state (init seed, key, per-member
learning rate held in the optimizer state) and in their batches (own data stream, loss weights as batch entries).
With several devices the member axis is split over them with shard_map (no cross-member communication).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lgmsnet_jax.training import losses
from lgmsnet_jax.training import step as step_lib
from lgmsnet_jax.training.state import TrainState, create_train_state
from lgmsnet_jax.training.tasks import Task

MEMBER_AXIS = "member"
# Per-member loss weights travel in the batch as (B,) rows so they survive the step's micro-batch reshape.
LOSS_WEIGHT_KEYS = ("bce_weight", "dice_weight")


def lr_scaled(tx_for_schedule: Callable[[optax.Schedule], optax.GradientTransformation],
              unit_schedule: optax.Schedule, lr: float) -> optax.GradientTransformation:
    """The recipe optimizer with the peak learning rate moved into the optimizer state.

    `tx_for_schedule(lr * u)` of a separate run becomes `chain(tx_for_schedule(u), scale(lr))` with `lr` an
    injected hyperparameter, so members with different learning rates share one compiled update. Equal up to
    float rounding, because every update of the recipes (SGD + momentum, AdamW) is linear in the learning rate.

    Args:
      tx_for_schedule: builds the recipe optimizer from a schedule (e.g. `optim.build_optimizer("sgd", s)`).
      unit_schedule: the recipe schedule for a peak learning rate of 1.
      lr: this member's peak learning rate, stored by `init`; the compiled update reads it from each state.

    Returns:
      An optax transformation whose state holds `hyperparams["step_size"] = lr` in its last element.
    """
    return optax.chain(tx_for_schedule(unit_schedule), optax.inject_hyperparams(optax.scale)(step_size=lr))


def member_lr(opt_state: Any) -> jax.Array:
    """The injected peak learning rate of an `lr_scaled` optimizer state (per member when stacked)."""
    return opt_state[-1].hyperparams["step_size"]


def weighted_bce_dice_loss(logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """bce_weight · BCE + dice_weight · (1 − mean Dice), the weights read from the batch (per member).

    Same terms as `losses.bce_dice_loss` (smooth 1e-5, Dice per sample, optional "valid" sample weights), whose
    BCE weight is a constant 0.5; used only when a grid varies the loss weights.

    Args:
      logits: (B, H, W, 1) raw scores.
      batch: {"mask" (B, H, W, 1), "bce_weight": (B,) f32, "dice_weight": (B,) f32 (rows equal), optional
        "valid": (B,)}.

    Returns:
      Scalar f32 loss.
    """
    z = logits.astype(jnp.float32)
    t = batch["mask"].astype(jnp.float32)
    n = z.shape[0]
    valid = batch.get("valid")
    w = jnp.ones((n,), jnp.float32) if valid is None else valid.astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    bce = jnp.sum(w * jnp.mean(optax.sigmoid_binary_cross_entropy(z, t).reshape(n, -1), axis=1)) / denom
    p, t = jax.nn.sigmoid(z).reshape(n, -1), t.reshape(n, -1)
    smooth = losses.DICE_SMOOTH
    dice = (2.0 * jnp.sum(p * t, axis=1) + smooth) / (jnp.sum(p, axis=1) + jnp.sum(t, axis=1) + smooth)
    dice_loss = 1.0 - jnp.sum(w * dice) / denom
    return batch["bce_weight"][0] * bce + batch["dice_weight"][0] * dice_loss


def ensemble_task(task: Task) -> Task:
    """`task` with the loss replaced by `weighted_bce_dice_loss` (per-member loss weights)."""
    if task.name != "binary_seg_2d":
        raise ValueError(f"loss-weight axes need the binary_seg_2d task (BCE + Dice), got {task.name!r}")
    return dataclasses.replace(task, loss_fn=weighted_bce_dice_loss)


def stack(trees: Sequence[Any]) -> Any:
    """Stacks equal-structure pytrees along a new leading member axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Member `index` of a stacked pytree."""
    return jax.tree.map(lambda x: x[index], tree)


def init_member(model: nnx.Module, tx: optax.GradientTransformation, seed: int) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState) of one member, exactly as a separate run creates it."""
    return create_train_state(model, tx, seed)


def member_mesh(num_members: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh over the devices used for `num_members` members (at most one device per member).

    Args:
      num_members: real members.
      devices: candidates (default jax.devices()).

    Returns:
      A Mesh with axis "member" (Auto axis type).
    """
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.array(devices[:max(1, min(len(devices), num_members))]), (MEMBER_AXIS,))


def padded_size(num_members: int, mesh: Mesh) -> int:
    """Members after padding to a multiple of the mesh size (padding members repeat the last one, unreported)."""
    d = mesh.size
    return -(-num_members // d) * d


@dataclasses.dataclass
class EnsembleSteps:
    """Compiled ensemble functions.

    Attributes:
      train: (stacked state, stacked batch (M, B, ...)) -> (state, {"loss", "lr", "grad_norm"} each (M,)); the
        state is donated.
      evaluate: (stacked state, one shared batch (B, ...)) -> metric sums, each (M,).
      mesh: the member mesh.
      state_sharding: NamedSharding of stacked leaves (member axis split over devices).
    """

    train: Callable[..., Any]
    evaluate: Callable[..., Any]
    mesh: Mesh
    state_sharding: NamedSharding


MEMBER_LOOPS = ("vmap", "map")
DEFAULT_MEMBER_LOOP = "map"  # 2.7x faster than vmap per epoch on an H200 (BENCHMARKS.md "Ablation grids")


def _over_members(fn: Callable[..., Any], member_loop: str, shared_batch: bool) -> Callable[..., Any]:
    if member_loop == "vmap":
        return jax.vmap(fn, in_axes=(0, None if shared_batch else 0))
    if shared_batch:  # lax.map: members one after another inside one program (no batched-weight convs)
        return lambda state, batch: jax.lax.map(lambda st: fn(st, batch), state)
    return lambda state, batch: jax.lax.map(lambda args: fn(*args), (state, batch))


def make_steps(graphdef: nnx.GraphDef, *, task: Task, tx: optax.GradientTransformation,
               unit_schedule: optax.Schedule, mesh: Mesh, compiler_options: dict | None = None,
               member_loop: str = "vmap") -> EnsembleSteps:
    """Vmapped (and, on several devices, shard_mapped) train and eval steps of `training.step`.

    Args:
      graphdef: model graph shared by all members.
      task: loss/metric definition (use `ensemble_task` for per-member loss weights).
      tx: an `lr_scaled` optimizer (peak lr read from each member's state).
      unit_schedule: schedule for lr 1; the reported "lr" is multiplied by the member's peak lr.
      mesh: from `member_mesh`.
      compiler_options: XLA options for both functions (the loop's fast-compile options on CPU).
      member_loop: "vmap" (members batched: convs see per-member weights as feature groups) or "map"
        (`lax.map`: members in sequence inside the same compiled step; 2.7x faster than vmap on an H200, where
        grouped convolutions are slow, see BENCHMARKS.md). Both give each member the computation of a separate run.

    Returns:
      EnsembleSteps.
    """
    if member_loop not in MEMBER_LOOPS:
        raise ValueError(f"member_loop must be one of {MEMBER_LOOPS}, got {member_loop!r}")
    one_train = functools.partial(step_lib.train_step, graphdef, task=task, tx=tx, schedule=unit_schedule)

    def train(state, batch):
        new_state, metrics = one_train(state, batch)
        return new_state, dict(metrics, lr=metrics["lr"] * member_lr(state.opt_state))

    def evaluate(state, batch):
        sums, _ = step_lib.eval_step(graphdef, state, batch, task=task)
        return sums

    train_v = _over_members(train, member_loop, shared_batch=False)
    eval_v = _over_members(evaluate, member_loop, shared_batch=True)
    spec = P(MEMBER_AXIS)
    if mesh.size > 1:
        train_v = jax.shard_map(train_v, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec))
        eval_v = jax.shard_map(eval_v, mesh=mesh, in_specs=(spec, P()), out_specs=spec)
    opts = {"compiler_options": compiler_options} if compiler_options else {}
    return EnsembleSteps(train=jax.jit(train_v, donate_argnums=0, **opts), evaluate=jax.jit(eval_v, **opts),
                         mesh=mesh, state_sharding=NamedSharding(mesh, spec))


def put_members(tree: Any, steps: EnsembleSteps) -> Any:
    """Places a stacked pytree (state or batch) with its member axis split over the mesh."""
    return jax.device_put(tree, steps.state_sharding)


def put_shared(tree: Any, steps: EnsembleSteps) -> Any:
    """Places a batch every member reads (evaluation) replicated on the mesh."""
    return jax.device_put(tree, NamedSharding(steps.mesh, P()))
