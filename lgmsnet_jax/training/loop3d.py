"""The 3D training loop: cached volumes -> patch batches -> train steps -> sliding-window validation -> report.

The same order, checkpoints (Orbax latest + best, Grain iterator state), workdir guards and writers as
loop.py; what differs is the data (patches from preprocessed volumes, seg3d.py) and the evaluation
(whole volumes by sliding window, per-class Dice and HD95 on the host). train.py calls
it instead of loop.train_and_evaluate when `config.task == "seg_3d"`.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Callable

import grain
import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from data_pipelines.pipeline import CheckedIterDataset
from lgmsnet_jax.training import builders, checkpoint, loop, seg3d, step as step_lib, writers

SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "val_per_case.json"


class TimeLimitReached(Exception):
    """Internal: config.max_run_seconds elapsed (the run checkpoints and returns)."""


def train_and_evaluate(config, workdir: str | pathlib.Path, *, force_config: bool = False,
                       stop_after_steps: int | None = None, devices=None,
                       on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Trains a 3D config in `workdir`, resuming from its latest checkpoint; same contract as loop.train_and_evaluate.

    Args:
      config: a 3D ConfigDict (configs/acdc.py, btcv.py, kits23.py).
      workdir: run folder (config.json, checkpoints/, metrics.jsonl, tb/, val_per_case.json, summary.json).
      force_config: continue a workdir whose saved config differs.
      stop_after_steps: train at most this many steps now, checkpoint, return.
      devices: mesh devices (default all).
      on_step: test hook on_step(step, host_metrics).

    Returns:
      The summary dict, or {"stopped_at": step} when stopped early (steps or config.max_run_seconds).
    """
    workdir = pathlib.Path(workdir)
    builders.check_data_dir(config)
    lock = checkpoint.WorkdirLock(workdir)
    error = None
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
            checkpoint.check_and_write_config(workdir, config.to_dict(), force=force_config)
        except checkpoint.WorkdirError as e:
            lock.release()
            error = e
    if not loop._agree(error is None):
        raise error or checkpoint.WorkdirError(f"process 0 refused workdir {workdir}; see its log")
    try:
        return _run(config, workdir, stop_after_steps=stop_after_steps, devices=devices, on_step=on_step)
    finally:
        lock.release()


def _train_iterator(data: seg3d.Seg3DData, config, per_process_volumes: int, pid: int, nproc: int):
    ds = seg3d.train_dataset(data, config, volumes_per_batch=per_process_volumes, shard_index=pid, shard_count=nproc)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(config.get("read_threads", 2)),
                                              prefetch_buffer_size=int(config.get("prefetch", 4))))
    if config.num_workers > 0:
        from data_pipelines.pipeline import _mark_flags_parsed  # google/grain#1360
        _mark_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.num_workers), per_worker_buffer_size=2))
    settings = {"seed": int(config.seed), "volumes_per_batch": per_process_volumes, "num_volumes": len(data.train_names),
                "patch": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config.patch).items()},
                "shard_index": pid, "shard_count": nproc, "worker_count": int(config.num_workers)}
    return iter(CheckedIterDataset(it, json.loads(json.dumps(settings))))


def _run(config, workdir: pathlib.Path, *, stop_after_steps, devices, on_step) -> dict:
    t_start = time.monotonic()
    max_seconds = float(config.get("max_run_seconds", 0) or 0)
    pid, nproc = jax.process_index(), jax.process_count()
    is_main = pid == 0
    task = seg3d.seg_3d()

    data = seg3d.prepare_data(config, workdir, max_train=config.max_train_examples or None,
                              max_val=config.max_eval_examples or None)
    mesh = loop.make_mesh(devices)
    repl, data_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    global_batch = int(config.batch_size)
    samples = int(config.patch.num_samples)
    if global_batch % (samples * nproc):
        raise ValueError(f"config.batch_size={global_batch} patches must be a multiple of patch.num_samples={samples} "
                         f"times the {nproc} processes")
    loop.check_batch(global_batch, mesh, config.grad_accum_steps)
    volumes_per_step = global_batch // samples
    # An epoch is one pass over the training volumes (MONAI: 24 steps of 4 patches for BTCV's 24 volumes).
    steps_per_epoch = math.ceil(len(data.train_names) / volumes_per_step)
    total_steps = steps_per_epoch * config.epochs
    logging.info("3D %s: %d train / %d val volumes, %d patches of %s per step, %d steps/epoch, %d steps",
                 config.dataset, len(data.train_names), len(data.val_names), global_batch,
                 tuple(config.patch.patch_size), steps_per_epoch, total_steps)

    tx, schedule = builders.build_optimizer(config, steps_per_epoch)
    model = builders.build_model(config)
    graphdef, state = builders.create_train_state(model, tx, config.seed)
    del model
    state = jax.device_put(state, repl)
    compiler_options = loop.FAST_COMPILE_OPTIONS if config.get("fast_compile") else None
    train_fn, _ = step_lib.jit_steps(graphdef, task=task, tx=tx, schedule=schedule,
                                     grad_accum_steps=config.grad_accum_steps, state_sharding=repl,
                                     batch_sharding=data_sh, replicated=repl, compiler_options=compiler_options)
    sw = config.sw
    predict = seg3d.make_volume_predictor(graphdef, roi_size=tuple(sw.roi_size), overlap=float(sw.overlap),
                                          mode=sw.mode, sw_batch_size=int(sw.sw_batch_size))
    canvas = seg3d.validation_canvas(data, tuple(sw.roi_size)) if data.val_names else None

    train_iter = _train_iterator(data, config, volumes_per_step // nproc, pid, nproc)
    mngr = checkpoint.make_manager(workdir)
    meta = {"best_score": checkpoint.NOT_BEST, "best_step": None, "best_epoch": None, "best_val": None}
    jsonl = writers.JsonlWriter(workdir / "metrics.jsonl") if is_main else None
    latest = mngr.latest_step()
    if latest is not None:
        logging.info("Resuming from %s step %d", mngr.directory, latest)
        state, meta, _ = checkpoint.restore(mngr, latest, checkpoint.abstract_like(state, repl), data_iter=train_iter)
        if jsonl is not None:
            jsonl.truncate_after(latest)
    start = int(jax.device_get(state.step))
    tb = writers.EventWriter(workdir / "tb") if is_main else None
    config_dict = config.to_dict()
    last_saved = latest

    def save(step: int, select: float | None = None) -> None:
        nonlocal last_saved
        if step == last_saved:
            return
        checkpoint.save(mngr, step, state, data_iter=train_iter, config_dict=config_dict, meta=meta,
                        metrics=None if select is None else {"select": select})
        last_saved = step

    def evaluate(st, with_hd95: bool) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        summary, per_case = seg3d.evaluate(predict, st.params, st.model_state, data, num_classes=config.num_classes,
                                           canvas=canvas, with_hd95=with_hd95)
        logging.info("validated %d volumes in %.1f s", len(data.val_names), time.perf_counter() - t0)
        return summary, per_case

    progress = writers.Progress(total_steps, start, enabled=is_main, log_every=config.log_every)
    epoch_losses: list[float] = []
    last_eval: tuple[int, dict, dict] | None = None  # (step, summary, per-case) of the latest HD95 evaluation
    t_last = time.perf_counter()
    stopped_at = None
    try:
        for step in range(start, total_steps):
            if stop_after_steps is not None and step - start >= stop_after_steps:
                stopped_at = step
                break
            if max_seconds and time.monotonic() - t_start > max_seconds:
                logging.info("config.max_run_seconds=%s reached at step %d; checkpointing", max_seconds, step)
                stopped_at = step
                break
            batch = next(train_iter)
            state, m = train_fn(state, loop._global_batch(batch, loop.TRAIN_KEYS, data_sh))
            done = step + 1
            host = {k: float(v) for k, v in jax.device_get(m).items()}
            now = time.perf_counter()
            patches_s, t_last = global_batch / max(now - t_last, 1e-9), now
            if not all(math.isfinite(host[k]) for k in ("loss", "grad_norm", "param_norm")):
                raise loop.NonFiniteLossError(
                    f"loss={host['loss']} grad_norm={host['grad_norm']} at step {done}; stopping without saving; "
                    f"last checkpoint: step {last_saved}")
            epoch_losses.append(host["loss"])
            epoch = (done - 1) // steps_per_epoch + 1
            progress.update(done, host["loss"], patches_s, epoch)
            if is_main and (done % config.log_every == 0 or done == total_steps):
                rec = {"train/loss": host["loss"], "train/lr": host["lr"], "train/grad_norm": host["grad_norm"],
                       "train/patches_per_s": patches_s, "epoch": epoch}
                jsonl.write(done, rec)
                tb.scalars(done, {k: v for k, v in rec.items() if k != "epoch"})
            if on_step is not None:
                on_step(done, host)
            if done % steps_per_epoch == 0:
                epoch = done // steps_per_epoch
                if is_main:
                    jsonl.write(done, {"train/epoch_loss": float(np.mean(epoch_losses)), "epoch": epoch})
                epoch_losses.clear()
                if data.val_names and (epoch % config.eval_every == 0 or epoch == config.epochs):
                    with_hd95 = bool(config.get("eval_hd95_every_eval", True))
                    val, per_case = evaluate(state, with_hd95)
                    if with_hd95:
                        last_eval = (done, val, per_case)
                    score = val[task.select_metric]
                    improved = score > meta["best_score"]  # strictly greater, as the reference
                    if improved:
                        meta = meta | {"best_score": score, "best_step": done, "best_epoch": epoch, "best_val": val}
                    if is_main:
                        jsonl.write(done, {f"val/{k}": v for k, v in val.items()} | {"epoch": epoch})
                        tb.scalars(done, {f"val/{k}": v for k, v in val.items() if math.isfinite(v)})
                        logging.info("epoch %d val %s%s", epoch, _fmt(val, data.class_names),
                                     " (best)" if improved else "")
                    save(done, score if improved else checkpoint.NOT_BEST)
                    continue
            every = config.get("checkpoint_every_steps") or 0
            if every and done % every == 0:
                save(done)
        final = stopped_at if stopped_at is not None else total_steps
        save(final)
    finally:
        progress.close()
        mngr.wait_until_finished()
        train_iter.close()
    if stopped_at is not None:
        mngr.close()
        if tb is not None:
            tb.close()
        return {"stopped_at": stopped_at}

    summary = _final_report(config, workdir, mngr, meta, data, state, evaluate, last_eval)
    mngr.close()
    if tb is not None:
        tb.close()
    return summary


def _fmt(val: dict, class_names) -> str:
    parts = [f"dice {val['dice']:.4f}"] + [f"{c} {val[f'dice/{c}']:.4f}" for c in class_names]
    if "hd95" in val:
        parts.append(f"hd95 {val['hd95']:.2f} mm")
    return " ".join(parts)


def _final_report(config, workdir, mngr, meta, data, last_state, evaluate, last_eval) -> dict:
    """Evaluates the best-by-validation checkpoint (with HD95) and writes summary.json + per-case metrics.

    When the best checkpoint is the one this process just evaluated with HD95, those numbers are reused.
    """
    best = meta.get("best_step")
    rows, per_case = {}, {}
    if best is not None and last_eval is not None and last_eval[0] == best:
        state, label = last_state, f"best validation dice (epoch {meta['best_epoch']}, step {best})"
        rows["val"], per_case = last_eval[1], last_eval[2]
    elif best is not None:
        state, _, _ = checkpoint.restore(mngr, best, checkpoint.abstract_like(last_state, last_state.step.sharding))
        label = f"best validation dice (epoch {meta['best_epoch']}, step {best})"
    else:
        state, label = last_state, "last step (no validation cases)"
    if data.val_names and not rows:
        rows["val"], per_case = evaluate(state, True)
    protocol = "selected and reported on validation (the reference protocol, §6; no held-out test split)"
    summary = {"checkpoint": label, "protocol": protocol, "steps": int(jax.device_get(last_state.step)),
               "epochs": config.epochs, "dataset": config.dataset, "split_file": str(data.split_path),
               "class_names": list(data.class_names), "metrics": rows}
    if jax.process_index() == 0:
        (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        (workdir / PER_CASE_FILE).write_text(json.dumps(per_case, indent=1) + "\n")
        if rows:
            v = rows["val"]
            head = "split     n  " + " ".join(f"{c:>8}" for c in ("mean", *data.class_names)) + "   HD95mm"
            dice = " ".join(f"{x:>8.4f}" for x in (v["dice"], *(v[f"dice/{c}"] for c in data.class_names)))
            print(f"LGMSNet 3D on {config.dataset}: {label}; {protocol}\n{head}\n"
                  f"val   {v['num_cases']:>3}  {dice}   {v.get('hd95', float('nan')):.2f}\n"
                  f"saved to {workdir / SUMMARY_FILE}", flush=True)
    return summary
