"""Tasks: what a model predicts, how it is scored and how it is trained, as pure functions of arrays.

The loop and the steps only talk to a `Task`; a new problem (e.g. 3D multi-class with sliding-window evaluation)
registers its own with `register_task` instead of adding branches to the loop.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from lgmsnet_jax.training import losses, metrics

Batch = dict[str, jax.Array]


def _forward(model: Any, images: jax.Array) -> jax.Array:
    return model(images, train=False)


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything task-specific the train/eval steps need; all callables are pure and jit-safe.

    Attributes:
      name: registry name (stored in the config as `config.task`).
      loss_fn: (logits f32 (N, ..., K), batch) -> scalar f32 loss. `batch["valid"]`, when present, weights samples.
      metrics_fn: (logits f32, batch) -> dict of per-example (N,) f32 metrics.
      select_metric: key of `metrics_fn` used to pick the best checkpoint (higher is better, strictly greater wins).
      predict_fn: (model, images) -> logits in eval mode; 3D tasks swap in sliding-window inference.
      to_picture: logits -> (N, ..., 1) f32 map in [0, 1] for the prediction grid.
      report_metrics: metric keys printed in the summary table, in order.
    """

    name: str
    loss_fn: Callable[[jax.Array, Batch], jax.Array]
    metrics_fn: Callable[[jax.Array, Batch], dict[str, jax.Array]]
    select_metric: str = "iou"
    predict_fn: Callable[[Any, jax.Array], jax.Array] = _forward
    to_picture: Callable[[jax.Array], jax.Array] = jax.nn.sigmoid
    report_metrics: tuple[str, ...] = ("iou", "f1", "se", "pc", "acc")


def _binary_loss(logits: jax.Array, batch: Batch) -> jax.Array:
    return losses.bce_dice_loss(logits, batch["mask"], batch.get("valid"))


def _binary_metrics(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return metrics.binary_metrics_per_image(logits, batch["mask"])


def binary_seg_2d() -> Task:
    """2D binary segmentation with the reference BCE+Dice loss and per-image IoU/F1/SE/PC/ACC (spec §5.1, §7.1)."""
    return Task(name="binary_seg_2d", loss_fn=_binary_loss, metrics_fn=_binary_metrics)


_TASKS: dict[str, Callable[[], Task]] = {"binary_seg_2d": binary_seg_2d}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Adds a task factory under `name` (used by `get_task(config.task)`)."""
    if name in _TASKS and _TASKS[name] is not factory:
        raise ValueError(f"register_task: task {name!r} is already registered")
    _TASKS[name] = factory


def get_task(name: str) -> Task:
    """Returns the task registered under `name`; unknown names list the known ones."""
    if name not in _TASKS:
        raise ValueError(f"Unknown task {name!r} (config.task); known: {sorted(_TASKS)}")
    return _TASKS[name]()
