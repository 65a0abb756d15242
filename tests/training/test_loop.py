"""The training loop in-process with the tiny net on synthetic data: resume, NaN stop, workdir guards."""
import json
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lgmsnet_jax.training import builders, checkpoint, loop, state as state_lib, writers
from tiny_net import tiny_config


def _final_state(workdir, config, step=None):
    mngr = checkpoint.make_manager(workdir, create=False)
    step = mngr.latest_step() if step is None else step
    _, abstract = builders.abstract_train_state(config, NamedSharding(loop.make_mesh(), P()))
    st, meta, _ = checkpoint.restore(mngr, step, abstract)
    mngr.close()
    return st, meta


def test_resume_matches_uninterrupted_run(tmp_path):
    config = tiny_config(checkpoint_every_steps=2)  # 4 steps/epoch, 8 steps, evaluation after each epoch
    losses_a = {}
    loop.train_and_evaluate(config, tmp_path / "a", on_step=lambda s, m: losses_a.__setitem__(s, m["loss"]))

    def crash(step, _):
        if step == 7:
            raise KeyboardInterrupt("simulated kill after step 7")

    with pytest.raises(KeyboardInterrupt):
        loop.train_and_evaluate(config, tmp_path / "b", on_step=crash)
    assert checkpoint.make_manager(tmp_path / "b", create=False).latest_step() == 6
    assert not (tmp_path / "b" / checkpoint.LOCK_FILE).exists()
    losses_b = {}
    loop.train_and_evaluate(config, tmp_path / "b", on_step=lambda s, m: losses_b.__setitem__(s, m["loss"]))
    assert sorted(losses_b) == [7, 8]
    assert [losses_b[s] for s in (7, 8)] == [losses_a[s] for s in (7, 8)]

    sa, meta_a = _final_state(tmp_path / "a", config)
    sb, meta_b = _final_state(tmp_path / "b", config)
    assert int(sb.step) == 8 and meta_a == meta_b
    for (path, a), (_, b) in zip(state_lib.leaf_paths(sa), state_lib.leaf_paths(sb)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"leaf {path} differs after resume")
    rec = lambda w: [(r["step"], r["train/loss"]) for r in writers.read_jsonl(w / "metrics.jsonl")  # noqa: E731
                     if "train/loss" in r]
    assert rec(tmp_path / "b") == rec(tmp_path / "a")  # replayed steps were truncated, not duplicated


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config()
    out = loop.train_and_evaluate(config, tmp_path, stop_after_steps=2)
    assert out == {"stopped_at": 2}
    config.optim.lr = float("inf")
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 3 .*last good checkpoint is step 2") as err:
        loop.train_and_evaluate(config, tmp_path, force_config=True)
    assert "float32" not in str(err.value)  # the float32 hint is only for bf16/fp16 runs
    mngr = checkpoint.make_manager(tmp_path, create=False)
    assert mngr.all_steps() == [2]
    mngr.close()
    st, _ = _final_state(tmp_path, config)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(st.params))


def test_different_config_on_existing_workdir_is_refused_with_diff(tmp_path):
    loop.train_and_evaluate(tiny_config(), tmp_path, stop_after_steps=1)
    with pytest.raises(checkpoint.WorkdirError, match=r'(?s)--force_config.*"batch_size": 4.*"batch_size": 8'):
        loop.train_and_evaluate(tiny_config(batch_size=8), tmp_path, stop_after_steps=1)
    # Where the data lives may change between invocations.
    loop.train_and_evaluate(tiny_config(cache_dir=str(tmp_path / "cache")), tmp_path, stop_after_steps=1)
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 4


def test_concurrent_run_is_refused_and_stale_lock_taken_over(tmp_path):
    lock = checkpoint.WorkdirLock(tmp_path).acquire()  # a live process (this one) holds the workdir
    with pytest.raises(checkpoint.WorkdirError, match=r"in use by another run \(pid \d+"):
        loop.train_and_evaluate(tiny_config(), tmp_path, stop_after_steps=1)
    lock.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = json.loads(json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname()}))
    (tmp_path / checkpoint.LOCK_FILE).write_text(json.dumps(stale))
    assert loop.train_and_evaluate(tiny_config(), tmp_path, stop_after_steps=1) == {"stopped_at": 1}
    assert not (tmp_path / checkpoint.LOCK_FILE).exists()


def test_per_device_batchnorm_reaches_the_model_and_a_bad_mode_stops_before_work(tmp_path):
    with pytest.raises(ValueError, match=r"config.batchnorm must be one of \('global', 'per_device'\), got 'sync'"):
        loop.train_and_evaluate(tiny_config(batchnorm="sync"), tmp_path / "bad")
    first_loss = {}
    for mode in ("global", "per_device"):
        model = ml_collections.ConfigDict({"width": 4, "use_bn": "project"})
        config = tiny_config(batchnorm=mode, epochs=1, model=model)
        loop.train_and_evaluate(config, tmp_path / mode, stop_after_steps=1)
        first_loss[mode] = next(r["train/loss"] for r in writers.read_jsonl(tmp_path / mode / "metrics.jsonl")
                                if "train/loss" in r)
    # Same data, weights and step; only the BatchNorm statistics differ (2 devices x 2 rows vs 4 rows).
    assert first_loss["per_device"] != pytest.approx(first_loss["global"], rel=1e-4)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"config.batch_size=3 .* divisible by the 2 devices"):
        loop.train_and_evaluate(tiny_config(batch_size=3), tmp_path)


def test_restore_model_gives_the_best_checkpoint_for_inference(tmp_path):
    config = tiny_config(epochs=2)
    loop.train_and_evaluate(config, tmp_path)
    summary = json.loads((tmp_path / loop.SUMMARY_FILE).read_text())
    model, cfg = builders.restore_model(tmp_path, "best")
    best, meta = _final_state(tmp_path, config, step=checkpoint.best_step(checkpoint.make_manager(tmp_path)))
    assert summary["checkpoint"].endswith(f"step {meta['best_step']})")
    assert cfg.model_name == "tiny_test_net" and tuple(cfg.image_size) == (16, 16)
    x = np.zeros((1, 16, 16, 3), np.float32)
    from flax import nnx
    ref = nnx.merge(builders.abstract_train_state(config)[0], best.params, best.model_state)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref(x, train=False)), rtol=1e-6)


def test_checkpoint_every_epochs_keeps_every_new_best_and_the_period(tmp_path, monkeypatch):
    saved = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda mngr, step, *a, **k: (saved.append(step),
                                                                         real_save(mngr, step, *a, **k)))
    config = tiny_config(epochs=5, checkpoint_every_epochs=2)  # 4 steps per epoch
    config.optim.lr, config.model.use_bn = 0.0, False  # frozen weights: only epoch 1 is a new best
    loop.train_and_evaluate(config, tmp_path)
    vals = [r for r in writers.read_jsonl(tmp_path / "metrics.jsonl") if "val/iou" in r]
    assert [r["epoch"] for r in vals] == [1, 2, 3, 4, 5]
    best, improved = checkpoint.NOT_BEST, set()
    for r in vals:
        if r["val/iou"] > best:
            best, improved = r["val/iou"], improved | {r["step"]}
    assert improved == {4}
    assert sorted(saved) == [4, 8, 16, 20]  # the new best, every 2nd epoch, the last one
