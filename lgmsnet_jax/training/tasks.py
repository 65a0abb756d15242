"""Tasks: what a model predicts, how it is scored and how it is trained, as pure functions of arrays.

The loop and the steps only talk to a `Task`; a new problem (e.g. 3D multi-class with sliding-window evaluation)
registers its own with `register_task` instead of adding branches to the loop. What differs per task in the
training loop itself (data, validation, the final report) sits behind a `TaskRun` made by `Task.make_run`.
"""
from __future__ import annotations

import dataclasses
import importlib
import pathlib
from collections.abc import Iterator
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
      make_run: RunContext -> TaskRun, the loop's per-run hooks; None means the 2D image hooks of loop.py.
    """

    name: str
    loss_fn: Callable[[jax.Array, Batch], jax.Array]
    metrics_fn: Callable[[jax.Array, Batch], dict[str, jax.Array]]
    select_metric: str = "iou"
    predict_fn: Callable[[Any, jax.Array], jax.Array] = _forward
    to_picture: Callable[[jax.Array], jax.Array] = jax.nn.sigmoid
    report_metrics: tuple[str, ...] = ("iou", "f1", "se", "pc", "acc")
    make_run: Callable[[RunContext], TaskRun] | None = None


@dataclasses.dataclass
class RunContext:
    """What the training loop shares with a task's hooks; the loop fills the later fields as it builds them.

    Attributes:
      config: the resolved run ConfigDict.
      workdir: the run folder.
      task: the Task being trained.
      mesh: the 1-D ("data",) device mesh.
      pid, nproc: this process's index and the process count.
      graphdef: the model's nnx.GraphDef (set once the model is built).
      eval_fn: the jitted eval step (state, batch) -> (metric sums, pictures) (set with graphdef).
      data_sharding: NamedSharding of batches over the "data" axis (set with graphdef).
      tb: the TensorBoard EventWriter on process 0, else None (set before training).
    """

    config: Any
    workdir: pathlib.Path
    task: Task
    mesh: Any
    pid: int
    nproc: int
    graphdef: Any = None
    eval_fn: Callable | None = None
    data_sharding: Any = None
    tb: Any = None

    @property
    def is_main(self) -> bool:
        return self.pid == 0


class TaskRun:
    """The training loop's per-task hooks for one run (made by `Task.make_run` after the mesh exists).

    Construction loads and checks the data and the batch sizes (before anything compiles); `steps_per_epoch`
    and `has_val` are then fixed. The loop owns the steps, checkpoints, resume, best selection and writers.

    Attributes:
      steps_per_epoch: optimizer steps per epoch.
      has_val: whether a validation split exists (validation runs, best-checkpoint selection).
      rate_key: metrics.jsonl key of the training throughput (examples per second of the global batch).
      stream_from_step: True when `train_iter(start_step=s)` gives exactly the stream after s steps, for any
        process count (then resuming needs no saved iterator state); False resumes from the saved state.
    """

    steps_per_epoch: int
    has_val: bool
    rate_key: str = "train/img_per_s"
    stream_from_step: bool = False

    def train_iter(self, seed_offset: int = 0, start_step: int = 0) -> Iterator[dict]:
        """This process's checkpointable train batch iterator (called once ctx.graphdef is set).

        Args:
          seed_offset: added to the pipeline seed (a restarted, reseeded input stream; loop._resume).
          start_step: first global step of the stream (only when `stream_from_step`).
        """
        raise NotImplementedError

    def validate(self, state: Any, step: int, epoch: int) -> dict[str, float]:
        """Evaluates the validation split during training; returns host metrics (keyed as in metrics.jsonl)."""
        raise NotImplementedError

    def monitor(self, state: Any) -> dict[str, float]:
        """Held-out metrics evaluated beside each validation, for monitoring only (never used for selection or
        stopping); {} when the run has none."""
        return {}

    def val_scalars(self, val: dict[str, float]) -> dict[str, float]:
        """The validation metrics written to TensorBoard."""
        return val

    def format_val(self, val: dict[str, float]) -> str:
        """One log line of validation metrics."""
        raise NotImplementedError

    def after_validation(self, step: int, epoch: int) -> None:
        """Extras after the validation metrics are logged (e.g. prediction pictures); every process calls it."""

    def final_report(self, mngr: Any, meta: dict, last_state: Any) -> dict:
        """Evaluates the chosen checkpoint, writes summary.json (process 0), prints the table; returns the summary."""
        raise NotImplementedError


def _binary_loss(logits: jax.Array, batch: Batch) -> jax.Array:
    return losses.bce_dice_loss(logits, batch["mask"], batch.get("valid"))


def _binary_metrics(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return metrics.binary_metrics_per_image(logits, batch["mask"])


def binary_seg_2d() -> Task:
    """2D binary segmentation with the reference BCE+Dice loss and per-image IoU/F1/SE/PC/ACC (spec §5.1, §7.1)."""
    return Task(name="binary_seg_2d", loss_fn=_binary_loss, metrics_fn=_binary_metrics)


_TASKS: dict[str, Callable[[], Task]] = {"binary_seg_2d": binary_seg_2d}
# Tasks whose module registers them on import; imported on first use so 2D runs do not load the 3D data code.
_REGISTERED_BY = {"seg_3d": "lgmsnet_jax.training.seg3d"}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Adds a task factory under `name` (used by `get_task(config.task)`)."""
    if name in _TASKS and _TASKS[name] is not factory:
        raise ValueError(f"register_task: task {name!r} is already registered")
    _TASKS[name] = factory


def get_task(name: str) -> Task:
    """Returns the task registered under `name`; unknown names list the known ones."""
    if name not in _TASKS and name in _REGISTERED_BY:
        importlib.import_module(_REGISTERED_BY[name])
    if name not in _TASKS:
        raise ValueError(f"Unknown task {name!r} (config.task); known: {sorted(_TASKS)}")
    return _TASKS[name]()
