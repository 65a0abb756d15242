"""A progress bar (tqdm when a terminal is attached) that degrades to periodic absl log lines."""
from __future__ import annotations

import os
import sys
import time

from absl import logging


class Progress:
    """Shows step, loss and examples/s.

    Args:
      total: total steps of the run.
      initial: steps already done (resume).
      enabled: False on processes other than 0.
      log_every: log-line period when there is no terminal.
      unit: what the examples are ("img" in 2D, "patches" in 3D).
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, log_every: int = 50, unit: str = "img"):
        self.total, self.enabled, self.log_every, self.unit = total, enabled, log_every, unit
        self._bar = None
        self._t0, self._n0 = time.perf_counter(), initial
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step")
            except ImportError:
                self._bar = None

    def update(self, step: int, loss: float, images_per_s: float, epoch: int) -> None:
        """Called once per finished step (1-based `step`)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix({"epoch": epoch, "loss": f"{loss:.4f}", f"{self.unit}/s": f"{images_per_s:.1f}"},
                                  refresh=False)
        elif step % self.log_every == 0 or step == self.total:
            logging.info("step %d/%d epoch %d loss %.4f %.1f %s/s", step, self.total, epoch, loss, images_per_s,
                         self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# Package folders (not machine paths) whose INFO records are dropped: matched against each record's source file.
_CHATTY_PACKAGES = tuple(os.sep + os.path.join(*parts) + os.sep for parts in (("orbax",), ("grain",), ("jax", "_src")))


class QuietLibraries:
    """absl log filter: drops INFO records of chatty libraries (Orbax logs every save/restore) but keeps warnings.

    Command-line entry points install it with `logging.getLogger("absl").addFilter(QuietLibraries())`.
    """

    def filter(self, record) -> bool:
        return record.levelno > 20 or not any(p in record.pathname for p in _CHATTY_PACKAGES)
