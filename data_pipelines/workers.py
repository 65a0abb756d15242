"""Grain worker processes that leave SIGTERM and Ctrl-C to the training process, and exit with it.

A stop request often reaches every process of a job: Slurm's `scancel` and time limit signal all of the job's
processes, `kill -TERM -- -PGID` a whole process group, and Ctrl-C in a terminal sends SIGINT to its foreground
process group. The training process catches both and checkpoints at the next step (`lgmsnet_jax/training/
stopping.py`), but it needs its input workers to reach that step. Killed by the same signal, they made the next batch
raise Grain's "Worker process was terminated unexpectedly" and the run died without its checkpoint.

How: a worker starts with the signal mask of the thread that spawns it, so the pipelines start their workers inside
`stop_signals_blocked()`. SIGTERM and SIGINT then stay blocked in every thread of the worker, from its first
instruction (a signal sent while it starts waits, pending) and in the threads its imports start.
`ignore_foreign_stop_signals`, Grain's `worker_init_fn`, waits for them in a thread that reads the sender: a SIGTERM
from the parent (multiprocessing's `terminate`, e.g. at interpreter exit) ends the worker as before; anything else is
ignored. The same thread ends the worker once its parent is gone, so a worker never outlives a training process that
was killed outright. Grain's own shutdown (an event, then SIGKILL) is unaffected. A worker started without the block
keeps the default actions, since a thread of it may receive a signal before anyone can read the sender. Needs
`signal.sigtimedwait` (Linux); elsewhere workers keep the default behaviour.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing import resource_tracker

PARENT_POLL_S = 1.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def supported() -> bool:
    """Whether this platform can tell who sent a signal (sigtimedwait with si_pid)."""
    return hasattr(signal, "sigtimedwait") and hasattr(signal, "pthread_sigmask")


def _watch(parent: int) -> None:
    while True:
        info = signal.sigtimedwait(STOP_SIGNALS, PARENT_POLL_S)
        from_parent = info is not None and info.si_signo == signal.SIGTERM and info.si_pid == parent
        if from_parent or os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)  # what the default action would do; Grain has nothing to flush here


def ignore_foreign_stop_signals(worker_index: int = 0, worker_count: int = 1) -> None:
    """Grain `worker_init_fn`: only a SIGTERM from the parent ends this worker, or the parent's end.

    Args:
      worker_index, worker_count: passed by Grain; unused.
    """
    del worker_index, worker_count
    if not supported() or not STOP_SIGNALS <= signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return  # not started inside stop_signals_blocked(): some thread may take a signal with its default action
    threading.Thread(target=_watch, args=(os.getppid(),), name="stop-signal-watch", daemon=True).start()


@functools.cache
def _start_resource_tracker() -> None:
    # Spawned workers need multiprocessing's resource tracker, and the thread that first starts it ends with SIGINT
    # and SIGTERM unblocked (`ResourceTracker.ensure_running`), which would undo a block in Grain's thread. Once per
    # process: each later call would probe the tracker with a write.
    resource_tracker.ensure_running()


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGTERM and SIGINT blocked in the calling thread for the duration, so processes and threads started inside
    inherit them blocked. The process still receives them afterwards (or in another thread): a blocked signal stays
    pending."""
    if not supported():
        yield
        return
    _start_resource_tracker()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
