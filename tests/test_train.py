"""train.py end to end in subprocesses: demo, resume of a finished run, guards, 8 devices vs 1, two processes,
real Kvasir-SEG smoke. Smoke configs share shapes, so the persistent compile cache (tests/conftest.py) compiles
the narrow LGMSNet once per CI run.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lgmsnet_jax.training import stopping, writers

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Runs train.py with the tiny test net registered (tests/training/tiny_net.py), exactly as `python train.py ...`.
TINY_TRAIN = ("import runpy, sys; sys.path[:0] = ['tests/training', '.']; import tiny_net; "
              "sys.argv = ['train.py'] + sys.argv[1:]; runpy.run_path('train.py', run_name='__main__')")


def _env(**extra):
    env = dict(os.environ)
    env.update({"JAX_PLATFORMS": "cpu"}, **extra)
    env.pop("XLA_FLAGS", None)
    return env


def _train(args, timeout=300, tiny=False, **env):
    cmd = [sys.executable, "-c", TINY_TRAIN] if tiny else [sys.executable, "train.py"]
    return subprocess.run(cmd + list(args), cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_demo_trains_end_to_end_and_rerun_resumes_finished_run(tmp_path):
    wd = tmp_path / "demo"
    out = _ok(_train(["--config", "configs/demo.py:smoke", "--workdir", str(wd)]))
    assert "selected on validation, reported on test" in out.stdout
    records = writers.read_jsonl(wd / "metrics.jsonl")
    epoch_loss = [r["train/epoch_loss"] for r in records if "train/epoch_loss" in r]
    assert len(epoch_loss) == 3 and epoch_loss[-1] < epoch_loss[0], epoch_loss
    assert all(r["time/epoch_steps_s"] > 0 for r in records if "train/epoch_loss" in r)
    assert [r["step"] for r in records if "val/iou" in r] == [2, 4, 6]
    assert json.loads((wd / "config.json").read_text())["dataset"] == "synthetic"
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert 6 in steps and all(s in (2, 4, 6) for s in steps)
    summary = json.loads((wd / "summary.json").read_text())
    assert set(summary["metrics"]) == {"val", "test"} and 0.0 <= summary["metrics"]["test"]["iou"] <= 1.0
    assert "test_monitor" not in summary and not any(k.startswith("test/") for r in records for k in r)
    pngs = sorted((wd / "predictions").glob("val_epoch*.png"))
    assert [p.name for p in pngs] == ["val_epoch0001.png", "val_epoch0002.png", "val_epoch0003.png"]
    (event_file,) = (wd / "tb").glob("events.out.tfevents.*")
    events = writers.read_events(event_file)
    assert events[0]["file_version"] == "brain.Event:2"
    tb_loss = [(e["step"], e["scalars"]["train/loss"]) for e in events if "train/loss" in e["scalars"]]
    jl_loss = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    assert [s for s, _ in tb_loss] == [s for s, _ in jl_loss]
    np.testing.assert_allclose([v for _, v in tb_loss], [v for _, v in jl_loss], rtol=1e-6)
    assert any(e["images"].get("val/predictions", {}).get("png", b"")[:8] == b"\x89PNG\r\n\x1a\n" for e in events)

    # The same command again: nothing left to train; it restores the best checkpoint and reports again.
    again = _ok(_train(["--config", "configs/demo.py:smoke", "--workdir", str(wd)]))
    assert json.loads((wd / "summary.json").read_text()) == summary
    assert "Resuming from" in again.stderr
    assert writers.read_jsonl(wd / "metrics.jsonl") == records

    # A different config against this workdir is refused, with the diff, before anything runs.
    refused = _train(["--config", "configs/demo.py:smoke", "--workdir", str(wd), "--config.epochs=4"])
    assert refused.returncode == 2
    assert "different config" in refused.stderr and '"epochs": 4' in refused.stderr


def test_missing_data_stops_at_once_with_the_expected_layout(tmp_path):
    proc = _train(["--config", "configs/kvasir.py", "--workdir", str(tmp_path / "w"),
                   f"--config.data_dir={tmp_path / 'nowhere'}"], timeout=120)
    assert proc.returncode == 2
    assert "images/<stem>.jpg" in proc.stderr and "https://datasets.simula.no/kvasir-seg/" in proc.stderr
    assert not (tmp_path / "w").exists()


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in writers.read_jsonl(workdir / "metrics.jsonl") if "train/loss" in r}


TINY_ARGS = ["--config", "configs/demo.py", "--config.model_name=tiny_test_net", "--config.image_size=(16,16)",
             "--config.epochs=1", "--config.log_every=1", "--config.fast_compile=False"]


def _tiny_args(epochs: int) -> list[str]:
    """TINY_ARGS for a run of `epochs` epochs (4 steps each)."""
    return [a if a != "--config.epochs=1" else f"--config.epochs={epochs}" for a in TINY_ARGS]


def test_eight_devices_give_the_same_losses_as_one(tmp_path):
    # Global batch 8: one row per device on 8 devices; BatchNorm statistics stay global over the batch.
    one = _ok(_train(TINY_ARGS + ["--workdir", str(tmp_path / "one"), "--num_cpu_devices=1"], tiny=True))
    eight = _ok(_train(TINY_ARGS + ["--workdir", str(tmp_path / "eight"), "--num_cpu_devices=8"], tiny=True))
    assert "1 global devices" in one.stderr and "8 global devices" in eight.stderr
    l1, l8 = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    assert sorted(l1) == sorted(l8) == list(range(1, 5))  # 32 examples / 8 = 4 steps
    np.testing.assert_allclose([l8[s] for s in sorted(l8)], [l1[s] for s in sorted(l1)], atol=1e-5, rtol=0)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_run_matches_one_process_and_resumes_in_one_process(tmp_path):
    """2 processes (batch 2 each) train steps 1-2 and checkpoint; 1 process (batch 4) resumes at step 3. Every loss
    equals an uninterrupted 1-process run's: each step's global batch is the same whatever the process count."""
    port = _free_port()
    wd = tmp_path / "mp"
    cmd = [sys.executable, "-c", TINY_TRAIN] + TINY_ARGS + [
        "--workdir", str(wd), "--num_cpu_devices=2", f"--coordinator_address=localhost:{port}", "--num_processes=2",
        "--stop_after_steps=2"]
    procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, f"process exit {p.returncode}\n{se[-5000:]}"
    assert "process 0/2, 2 local / 4 global devices" in outs[0][1]
    assert sorted(_losses(wd)) == [1, 2]
    steps = [p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == ["2"]
    assert sorted(q.name for q in (wd / "checkpoints" / "2" / "data_iter").glob("process_*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

    restarted = tmp_path / "restarted"
    shutil.copytree(wd, restarted)
    ref = tmp_path / "ref"
    _ok(_train(TINY_ARGS + ["--workdir", str(ref), "--num_cpu_devices=2"], tiny=True))
    cont = _ok(_train(TINY_ARGS + ["--workdir", str(wd), "--num_cpu_devices=2"], tiny=True))
    assert "input stream from the step" in cont.stderr
    assert "selected on validation" in cont.stdout
    got, want = _losses(wd), _losses(ref)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)], atol=1e-5, rtol=0)
    # resume_data=restart: same model and step, a reseeded stream (other batches, so other losses).
    again = _ok(_train(TINY_ARGS + ["--workdir", str(restarted), "--num_cpu_devices=2",
                                    "--config.resume_data=restart"], tiny=True))
    assert "restarted data state" in again.stderr
    other = _losses(restarted)
    assert sorted(other) == [1, 2, 3, 4] and other[1] == got[1] and other[3] != got[3]


def test_kvasir_smoke_on_real_data(tmp_path, shared_dir):
    data = shared_dir / "data" / "Kvasir-SEG"
    if not data.is_dir():
        pytest.skip(f"{data} not found")
    wd = tmp_path / "kvasir"
    out = _ok(_train(["--config", "configs/kvasir.py:smoke", "--workdir", str(wd), f"--config.data_dir={data}",
                      f"--config.cache_dir={tmp_path / 'cache'}", "--config.epochs=3"], timeout=400))
    assert "LGMSNet on kvasir" in out.stdout
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["metrics"]["test"]["count"] == 4 and summary["metrics"]["val"]["count"] == 4
    # configs/kvasir.py scores test at every validation, as main_kvasir.py does, without selecting on it.
    records = writers.read_jsonl(wd / "metrics.jsonl")
    val = {r["epoch"]: r["val/iou"] for r in records if "val/iou" in r}
    test = {r["epoch"]: r["test/iou"] for r in records if "test/iou" in r}
    assert sorted(test) == sorted(val) and len(test) >= 2
    assert all(r["time/test_s"] > 0 for r in records if "test/iou" in r)
    best_val_epoch = max(sorted(val), key=lambda e: val[e])  # the first of ties, as strict > keeps it
    assert summary["checkpoint"].startswith(f"best validation iou (epoch {best_val_epoch},")
    assert summary["metrics"]["test"]["iou"] == pytest.approx(test[best_val_epoch], rel=1e-5, abs=1e-6)
    best_test_epoch = max(sorted(test), key=lambda e: test[e])
    assert summary["test_monitor"]["epoch"] == best_test_epoch
    assert summary["test_monitor"]["best_iou"] == pytest.approx(test[best_test_epoch], rel=1e-6)
    assert "monitoring only: best test IOU" in out.stdout
    losses = _losses(wd)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(losses.values())))


def test_dead_process_stops_the_run_and_rerun_resumes(tmp_path):
    """A process killed mid-run makes its peer stop (no hang); the same command then resumes from a checkpoint."""
    wd = tmp_path / "mpkill"
    args = _tiny_args(6)

    def launch(port):
        cmd = [sys.executable, "-c", TINY_TRAIN] + args + [
            "--workdir", str(wd), "--num_cpu_devices=2", f"--coordinator_address=localhost:{port}",
            "--num_processes=2", "--heartbeat_timeout_s=10", "--config.checkpoint_every_steps=2"]
        return [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(2)]

    procs = launch(_free_port())
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.isdigit() for p in (wd / "checkpoints").glob("*")):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint was written"
            time.sleep(0.2)
        procs[1].kill()
        procs[0].communicate(timeout=120)  # raises TimeoutExpired if the survivor hangs
        assert procs[0].returncode != 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    first = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    rerun = launch(_free_port())
    outs = [p.communicate(timeout=240) for p in rerun]
    assert [p.returncode for p in rerun] == [0, 0], outs[0][1][-3000:]
    assert "Resuming from" in outs[0][1], outs[0][1][-3000:]
    assert (wd / "summary.json").exists()
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] > first[-1]


def test_train_py_trains_a_baseline_from_the_config_argument(tmp_path):
    """`model=tinyunet` swaps LGMSNet for a registered baseline (its own keywords, narrow in demo/smoke configs)."""
    wd = tmp_path / "tiny"
    proc = _ok(_train(["--config", "configs/demo.py:model=tinyunet,smoke", "--workdir", str(wd)]))
    saved = json.loads((wd / "config.json").read_text())
    assert saved["model_name"] == "tinyunet" and saved["model"] == {"dims": [16, 16, 16, 16]}
    assert sorted(_losses(wd)) == [1, 2, 3, 4, 5, 6]
    assert "test" in proc.stdout and "tinyunet on synthetic" in proc.stdout
    assert json.loads((wd / "summary.json").read_text())["model"] == "tinyunet"
    bad = _train(["--config", "configs/demo.py:model=resnet", "--workdir", str(tmp_path / "bad")])
    assert bad.returncode != 0 and "model must be 'lgmsnet' or one of" in bad.stderr


def test_device_cached_validation_equals_streamed_validation(tmp_path):
    """Validation sets kept on the devices between epochs (eval_cache_gib) give the streamed pipeline's metrics."""
    args = _tiny_args(3) + ["--num_cpu_devices=2"]
    runs = {}
    for name, cache in (("cached", "4.0"), ("streamed", "0")):
        wd = tmp_path / name
        _ok(_train(args + ["--workdir", str(wd), f"--config.eval_cache_gib={cache}"], tiny=True))
        runs[name] = [r for r in writers.read_jsonl(wd / "metrics.jsonl") if "val/iou" in r]
    assert len(runs["cached"]) == 2  # demo validates every 2nd epoch and at the last
    for a, b in zip(runs["cached"], runs["streamed"]):
        assert {k: v for k, v in a.items() if not k.startswith("time/")} == {
            k: v for k, v in b.items() if not k.startswith("time/")}
        assert a["time/validate_s"] > 0 and a["time/checkpoint_s"] >= 0


def test_max_run_seconds_checkpoints_and_a_rerun_finishes(tmp_path):
    """A time-sliced 2D run stops after its budget (at least one step per invocation) with a checkpoint; the same
    command without the budget resumes and finishes."""
    wd = tmp_path / "sliced"
    args = TINY_ARGS + ["--workdir", str(wd), "--num_cpu_devices=2"]
    first = _ok(_train(args + ["--config.max_run_seconds=1e-9"], tiny=True))
    assert "max_run_seconds=1e-09 reached at step 1" in first.stderr
    assert [p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]
    assert not (wd / "summary.json").exists()
    _ok(_train(args, tiny=True))
    assert sorted(_losses(wd)) == [1, 2, 3, 4] and (wd / "summary.json").exists()


def _wait_for_loss_lines(workdir: pathlib.Path, procs, n: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(_losses(workdir) if (workdir / "metrics.jsonl").exists() else {}) < n:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "training did not start"
        time.sleep(0.1)


def test_sigterm_checkpoints_where_it_stops_and_the_rerun_resumes_there(tmp_path):
    """A preempted job (SIGTERM) saves the step it reached and exits cleanly; the same command resumes from it."""
    wd = tmp_path / "preempted"
    args = _tiny_args(500) + [
        "--workdir", str(wd), "--config.checkpoint_every_epochs=1000"]
    proc = subprocess.Popen([sys.executable, "-c", TINY_TRAIN] + args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_loss_lines(wd, [proc])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    stop = re.search(r"SIGTERM received at step (\d+); checkpointing", err)
    assert stop, err[-3000:]
    step = int(stop.group(1))
    assert str(step) in [p.name for p in (wd / "checkpoints").iterdir()] and not (wd / "summary.json").exists()
    rerun = _ok(_train(args + ["--stop_after_steps=1"], tiny=True))
    assert f"checkpoints step {step} " in rerun.stderr and max(_losses(wd)) == step + 1


def _session_pids(sid: int, cmdline_has: str = "") -> list[int]:
    """Live (non-zombie) processes of session `sid` whose command line contains `cmdline_has`."""
    pids = []
    for d in pathlib.Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid and cmdline_has in cmdline:
            pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; worker signal shielding is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_to_the_whole_job_with_input_workers_still_checkpoints(tmp_path, sig):
    """Slurm's scancel, `kill -TERM -- -PGID` and a terminal's Ctrl-C (SIGINT) signal every process of the job, Grain's
    input workers included. The workers must outlive the signal until the training process has checkpointed (they
    used to die with it, and the batch the training process was waiting for raised "Worker process was terminated
    unexpectedly"), and none may outlive the run. The signal goes out while the workers start, when the first batch
    is awaited."""
    wd = tmp_path / "preempted_job"
    args = _tiny_args(500) + ["--workdir", str(wd), "--config.checkpoint_every_epochs=1000",
                              "--config.num_workers=2"]
    proc = subprocess.Popen([sys.executable, "-c", TINY_TRAIN] + args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(_session_pids(proc.pid, "spawn_main")) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the input workers did not start"
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    stop = re.search(rf"{sig.name} received at step (\d+); checkpointing", err)
    assert stop, err[-3000:]
    assert stop.group(1) in [p.name for p in (wd / "checkpoints").iterdir()]
    deadline = time.monotonic() + 15
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session_pids(proc.pid), "input workers outlived the run"


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    """Processes agree on the stop step (every stopping.SYNC_EVERY steps): a SIGTERM that reaches only one of two
    processes still stops both at one step, with one checkpoint, and neither waits forever."""
    wd = tmp_path / "mp_preempted"
    args = _tiny_args(500) + [
        "--workdir", str(wd), "--num_cpu_devices=2", f"--coordinator_address=localhost:{_free_port()}",
        "--num_processes=2", "--config.checkpoint_every_epochs=1000"]
    procs = [subprocess.Popen([sys.executable, "-c", TINY_TRAIN] + args + [f"--process_id={i}"], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        _wait_for_loss_lines(wd, procs)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert "SIGTERM received at step" in outs[1][1] and "SIGTERM received by another process at step" in outs[0][1]
    steps = [int(re.search(r"SIGTERM received(?: by another process)? at step (\d+)", err).group(1)) for _, err in outs]
    assert steps[0] == steps[1] and steps[0] % stopping.SYNC_EVERY == 0
    saved = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[0] in saved and not (wd / "summary.json").exists()
