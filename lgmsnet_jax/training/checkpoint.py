"""Workdir guards (lock, config check) and Orbax checkpoints: latest + best, with data-iterator state and config.

Layout: <workdir>/config.json (resolved config), <workdir>/.lock (pid + host while a run is active, touched every
minute), <workdir>/checkpoints/<step>/{state_packed, state_layout, data_iter, config, meta, metrics}.

The train state is written packed: one buffer per dtype (`lgmsnet_jax/packing.py`) plus `state_layout`, a JSON table
of every leaf's path, shape and dtype in packing order. Orbax handles each array of a tree on its own; for the 2D
TrainState's 559 arrays a save cost ~0.1 s of blocking work and ~0.9 s in the background on the CI box, against
~0.01 s and ~0.07 s packed, and on an H200 the background part slowed the next Kvasir epoch by 16-38 %
(BENCHMARKS.md, session 11). Checkpoints written before this (a `state` item holding the tree) still restore.
"""
from __future__ import annotations

import difflib
import json
import os
import pathlib
import socket
import threading
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from lgmsnet_jax import packing
from lgmsnet_jax.training.state import leaf_paths

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
CKPT_DIR = "checkpoints"
# Keys that may change between invocations of one run: where the data lives is not part of the experiment.
RESUME_MUTABLE_KEYS = ("data_dir", "cache_dir", "max_run_seconds", "picture_every_epochs", "log_every",
                       "resume_data", "eval_cache_gib", "num_workers", "checkpoint_every_epochs")
# Top-level config keys added after runs had been saved, with the value those runs used.
LATER_KEY_DEFAULTS = {"batchnorm": "global"}
# "select" metric of an evaluated checkpoint that did not improve (validation scores are >= 0).
NOT_BEST = -1.0
# Checkpoint items holding the train state: packed buffers and their table of contents; the tree (older runs).
PACKED_ITEM, LAYOUT_ITEM, TREE_ITEM = "state_packed", "state_layout", "state"


class WorkdirError(RuntimeError):
    """The workdir is in use or belongs to another configuration."""


def config_json(config_dict: dict) -> dict:
    """A config dict as it reads back from JSON (tuples become lists), for saving and comparing."""
    return json.loads(json.dumps(config_dict, sort_keys=True, default=str))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """Exclusive lock file `<workdir>/.lock` holding {"pid", "host", "since"}, kept fresh by a heartbeat.

    While held, a daemon thread touches the file every `heartbeat_s` seconds. A lock from a dead process on this
    host is taken over with a warning. Any other lock (from another host, whose pid cannot be checked, or with a
    live pid here that may have been reused) is taken over only when its heartbeat is older than `stale_after_s`:
    its run was killed, e.g. a preempted job requeued on another node of a cluster with a shared filesystem. A
    live one raises WorkdirError naming it.
    """

    def __init__(self, workdir: str | os.PathLike, *, heartbeat_s: float = 60.0, stale_after_s: float = 600.0):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.held = False
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._stop: threading.Event | None = None

    def _stale(self, other: dict, me: dict) -> str | None:
        """Why the existing lock may be taken over, or None."""
        pid, host = int(other.get("pid", -1)), other.get("host")
        if host == me["host"] and pid > 0 and not _pid_alive(pid):
            return f"of dead process {pid}"
        try:  # another host, or a live pid here that may be a reused one (a restarted container)
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "that disappeared"
        if age > self.stale_after_s:
            return f"of pid {pid} on host {host}, whose heartbeat stopped {age:.0f} s ago"
        return None

    def acquire(self) -> "WorkdirLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    other = {}
                why = self._stale(other, me)
                if why is not None:
                    logging.warning("Taking over stale lock %s %s (since %s)", self.path, why, other.get("since"))
                    self.path.unlink(missing_ok=True)
                    continue
                raise WorkdirError(
                    f"{self.path.parent} is in use by another run (pid {other.get('pid', -1)} on host "
                    f"{other.get('host')}, since {other.get('since')}). Wait for it to finish or use another "
                    f"--workdir; a lock is taken over once its heartbeat is {self.stale_after_s:.0f} s old (or "
                    f"delete {self.path} if that run is gone).")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            self._stop = threading.Event()
            threading.Thread(target=self._beat, args=(self._stop,), name="workdir-lock-heartbeat",
                             daemon=True).start()
            return self
        raise WorkdirError(f"could not acquire {self.path}")

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # the workdir went away or is unreachable for a moment; the next beat retries
                pass

    def release(self) -> None:
        if self.held:
            self._stop.set()
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def config_diff(saved: dict, new: dict, ignore: tuple[str, ...] = RESUME_MUTABLE_KEYS) -> str:
    """Unified diff of two config dicts (JSON, sorted keys), ignoring top-level `ignore` keys; "" if equal."""
    # A run saved before a key existed compares as if it held that key's default.
    saved, new = LATER_KEY_DEFAULTS | saved, LATER_KEY_DEFAULTS | new
    a = json.dumps({k: v for k, v in saved.items() if k not in ignore}, indent=1, sort_keys=True).splitlines()
    b = json.dumps({k: v for k, v in new.items() if k not in ignore}, indent=1, sort_keys=True).splitlines()
    if a == b:
        return ""
    return "\n".join(difflib.unified_diff(a, b, "saved config.json", "this run", lineterm="", n=1))


def check_and_write_config(workdir: str | os.PathLike, config_dict: dict, *, force: bool = False) -> None:
    """Refuses a workdir with checkpoints whose saved config differs from this run's (unless `force`); writes it.

    Raises:
      WorkdirError: with the diff and how to override.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    new = config_json(config_dict)
    ckpt_dir = pathlib.Path(workdir) / CKPT_DIR
    has_checkpoints = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    # Without a checkpoint there is nothing to mix up (e.g. the first attempt stopped on a bad batch size).
    if path.exists() and has_checkpoints:
        diff = config_diff(json.loads(path.read_text()), new)
        if diff and not force:
            raise WorkdirError(
                f"{path.parent} holds a run with a different config; resuming it with this config would mix two "
                f"experiments. Use another --workdir, or pass --force_config to continue anyway.\n{diff}")
        if diff:
            logging.warning("Continuing %s with a changed config (--force_config):\n%s", path.parent, diff)
    path.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")


def make_manager(workdir: str | os.PathLike, select_metric: str = "select", create: bool = True
                 ) -> ocp.CheckpointManager:
    """CheckpointManager keeping the latest checkpoint and the best one by `metrics[select_metric]` (max).

    The loop stores metrics {"select": score} where score is the validation metric when it strictly improves on
    the best so far and NOT_BEST (-1) otherwise, so ties keep the earlier checkpoint as the reference does.
    """
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=1),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[select_metric], reverse=False, n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=lambda m: m[select_metric],
                                           best_mode="max", create=create)
    return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / CKPT_DIR, options=options)


def layout(tree: Any) -> list[list]:
    """[path, shape, dtype] of every leaf of `tree` (arrays or ShapeDtypeStructs), in packing order."""
    return [[path, [int(d) for d in np.shape(x)], str(x.dtype)] for path, x in leaf_paths(tree)]


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, data_iter: Any | None, config_dict: dict,
         meta: dict, metrics: dict | None = None) -> None:
    """Saves (asynchronously) state, Grain iterator state, config and run metadata at `step` (all processes)."""
    pack, _ = packing.jitted(packing.spec_of(state))
    items = {PACKED_ITEM: ocp.args.StandardSave(pack(state)),
             LAYOUT_ITEM: ocp.args.JsonSave({"leaves": layout(state)}),
             "config": ocp.args.JsonSave(config_json(config_dict)), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, *, data_iter: Any | None = None):
    """Restores (state, meta, config) at `step`; the iterator (if given) is restored in place.

    Args:
      mngr: the manager.
      step: checkpoint step.
      abstract_state: pytree of jax.ShapeDtypeStruct (with shardings) shaped like the saved state.
      data_iter: a fresh iterator of the same pipeline, or None to skip the data state.

    Returns:
      (state, meta dict, config dict).
    """
    items = {"meta": ocp.args.JsonRestore(), "config": ocp.args.JsonRestore()}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    if not (mngr.directory / str(step) / PACKED_ITEM).exists():  # written before packing
        items[TREE_ITEM] = ocp.args.StandardRestore(abstract_state)
        r = mngr.restore(step, args=ocp.args.Composite(**items))
        return r[TREE_ITEM], dict(r["meta"]), dict(r["config"])
    _check_layout(mngr, step, abstract_state)
    spec = packing.spec_of(abstract_state)
    sharding = getattr(jax.tree.leaves(abstract_state)[0], "sharding", None)
    abstract_packed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                   jax.eval_shape(spec.pack, abstract_state))
    items[PACKED_ITEM] = ocp.args.StandardRestore(abstract_packed)
    r = mngr.restore(step, args=ocp.args.Composite(**items))
    _, unpack = packing.jitted(spec, sharding)
    return unpack(r[PACKED_ITEM]), dict(r["meta"]), dict(r["config"])


def _check_layout(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
    """Refuses a packed checkpoint whose leaves differ from the state it is read into (before reading arrays)."""
    saved = mngr.restore(step, args=ocp.args.Composite(**{LAYOUT_ITEM: ocp.args.JsonRestore()}))[LAYOUT_ITEM]
    saved = [list(map(_tuple, leaf)) for leaf in saved["leaves"]]
    want = [list(map(_tuple, leaf)) for leaf in layout(abstract_state)]
    if saved == want:
        return
    diff = next((f"saved {a} vs expected {b}" for a, b in zip(saved, want) if a != b),
                f"{len(saved)} saved leaves vs {len(want)} expected")
    raise ValueError(f"checkpoint {mngr.directory / str(step)} holds a different train state than this "
                     f"model and optimizer ({diff}); was it written by another config?")


def _tuple(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


def best_step(mngr: ocp.CheckpointManager) -> int | None:
    """Step of the best evaluated checkpoint, or None before the first evaluation."""
    step = mngr.best_step()
    if step is None:
        return None
    m = mngr.metrics(step) if hasattr(mngr, "metrics") else None
    return step if m and m.get("select", NOT_BEST) > NOT_BEST else None


def restore_state_like(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """The train state saved at `step`, shaped and placed like `like` (a live state; one sharding for all leaves)."""
    return restore(mngr, step, abstract_like(like, like.step.sharding))[0]


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The run metadata (best score/step, process count, ...) stored with checkpoint `step`."""
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def restore_config(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The config JSON stored with checkpoint `step`."""
    return dict(mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


def abstract_like(tree: Any, sharding: Any = None) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves (optionally with one sharding for all) for StandardRestore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
