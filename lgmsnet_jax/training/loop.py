"""The training loop: mesh -> data -> model -> steps -> resume -> train/evaluate/checkpoint -> final report.

One flat function in big_vision's order for every task; what differs per task (data, validation, the final
report) is a `tasks.TaskRun` (ImageRun below for 2D, seg3d.Seg3DRun for 3D volumes). Nothing here reads flags
or sets jax.config (train.py does).
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lgmsnet_jax import xla_options
from lgmsnet_jax.models import layers
from lgmsnet_jax.training import (builders, checkpoint, metrics as metrics_lib, step as step_lib, stopping, tasks,
                                  writers)

SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "val_per_case.json"  # 3D runs: per-case validation Dice/HD95 of the reported checkpoint
TRAIN_KEYS = ("image", "mask")
EVAL_KEYS = ("image", "mask", "valid")


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the run stopped without saving the bad state."""


def _process_allgather(x: jax.Array) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _global_batch(batch: dict, keys: tuple[str, ...], sharding: NamedSharding) -> dict[str, jax.Array]:
    # Each process passes its own rows; the global array spans all processes' devices.
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}


def _agree(ok: bool) -> bool:
    """True on every process iff process 0 says so (process 0 owns the workdir guards)."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def make_mesh(devices=None) -> Mesh:
    """1-D data-parallel mesh over `devices` (default: every device of every process), Auto axis type."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("data",))


def check_batch(global_batch: int, mesh: Mesh, grad_accum_steps: int, what: str = "config.batch_size") -> None:
    """Clear errors for batch sizes that cannot be split over devices, processes and micro-batches."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch % n_dev:
        raise ValueError(f"{what}={global_batch} (global) must be divisible by the {n_dev} devices of the mesh; "
                         f"use a multiple of {n_dev}")
    if global_batch % n_proc:
        raise ValueError(f"{what}={global_batch} must be divisible by the {n_proc} processes")
    if (global_batch // n_dev) % grad_accum_steps:
        raise ValueError(f"per-device batch {global_batch // n_dev} must be divisible by "
                         f"config.grad_accum_steps={grad_accum_steps}")


def train_and_evaluate(config, workdir: str | pathlib.Path, *, force_config: bool = False,
                       stop_after_steps: int | None = None, devices=None,
                       on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint, and writes the final report.

    Args:
      config: a resolved ConfigDict (see configs/common.py).
      workdir: run folder; created. Holds config.json, checkpoints/, metrics.jsonl, tb/, predictions/,
        summary.json.
      force_config: continue a workdir whose saved config differs.
      stop_after_steps: train at most this many steps in this invocation, checkpoint and return (time slicing).
      devices: mesh devices (default all).
      on_step: test hook called as on_step(step, host_metrics) after each step's metrics are fetched.

    Returns:
      The summary dict (also saved as <workdir>/summary.json); {"stopped_at": step} when stopped early.
    """
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    builders.check_data_dir(config)  # before the workdir is touched or anything compiles
    lock = checkpoint.WorkdirLock(workdir)
    error = None
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
            checkpoint.check_and_write_config(workdir, config.to_dict(), force=force_config)
        except checkpoint.WorkdirError as e:
            lock.release()
            error = e
    if not _agree(error is None):
        raise error or checkpoint.WorkdirError(f"process 0 refused workdir {workdir}; see its log")
    try:
        return _run(config, workdir, stop_after_steps=stop_after_steps, devices=devices, on_step=on_step)
    finally:
        lock.release()


RESUME_DATA = ("exact", "restart")


def _resume(mngr, latest: int, state, repl, run, resume_data: str, nproc: int):
    """Restores checkpoint `latest`: (state, meta, train iterator).

    "exact" continues the input stream where it stopped: from the step alone when the run's stream allows it
    (`TaskRun.stream_from_step`, 2D: any process or worker count), else from each process's saved iterator state,
    which needs the process count the checkpoint was written with. "restart" restores model, optimizer and step,
    and starts a new input stream whose seed is offset by the step.
    """
    abstract = checkpoint.abstract_like(state, repl)
    if resume_data == "exact" and run.stream_from_step:
        logging.info("Resuming from %s step %d (input stream from the step)", mngr.directory, latest)
        state, meta, _ = checkpoint.restore(mngr, latest, abstract, data_iter=None)
        return state, meta, run.train_iter(start_step=latest)
    saved = checkpoint.restore_meta(mngr, latest).get("process_count", nproc)
    if resume_data == "exact" and saved != nproc:
        raise checkpoint.WorkdirError(
            f"checkpoint step {latest} in {mngr.directory} was written by {saved} process(es) and this run has "
            f"{nproc}: its input-pipeline state (one iterator per process) cannot carry over. Rerun with {saved} "
            f"process(es) to resume exactly, or add --config.resume_data=restart to restore the model, optimizer and "
            f"step {latest} and restart the input stream (reseeded).")
    logging.info("Resuming from %s step %d (%s data state)", mngr.directory, latest,
                 "restarted" if resume_data == "restart" else "exact")
    if resume_data == "restart":
        state, meta, _ = checkpoint.restore(mngr, latest, abstract, data_iter=None)
        return state, meta, run.train_iter(seed_offset=latest)
    train_iter = run.train_iter()
    state, meta, _ = checkpoint.restore(mngr, latest, abstract, data_iter=train_iter)
    return state, meta, train_iter


def _run(config, workdir: pathlib.Path, *, stop_after_steps, devices, on_step) -> dict:
    pid, nproc = jax.process_index(), jax.process_count()
    # The time budget counts from here: data loading and compiles are part of a time slice.
    stops = stopping.StopRequests(config.get("max_run_seconds", 0), process_count=nproc)
    is_main = pid == 0
    if config.get("resume_data", "exact") not in RESUME_DATA:
        raise ValueError(f"config.resume_data must be one of {RESUME_DATA}, got {config.resume_data!r}")
    if config.get("batchnorm", "global") not in layers.BATCHNORM_MODES:
        raise ValueError(f"config.batchnorm must be one of {layers.BATCHNORM_MODES}, got {config.batchnorm!r}")
    task = tasks.get_task(config.task)

    mesh = make_mesh(devices)
    repl, data_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    ctx = tasks.RunContext(config=config, workdir=workdir, task=task, mesh=mesh, pid=pid, nproc=nproc)
    # Data first: a missing dataset or a bad batch size stops the run before anything is compiled.
    run = (task.make_run or ImageRun)(ctx)
    global_batch = int(config.batch_size)
    steps_per_epoch = run.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs

    tx, schedule = builders.build_optimizer(config, steps_per_epoch)
    model = builders.build_model(config)
    if config.get("batchnorm", "global") == "per_device":
        n_bn = layers.set_batchnorm_groups(model, mesh.size)  # each device normalises its own rows of the batch
        logging.info("config.batchnorm=per_device: %d BatchNorm layers, statistics over each of %d devices' rows",
                     n_bn, mesh.size)
    graphdef, state = builders.create_train_state(model, tx, config.seed)
    del model
    state = builders.replicate(state, repl)
    compiler_options = xla_options.training_for(config)
    step_args = dict(task=task, tx=tx, schedule=schedule, grad_accum_steps=config.grad_accum_steps,
                     state_sharding=repl, batch_sharding=data_sh, replicated=repl, compiler_options=compiler_options)
    _, eval_fn = step_lib.jit_steps(graphdef, **step_args)
    # The loop steps a packed state (a few buffers, not ~560 arrays: less host time per step, BENCHMARKS.md) and
    # unpacks it into a TrainState only to evaluate or checkpoint.
    packed_train = step_lib.jit_packed_train(graphdef, state, **step_args)
    ctx.graphdef, ctx.eval_fn, ctx.data_sharding = graphdef, eval_fn, data_sh

    mngr = checkpoint.make_manager(workdir)
    meta = {"best_score": checkpoint.NOT_BEST, "best_step": None, "best_epoch": None, "best_val": None}
    jsonl = writers.JsonlWriter(workdir / "metrics.jsonl") if is_main else None
    latest = mngr.latest_step()
    if latest is None:
        train_iter = run.train_iter()
    else:
        state, meta, train_iter = _resume(mngr, latest, state, repl, run, config.get("resume_data", "exact"), nproc)
        if jsonl is not None:
            jsonl.truncate_after(latest)
    start = int(jax.device_get(state.step))
    packed, state_step = packed_train.pack(state), start

    def current_state(step: int):
        """The TrainState after `step` steps (the packed state is at `step`), unpacked once per step."""
        nonlocal state, state_step
        if state_step != step:
            state, state_step = packed_train.unpack(packed), step
        return state
    tb = writers.EventWriter(workdir / "tb") if is_main else None
    ctx.tb = tb
    config_dict = config.to_dict()
    last_saved = latest

    def save(step: int, select: float | None = None) -> None:
        nonlocal last_saved
        if step == last_saved:
            return
        meta["process_count"] = nproc  # the data state holds one iterator per process
        checkpoint.save(mngr, step, current_state(step), data_iter=train_iter, config_dict=config_dict, meta=meta,
                        metrics=None if select is None else {"select": select})
        last_saved = step

    unit = run.rate_key.removeprefix("train/").removesuffix("_per_s")  # "img" or "patches"
    progress = writers.Progress(total_steps, start, enabled=is_main, log_every=config.log_every, unit=unit)
    epoch_losses: list[float] = []
    pending: tuple[int, dict] | None = None
    t_last = t_epoch = time.perf_counter()

    def consume() -> None:
        """Fetches the previous step's metrics (one step behind dispatch), checks them, logs them."""
        nonlocal pending, t_last
        if pending is None:
            return
        step, m = pending
        pending = None
        host = {k: float(v) for k, v in jax.device_get(m).items()}
        now = time.perf_counter()
        rate = global_batch / max(now - t_last, 1e-9)
        t_last = now
        if not all(math.isfinite(host[k]) for k in ("loss", "grad_norm", "param_norm")):
            where = (f"the last good checkpoint is step {last_saved} in {mngr.directory}" if last_saved is not None
                     else "no checkpoint was saved yet")
            low_precision = str(config.model.get("dtype", "float32")) not in ("float32", "fp32")
            raise NonFiniteLossError(
                f"loss={host['loss']} grad_norm={host['grad_norm']} param_norm={host['param_norm']} at step {step} "
                f"(epoch {(step - 1) // steps_per_epoch + 1}); stopping without saving this state; {where}. Lower "
                f"config.optim.lr or check the data"
                + (f", or train in float32 (config.model.dtype={config.model.dtype!s})." if low_precision else "."))
        epoch_losses.append(host["loss"])
        epoch = (step - 1) // steps_per_epoch + 1
        progress.update(step, host["loss"], rate, epoch)
        if is_main and (step % config.log_every == 0 or step == total_steps):
            rec = {"train/loss": host["loss"], "train/lr": host["lr"], "train/grad_norm": host["grad_norm"],
                   run.rate_key: rate, "epoch": epoch}
            jsonl.write(step, rec)
            tb.scalars(step, {k: v for k, v in rec.items() if k != "epoch"})
        if on_step is not None:
            on_step(step, host)

    stopped_at = None
    stops.install()
    try:
        for step in range(start, total_steps):
            if stop_after_steps is not None and step - start >= stop_after_steps:
                stopped_at = step
                break
            # Time-sliced jobs (a scheduler's wall-clock limit), SIGTERM (preemption) and Ctrl-C: checkpoint now, rerun
            # the same command to continue.
            why = stops.reason(step, start)
            if why is not None:
                logging.warning("%s at step %d; checkpointing (rerun the same command to continue)", why, step)
                stopped_at = step
                break
            batch = next(train_iter)
            packed, m = packed_train.step(packed, _global_batch(batch, TRAIN_KEYS, data_sh))
            consume()
            pending = (step + 1, m)
            done = step + 1
            if done % steps_per_epoch == 0:
                consume()
                epoch = done // steps_per_epoch
                if is_main:
                    mean_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
                    # The epoch's steps, input pipeline included; the boundary's costs are logged below.
                    jsonl.write(done, {"train/epoch_loss": mean_loss, "epoch": epoch,
                                       "time/epoch_steps_s": time.perf_counter() - t_epoch})
                epoch_losses.clear()
                t_epoch = time.perf_counter()
                if run.has_val and (epoch % config.eval_every == 0 or epoch == config.epochs):
                    t0 = time.perf_counter()
                    val = run.validate(current_state(done), done, epoch)
                    t_val = time.perf_counter() - t0
                    score = val[task.select_metric]
                    improved = score > meta["best_score"]  # strictly greater, as the reference
                    if improved:
                        meta = meta | {"best_score": score, "best_step": done, "best_epoch": epoch, "best_val": val}
                    # The reference's Kvasir script also scores its test set every epoch; the loop only logs it.
                    t0 = time.perf_counter()
                    mon = run.monitor(current_state(done))
                    t_test = time.perf_counter() - t0
                    if mon and mon[task.select_metric] > meta.get("best_test_score", checkpoint.NOT_BEST):
                        meta = meta | {"best_test_score": mon[task.select_metric], "best_test_epoch": epoch}
                    if is_main:
                        tb.scalars(done, {f"val/{k}": v for k, v in run.val_scalars(val).items()})
                        logging.info("epoch %d val %s%s", epoch, run.format_val(val), " (best)" if improved else "")
                        if mon:
                            tb.scalars(done, {f"test/{k}": v for k, v in run.val_scalars(mon).items()})
                            logging.info("epoch %d test (monitoring only) %s", epoch, run.format_val(mon))
                    run.after_validation(done, epoch)
                    t0 = time.perf_counter()
                    # A new best is always kept; other evaluations are resume points every N epochs (a ~20 MB
                    # write each epoch is a measurable share of a short epoch: BENCHMARKS.md, Kvasir epoch).
                    period = config.get("checkpoint_every_epochs") or 1
                    if improved or epoch % period == 0 or epoch == config.epochs:
                        save(done, score if improved else checkpoint.NOT_BEST)
                    if is_main:  # what an epoch boundary costs besides the steps (BENCHMARKS.md, Kvasir epoch)
                        jsonl.write(done, {f"val/{k}": v for k, v in val.items()} | {
                            f"test/{k}": v for k, v in mon.items()} | ({"time/test_s": t_test} if mon else {}) | {
                            "epoch": epoch, "time/validate_s": t_val, "time/checkpoint_s": time.perf_counter() - t0})
                    t_last = t_epoch = time.perf_counter()  # the next step's rate excludes the boundary
                    continue
            every = config.get("checkpoint_every_steps") or 0
            if every and done % every == 0:
                consume()
                save(done)
        consume()
        final = stopped_at if stopped_at is not None else total_steps
        save(final)
    finally:
        stops.restore()
        progress.close()
        mngr.wait_until_finished()
        train_iter.close() if hasattr(train_iter, "close") else None
    if stopped_at is not None:
        mngr.close()
        if tb is not None:
            tb.close()
        return {"stopped_at": stopped_at}

    summary = run.final_report(mngr, meta, current_state(total_steps))
    mngr.close()
    if tb is not None:
        tb.close()
    return summary


def _fmt(values: dict, keys: tuple[str, ...]) -> str:
    return " ".join(f"{k} {values[k]:.4f}" for k in keys if k in values)


class ImageRun(tasks.TaskRun):
    """The 2D hooks: Grain image pipelines, jitted batch evaluation, prediction pictures, val/test report."""

    def __init__(self, ctx: tasks.RunContext):
        import data_pipelines as dp

        self.ctx, self.dp = ctx, dp
        config, mesh = ctx.config, ctx.mesh
        self.sources = builders.load_sources(config)
        global_batch = config.batch_size
        self.eval_batch = config.get("eval_batch_size") or global_batch
        check_batch(global_batch, mesh, config.grad_accum_steps)
        check_batch(self.eval_batch, mesh, 1, "config.eval_batch_size")
        self.steps_per_epoch = dp.steps_per_epoch(len(self.sources["train"]), global_batch)
        self.has_val = self.sources["val"] is not None
        self._first = None
        self._eval_cache: dict[int, tuple[list, dict]] = {}
        sources = self.sources
        logging.info("%d train / %s val / %s test examples; %d devices in %d processes; %d steps/epoch, %d steps",
                     len(sources["train"]), len(sources["val"]) if sources["val"] else 0,
                     len(sources["test"]) if sources["test"] else 0, mesh.devices.size, ctx.nproc,
                     self.steps_per_epoch, self.steps_per_epoch * config.epochs)

    stream_from_step = True  # data_pipelines.train_dataset: the global batch of a step is process-count free

    def train_iter(self, seed_offset: int = 0, start_step: int = 0):
        config, ctx = self.ctx.config, self.ctx
        b = config.batch_size // ctx.nproc
        logging.info("input: process %d/%d reads rows [%d, %d) of every global batch of %d (%d training records), "
                     "from step %d", ctx.pid, ctx.nproc, ctx.pid * b, (ctx.pid + 1) * b, config.batch_size,
                     len(self.sources["train"]), start_step)
        train_ds = self.dp.train_dataset(self.sources["train"], seed=config.seed + seed_offset, start_step=start_step,
                                         batch_size=b,
                                         image_size=tuple(config.image_size), augment=config.augment,
                                         normalize=config.normalize, shard_index=ctx.pid, shard_count=ctx.nproc,
                                         worker_count=config.num_workers)
        return iter(train_ds)

    def _eval_stream(self, src):
        """Yields (device batch, host copy of the first batch) over `src`. The first pass through a set that fits in
        config.eval_cache_gib keeps its device batches, and later passes replay them: validation runs every epoch,
        and on a GPU the input pipeline and host-to-device copies cost more than the evaluation itself."""
        if id(src) in self._eval_cache:
            batches, first = self._eval_cache[id(src)]
            for b in batches:
                yield b, first
            return
        ctx, config = self.ctx, self.ctx.config
        ds = self.dp.eval_dataset(src, batch_size=self.eval_batch // ctx.nproc, image_size=tuple(config.image_size),
                                  normalize=config.normalize, shard_index=ctx.pid, shard_count=ctx.nproc)
        h, w = config.image_size
        keep = len(src) * h * w * (3 + 1) * 4 <= float(config.get("eval_cache_gib", 0.0)) * 2**30  # f32 image+mask
        kept, first = [], None
        for batch in ds:
            dev = _global_batch(batch, EVAL_KEYS, ctx.data_sharding)
            if first is None:
                first = {k: np.asarray(batch[k]) for k in ("image", "mask")}
            if keep:
                kept.append(dev)
            yield dev, first
        if keep:
            self._eval_cache[id(src)] = (kept, first)

    def evaluate(self, src, st) -> tuple[dict, tuple | None]:
        """Metric means over `src` and the first batch (host arrays) with its pictures."""
        sums, first = None, None
        for batch, host in self._eval_stream(src):
            s, pics = self.ctx.eval_fn(st, batch)
            sums = s if sums is None else jax.tree.map(lambda a, b: a + b, sums, s)
            if first is None:
                first = (host, pics)
        means = metrics_lib.finalize_means(jax.device_get(sums))
        return means, first

    def validate(self, state, step: int, epoch: int) -> dict:
        val, self._first = self.evaluate(self.sources["val"], state)
        return val

    def monitor(self, state) -> dict:
        if not self.ctx.config.get("monitor_test") or self.sources["test"] is None:
            return {}
        return self.evaluate(self.sources["test"], state)[0]

    def val_scalars(self, val: dict) -> dict:
        return {k: v for k, v in val.items() if k != "count"}

    def format_val(self, val: dict) -> str:
        return _fmt(val, self.ctx.task.report_metrics)

    def after_validation(self, step: int, epoch: int) -> None:
        config = self.ctx.config
        # A 256x256 grid is ~1 MB (PNG and TB copy); every 500 epochs it filled 290 MB on a BUSI run.
        every_pic = config.get("picture_every_epochs", 1) or 0
        if self._first is not None and every_pic and (epoch % every_pic == 0 or epoch == config.epochs):
            self._picture(step, epoch, self._first)

    def _picture(self, step: int, epoch: int, first) -> None:
        ctx, config = self.ctx, self.ctx.config
        batch, pics = first
        n = min(config.get("num_pictures", 8), len(batch["image"]))
        pics = _process_allgather(pics)  # every process takes part; only process 0 writes
        if not ctx.is_main:
            return
        grid = writers.prediction_grid(self.dp.denormalize(batch["image"][:n], config.normalize),
                                       batch["mask"][:n], pics[:n])
        png = writers.encode_png(grid)
        (ctx.workdir / "predictions").mkdir(exist_ok=True)
        (ctx.workdir / "predictions" / f"val_epoch{epoch:04d}.png").write_bytes(png)
        ctx.tb.image(step, "val/predictions", png, grid.shape[0], grid.shape[1])

    def final_report(self, mngr, meta, last_state) -> dict:
        """Evaluates the best-by-validation checkpoint on val and test; prints and saves the summary table."""
        config, workdir, task, sources = self.ctx.config, self.ctx.workdir, self.ctx.task, self.sources
        best = meta.get("best_step")
        if best is not None:
            state = checkpoint.restore_state_like(mngr, best, last_state)
            label = f"best validation {task.select_metric} (epoch {meta['best_epoch']}, step {best})"
        else:
            state, label = last_state, "last step (no validation split)"
        rows = {}
        if sources["val"] is not None:
            rows["val"] = self.evaluate(sources["val"], state)[0]
        if sources["test"] is not None:
            rows["test"] = self.evaluate(sources["test"], state)[0]
        protocol = ("selected on validation, reported on test" if "test" in rows
                    else "selected and reported on validation (the reference protocol; no held-out test split)")
        summary = {"checkpoint": label, "protocol": protocol, "steps": int(jax.device_get(last_state.step)),
                   "epochs": config.epochs, "dataset": config.dataset, "model": config.model_name, "metrics": rows}
        if "best_test_score" in meta:  # config.monitor_test: an optimistic bound, never the reported result
            summary["test_monitor"] = {
                f"best_{task.select_metric}": meta["best_test_score"], "epoch": meta["best_test_epoch"],
                "note": "best test score over the per-epoch evaluations (test-selected: what the reference's "
                        "second, best-on-test checkpoint would report); not the protocol above"}
        if jax.process_index() == 0:
            (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            keys = task.report_metrics
            model = "LGMSNet" if config.model_name == "lgmsnet" else config.model_name
            lines = [f"{model} on {config.dataset}: {label}; {protocol}",
                     f"{'split':<6} {'n':>5} " + " ".join(f"{k.upper():>7}" for k in keys)]
            for name, vals in rows.items():
                lines.append(f"{name:<6} {vals['count']:>5} " + " ".join(f"{vals[k]:>7.4f}" for k in keys))
            if "test_monitor" in summary:
                tm = summary["test_monitor"]
                lines.append(f"(monitoring only: best test {task.select_metric.upper()} over epochs "
                             f"{meta['best_test_score']:.4f} at epoch {tm['epoch']}, test-selected)")
            lines.append(f"saved to {workdir / SUMMARY_FILE}")
            print("\n".join(lines), flush=True)
        return summary
