"""Early stops with a checkpoint: the invocation's time budget (`config.max_run_seconds`), SIGTERM (a scheduler's
preemption or time-limit notice, `kill`, `docker stop`) and a first Ctrl-C (SIGINT; a second one interrupts at once),
decided at the same step on every process.

A multi-process run must stop at one step everywhere: a process that saves while another runs a train step would
wait in different collectives forever. So with several processes the stop is agreed every `sync_every` steps (one
small all-gather), and a stop wanted by any process stops them all there.
"""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
from absl import logging
from jax.experimental import multihost_utils

SYNC_EVERY = 10  # steps between multi-process agreements (a SIGTERM grace period is tens of seconds)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Reason codes, agreed as a max over processes: 0 go on, 1 time budget, then one per stop signal.
_CODES = {signal.SIGTERM: 2, signal.SIGINT: 3}
_SIGNAL_REASONS = {code: f"{sig.name} received" for sig, code in _CODES.items()}


class StopRequests:
    """Holds the SIGTERM and SIGINT handlers between `install()` and `restore()` (or inside a `with` block).

    Args:
      max_seconds: time budget of this invocation, counted from construction (0: none).
      process_count: processes of the run (1: decide locally at every step, no communication).
      sync_every: multi-process runs agree on stopping at steps divisible by this.
    """

    def __init__(self, max_seconds: float = 0.0, *, process_count: int = 1, sync_every: int = SYNC_EVERY):
        self.t0 = time.monotonic()
        self.max_seconds = float(max_seconds or 0.0)
        self.process_count = process_count
        self.sync_every = sync_every
        self.signalled: signal.Signals | None = None  # the first stop signal received
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> None:
        """Catches the stop signals from now on (only possible in the main thread; elsewhere only the time budget
        applies)."""
        if not self._previous and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        """Puts the previous handlers back."""
        for sig, previous in self._previous.items():
            # None: the previous handler was not installed from Python; the default is the closest we can restore.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "StopRequests":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _on_signal(self, signum, frame) -> None:
        del frame
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.signalled == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the checkpoint
        if self.signalled is None:
            self.signalled = sig
        logging.warning("%s received: stopping at the next step boundary with a checkpoint%s", sig.name,
                        " (Ctrl-C again to stop at once without one)" if sig == signal.SIGINT else "")

    def _local(self, step: int, start: int) -> int:
        if self.signalled is not None:
            return _CODES[self.signalled]
        if self.max_seconds and step > start and time.monotonic() - self.t0 > self.max_seconds:
            return 1  # at least one step per invocation, so a too-small budget still makes progress
        return 0

    def reason(self, step: int, start: int) -> str | None:
        """Why the run stops before training step `step`, for the log (None: go on); the same on every process.

        Args:
          step: the step about to run (0-based count of steps done).
          start: the step this invocation started (or resumed) at.
        """
        code = local = self._local(step, start)
        if self.process_count > 1:
            if step % self.sync_every:
                return None
            code = int(np.max(multihost_utils.process_allgather(np.int32(local))))
        if code == 0:
            return None
        what = _SIGNAL_REASONS.get(code, f"config.max_run_seconds={self.max_seconds:g} reached")
        return what if code == local else f"{what} by another process"
