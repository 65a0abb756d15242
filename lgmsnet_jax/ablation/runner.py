"""The grid runner: every structural setting in turn, its numeric members trained as one ensemble (one compile).

Layout: <workdir>/ablation.json, <workdir>/<setting>/config.json, <workdir>/<setting>/<member>/{checkpoints/,
metrics.jsonl, result.json}, <workdir>/summary.{csv,md} and summary_<metric>.png. A member with result.json is
finished and never trained again; a member with checkpoints resumes from its latest one.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from lgmsnet_jax import xla_options
from lgmsnet_jax.ablation import ensemble, grid as grid_lib, report
from lgmsnet_jax.models import baselines as _baselines  # noqa: F401  (registers U-Net, TinyU-Net, CMUNeXt)
from lgmsnet_jax.models import count_params
from lgmsnet_jax.training import builders, checkpoint, loop, metrics as metrics_lib, optim, tasks, writers

ABLATION_FILE = "ablation.json"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def resolve_base(ablation: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The base training config with the grid-wide `base_overrides` applied (unset placeholders are skipped)."""
    spec = ablation.base_config
    root = None if pathlib.Path(spec.partition(":")[0]).exists() else REPO_ROOT
    base = grid_lib.load_config_file(spec, root)
    overrides = {k: v for k, v in grid_lib.flatten(ablation.get("base_overrides") or {}).items() if v is not None}
    base = grid_lib.apply_overrides(base, overrides, where="base_overrides")
    if base.get("batchnorm", "global") != "global":
        raise ValueError(f"batchnorm={base.batchnorm!r}: grid members train on one device each, so only 'global' "
                         "applies (per-device BatchNorm is for data-parallel train.py runs)")
    return base


def setting_config(base: ml_collections.ConfigDict, setting: grid_lib.Setting) -> ml_collections.ConfigDict:
    """Base config with the setting's structural overrides; the data split is pinned to the base seed."""
    config = grid_lib.apply_overrides(base, setting.overrides, where=f"settings.{setting.name}")
    # Members vary the training seed only: a seed-derived split (non-reference datasets) must be the same for all.
    config.split_seed = base.get("split_seed", base.seed)
    return builders.fix_config_types(config)


def member_config(config: ml_collections.ConfigDict, member: grid_lib.Member) -> ml_collections.ConfigDict:
    """The config of the separate run that `member` reproduces (seed and lr set; loss weights are not config keys)."""
    out = ml_collections.ConfigDict(config.to_dict())
    if "seed" in member.values:
        out.seed = int(member.values["seed"])
    if "optim.lr" in member.values:
        out.optim.lr = float(member.values["optim.lr"])
    return builders.fix_config_types(out)


def _loss_weights(member: grid_lib.Member) -> tuple[float, float]:
    return (float(member.values.get("loss.bce_weight", 0.5)), float(member.values.get("loss.dice_weight", 1.0)))


def write_result(path: pathlib.Path, result: dict[str, Any]) -> None:
    """Writes result.json atomically (a crash never leaves a half-written 'finished' marker)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


class _Member:
    """Host-side bookkeeping of one member while its group trains."""

    def __init__(self, member: grid_lib.Member, config, directory: pathlib.Path, keep_best: bool):
        self.member, self.config, self.dir = member, config, directory
        self.meta = {"best_score": checkpoint.NOT_BEST, "best_step": None, "best_epoch": None, "best_val": None,
                     "last_val": None, "diverged_at": None}
        self.dir.mkdir(parents=True, exist_ok=True)
        if keep_best:  # a test split is evaluated at the end with the best-on-validation weights
            self.mngr = checkpoint.make_manager(self.dir)
        else:  # only the resume point: the grid's disk use stays at one state per member
            self.mngr = ocp.CheckpointManager((self.dir / checkpoint.CKPT_DIR).absolute(),
                                              options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
        self.jsonl = writers.JsonlWriter(self.dir / "metrics.jsonl")
        self.iterator = None

    @property
    def finished(self) -> bool:
        return (self.dir / report.RESULT_FILE).exists()


def _epoch_of(step: int, steps_per_epoch: int) -> int:
    return (step - 1) // steps_per_epoch + 1


def train_setting(config, setting: grid_lib.Setting, members: Sequence[grid_lib.Member], setting_dir: pathlib.Path,
                  *, use_loss_weights: bool, deadline: float | None = None, stop_after_steps: int | None = None,
                  devices=None, on_step: Callable[[int, np.ndarray], None] | None = None,
                  member_loop: str = ensemble.DEFAULT_MEMBER_LOOP) -> str:
    """Trains the unfinished `members` of one setting as ensembles (one per resume step) to the end.

    Args:
      config: the setting's config (`setting_config`).
      setting: the setting (for names in results).
      members: all members of the grid; finished ones are skipped.
      setting_dir: <workdir>/<setting>.
      use_loss_weights: the grid varies loss weights (swap in the weighted loss).
      deadline: time.monotonic() value after which no new epoch starts (checkpoint and return "interrupted").
      stop_after_steps: train at most this many steps per group now (tests), then checkpoint and return.
      devices: devices for the member mesh (default all).
      on_step: test hook on_step(step, per-member losses (M,)) after each step.
      member_loop: "vmap" or "map" (see `ensemble.make_steps`).

    Returns:
      "done" or "interrupted".
    """
    import data_pipelines as dp

    if jax.process_count() > 1:
        raise NotImplementedError("ablation ensembles run in one process (spread members over its devices)")
    keep_best = config.splits.get("test") is not None
    book = [_Member(m, member_config(config, m), setting_dir / m.name, keep_best) for m in members]
    todo = [b for b in book if not b.finished]
    if not todo:
        return "done"
    task = tasks.get_task(config.task)
    if use_loss_weights:
        task = ensemble.ensemble_task(task)
    sources = builders.load_sources(config)
    steps_per_epoch = dp.steps_per_epoch(len(sources["train"]), config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    o = config.optim
    unit = optim.build_schedule(o.schedule, lr=1.0, steps_per_epoch=steps_per_epoch, epochs=config.epochs,
                                power=o.get("power", 0.9), warmup_epochs=o.get("warmup_epochs", 50))

    def tx_of(schedule):
        return optim.build_optimizer(o.name, schedule, momentum=o.get("momentum", 0.9), weight_decay=o.weight_decay)

    # Fresh states exactly as a separate run builds them (model seed, state key = member seed).
    states, graphdef, params = [], None, None
    for b in todo:
        model = builders.build_model(b.config)
        params = count_params(model)
        graphdef, st = ensemble.init_member(model, ensemble.lr_scaled(tx_of, unit, b.config.optim.lr), b.config.seed)
        b.iterator = iter(dp.train_dataset(sources["train"], seed=b.config.seed, batch_size=config.batch_size,
                                           image_size=tuple(config.image_size), augment=config.augment,
                                           normalize=config.normalize, worker_count=config.num_workers))
        latest = b.mngr.latest_step()
        if latest is not None:
            abstract = checkpoint.abstract_like(st, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
            st, b.meta, _ = checkpoint.restore(b.mngr, latest, abstract, data_iter=b.iterator)
            b.jsonl.truncate_after(latest)
        states.append(st)
    starts = [int(st.step) for st in states]
    status = "done"
    for start in sorted(set(starts)):
        group = [i for i, s in enumerate(starts) if s == start]
        status = _train_group(config, [todo[i] for i in group], [states[i] for i in group], graphdef, task,
                               tx_of, unit, sources, start, total_steps, steps_per_epoch, setting, params,
                               use_loss_weights=use_loss_weights, deadline=deadline,
                               stop_after_steps=stop_after_steps, devices=devices, on_step=on_step,
                               member_loop=member_loop)
        if status == "interrupted":
            break
    for b in todo:
        b.mngr.wait_until_finished()
        b.mngr.close()
        if b.iterator is not None and hasattr(b.iterator, "close"):
            b.iterator.close()
    return status


def _train_group(config, group: list[_Member], states: list, graphdef, task, tx_of, unit, sources, start: int,
                 total_steps: int, steps_per_epoch: int, setting: grid_lib.Setting, params: int, *,
                 use_loss_weights: bool, deadline, stop_after_steps, devices, on_step, member_loop) -> str:
    import data_pipelines as dp

    n = len(group)
    mesh = ensemble.member_mesh(n, devices)
    padded = ensemble.padded_size(n, mesh)
    pad = list(range(n)) + [n - 1] * (padded - n)  # padding members repeat the last one; results unused
    compiler_options = xla_options.training_for(config)
    steps = ensemble.make_steps(graphdef, task=task, tx=ensemble.lr_scaled(tx_of, unit, 1.0), unit_schedule=unit,
                                mesh=mesh, compiler_options=compiler_options, member_loop=member_loop)
    state = ensemble.put_members(ensemble.stack([states[i] for i in pad]), steps)
    weights = [_loss_weights(group[i].member) for i in pad]
    eval_batch = config.get("eval_batch_size") or config.batch_size
    logging.info("setting %s: members %s from step %d of %d (%d devices, %d padded members)", setting.name,
                 [b.member.name for b in group], start, total_steps, mesh.size, padded - n)

    def evaluate(st, src) -> list[dict]:
        sums = None
        for batch in dp.eval_dataset(src, batch_size=eval_batch, image_size=tuple(config.image_size),
                                     normalize=config.normalize):
            s = steps.evaluate(st, ensemble.put_shared({k: batch[k] for k in loop.EVAL_KEYS}, steps))
            sums = s if sums is None else jax.tree.map(lambda a, b: a + b, sums, s)
        host = jax.device_get(sums)
        return [metrics_lib.finalize_means({k: v[i] for k, v in host.items()}) for i in range(n)]

    def save(step: int, scores: Sequence[float | None]) -> None:
        for i, b in enumerate(group):
            if b.meta["diverged_at"] is not None or step in b.mngr.all_steps():
                continue
            metrics = None if scores[i] is None else {"select": scores[i]}
            checkpoint.save(b.mngr, step, ensemble.unstack(state, i), data_iter=b.iterator,
                            config_dict=b.config.to_dict(), meta=b.meta, metrics=metrics)

    t0, epoch_t0, epoch_time = time.monotonic(), time.monotonic(), None
    step = start
    for step in range(start, total_steps):
        if step % steps_per_epoch == 0 and step > start:
            now = time.monotonic()
            epoch_time, epoch_t0 = now - epoch_t0, now
            if deadline is not None and now + epoch_time > deadline:
                save(step, [None] * n)
                return "interrupted"
        if stop_after_steps is not None and step - start >= stop_after_steps:
            save(step, [None] * n)
            return "interrupted"
        rows = [next(group[i].iterator) for i in range(n)]
        batch = {k: np.stack([rows[i][k] for i in pad]) for k in loop.TRAIN_KEYS}
        if use_loss_weights:
            for j, key in enumerate(ensemble.LOSS_WEIGHT_KEYS):
                batch[key] = np.stack([np.full((config.batch_size,), weights[i][j], np.float32) for i in pad])
        state, m = steps.train(state, ensemble.put_members(batch, steps))
        done = step + 1
        if on_step is not None or done % config.log_every == 0 or done % steps_per_epoch == 0:
            host = {k: np.asarray(v)[:n] for k, v in jax.device_get(m).items()}
            if on_step is not None:
                on_step(done, host["loss"])
            for i, b in enumerate(group):
                if b.meta["diverged_at"] is None and not all(math.isfinite(host[k][i]) for k in
                                                             ("loss", "grad_norm", "param_norm")):
                    b.meta["diverged_at"] = done  # keeps its best-so-far result; the others train on
                    logging.warning("member %s/%s diverged at step %d (loss %s)", setting.name, b.member.name,
                                    done, host["loss"][i])
                if done % config.log_every == 0:
                    b.jsonl.write(done, {"train/loss": float(host["loss"][i]), "train/lr": float(host["lr"][i]),
                                         "epoch": _epoch_of(done, steps_per_epoch)})
        if done % steps_per_epoch:
            continue
        epoch = done // steps_per_epoch
        if sources["val"] is None or not (epoch % config.eval_every == 0 or epoch == config.epochs):
            continue
        vals, scores = evaluate(state, sources["val"]), []
        for i, b in enumerate(group):
            score = vals[i][task.select_metric]
            improved = b.meta["diverged_at"] is None and score > b.meta["best_score"]  # strictly, as the reference
            if improved:
                b.meta.update(best_score=score, best_step=done, best_epoch=epoch, best_val=vals[i])
            b.meta["last_val"] = vals[i]
            b.jsonl.write(done, {f"val/{k}": v for k, v in vals[i].items()} | {"epoch": epoch})
            scores.append(score if improved else checkpoint.NOT_BEST)
        logging.info("setting %s epoch %d/%d val %s: %s (%.1f s since start, last epoch %s s)", setting.name, epoch,
                     config.epochs, task.select_metric, " ".join(f"{v[task.select_metric]:.4f}" for v in vals),
                     time.monotonic() - t0, "-" if epoch_time is None else f"{epoch_time:.1f}")
        save(done, scores)
    test_rows = _test_best(config, group, state, steps, evaluate, sources) if sources.get("test") else None
    for i, b in enumerate(group):
        best = b.meta["best_val"] or b.meta["last_val"] or {}
        write_result(b.dir / report.RESULT_FILE, {
            "setting": setting.name, "member": b.member.name, "values": b.member.values,
            "overrides": {k: v for k, v in setting.overrides.items()}, "params": params,
            "metrics": (test_rows[i] if test_rows else best), "val_best": b.meta["best_val"],
            "val_last": b.meta["last_val"], "best_epoch": b.meta["best_epoch"], "diverged_at": b.meta["diverged_at"],
            "protocol": ("selected on validation, reported on test" if test_rows else
                         "best validation epoch, reported on validation (the reference protocol)"),
            "steps": total_steps, "epochs": config.epochs, "dataset": config.dataset, "fold": config.get("fold"),
            "train_seconds_this_invocation": round(time.monotonic() - t0, 1)})
    return "done"


def _test_best(config, group, state, steps, evaluate, sources) -> list[dict]:
    """Evaluates every member's best-validation checkpoint (last state if none) on the test split."""
    restored = []
    for i, b in enumerate(group):
        b.mngr.wait_until_finished()
        mine = ensemble.unstack(state, i)
        best = checkpoint.best_step(b.mngr)
        if best is not None:
            abstract = checkpoint.abstract_like(mine, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
            mine, _, _ = checkpoint.restore(b.mngr, best, abstract)
        restored.append(mine)
    n = len(group)
    pad = list(range(n)) + [n - 1] * (ensemble.padded_size(n, steps.mesh) - n)
    stacked = ensemble.put_members(ensemble.stack([restored[i] for i in pad]), steps)
    return evaluate(stacked, sources["test"])


def run_grid(ablation: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
             only: Sequence[str] | None = None, time_budget_s: float | None = None,
             stop_after_steps: int | None = None, force_config: bool = False, devices=None,
             on_step: Callable[[str, int, np.ndarray], None] | None = None) -> dict[str, str]:
    """Runs (or resumes) an ablation grid and refreshes the summary table and plots.

    Args:
      ablation: the ablation config (configs/ablations/*.py).
      workdir: grid folder (created).
      only: setting names to run now (others untouched), e.g. to spread settings over processes.
      time_budget_s: stop starting new epochs after this many seconds (members checkpoint; rerun to continue).
      stop_after_steps: per setting group, train at most this many steps now (tests).
      force_config: continue settings whose saved config differs.
      devices: devices for the member mesh.
      on_step: test hook on_step(setting, step, per-member losses).

    Returns:
      {setting name: "done" | "interrupted" | "skipped"}.
    """
    workdir = pathlib.Path(workdir)
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    grid = grid_lib.parse_grid(ablation)
    names = [s.name for s in grid.settings]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ValueError(f"--only {unknown}: no such setting; the grid has {names}")
    base = resolve_base(ablation)
    builders.check_data_dir(base)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / ABLATION_FILE).write_text(json.dumps(checkpoint.config_json(ablation.to_dict()), indent=2) + "\n")
    use_loss_weights = any(a.startswith("loss.") for a in grid.axes)
    out = {}
    for setting in grid.settings:
        if only and setting.name not in only:
            out[setting.name] = "skipped"
            continue
        finished = all((workdir / setting.name / m.name / report.RESULT_FILE).exists() for m in grid.members)
        # A new setting compiles first: do not start one that cannot reach its first checkpoint in time.
        if not finished and deadline is not None and \
                time.monotonic() > deadline - ablation.get("min_setting_start_s", 0.0):
            out[setting.name] = "interrupted"
            continue
        config = setting_config(base, setting)
        sdir = workdir / setting.name
        sdir.mkdir(exist_ok=True)
        with checkpoint.WorkdirLock(sdir):
            checkpoint.check_and_write_config(sdir, config.to_dict(), force=force_config)
            hook = None if on_step is None else (lambda step, losses, name=setting.name: on_step(name, step, losses))
            loop_kind = ablation.get("member_loop", ensemble.DEFAULT_MEMBER_LOOP)
            out[setting.name] = train_setting(config, setting, grid.members, sdir, use_loss_weights=use_loss_weights,
                                              deadline=deadline, stop_after_steps=stop_after_steps, devices=devices,
                                              on_step=hook, member_loop=loop_kind)
        report.write_report(workdir, tuple(ablation.get("report_metrics", ("iou", "f1"))), order=names,
                            title=ablation.get("title", ""), keep={(s.name, m.name) for s in grid.settings
                                                                     for m in grid.members})
    return out
