"""Grain worker processes and stop signals (data_pipelines/workers.py): only the parent's SIGTERM ends a worker, and
a worker ends with its parent."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from data_pipelines import workers

pytestmark = pytest.mark.skipif(not workers.supported(), reason="needs signal.sigtimedwait (Linux)")


def _worker(ready):
    workers.ignore_foreign_stop_signals(0, 1)
    ready.set()
    while True:
        time.sleep(0.05)


def _wait_dead(proc, timeout=10.0):
    proc.join(timeout)
    return not proc.is_alive()


def test_stop_signals_from_others_are_ignored_and_the_parents_sigterm_ends_the_worker():
    ctx = multiprocessing.get_context("spawn")  # as Grain starts its workers
    ready = ctx.Event()
    proc = ctx.Process(target=_worker, args=(ready,), daemon=True)
    with workers.stop_signals_blocked():  # as the pipelines start their workers
        proc.start()
    try:
        assert ready.wait(60)
        # A scheduler, `kill -TERM -- -PGID` or a terminal's Ctrl-C signal from outside the training process: ignored.
        subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)
        subprocess.run(["kill", "-INT", str(proc.pid)], check=True)
        time.sleep(1.0)
        assert proc.is_alive()
        os.kill(proc.pid, signal.SIGINT)  # the parent's SIGINT too: the parent handles Ctrl-C and stops its workers
        time.sleep(0.5)
        assert proc.is_alive()
        # multiprocessing's terminate() (the parent's SIGTERM, e.g. at interpreter exit) still ends it.
        proc.terminate()
        assert _wait_dead(proc)
        assert proc.exitcode == 128 + signal.SIGTERM
    finally:
        if proc.is_alive():
            proc.kill()


PARENT = """
import multiprocessing, sys, time
sys.path.insert(0, {root!r})
from data_pipelines import workers
from tests.data_pipelines.test_workers import _worker
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_worker, args=(ready,), daemon=True)
    with workers.stop_signals_blocked():
        p.start()
    ready.wait(60)
    print(p.pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper has ended
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_ends_when_its_parent_is_killed_outright(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(root=root))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(parent.stdout.readline())
        assert _alive(worker_pid)
        parent.kill()  # SIGKILL: no atexit, no terminate() of its children
        parent.wait(30)
        deadline = time.monotonic() + 10 * workers.PARENT_POLL_S + 5
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
