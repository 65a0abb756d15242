"""Workdir guards and Orbax round trip of a TrainState (every leaf, restored into a template from another seed)."""
import json
import os
import socket
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lgmsnet_jax.training import checkpoint, optim, state as state_lib


def test_config_diff_names_changed_keys_and_ignores_data_location():
    a = {"epochs": 10, "data_dir": "/a", "optim": {"lr": 0.01}}
    b = {"epochs": 10, "data_dir": "/b", "optim": {"lr": 0.02}}
    diff = checkpoint.config_diff(a, b)
    assert '-  "lr": 0.01' in diff and '+  "lr": 0.02' in diff and "data_dir" not in diff
    assert checkpoint.config_diff(a, a | {"data_dir": "/c"}) == ""


def test_a_run_saved_before_a_config_key_existed_compares_with_its_default():
    saved = {"epochs": 10}  # config.json of a run from before `batchnorm` existed
    assert checkpoint.config_diff(saved, {"epochs": 10, "batchnorm": "global"}) == ""
    assert '+ "batchnorm": "per_device"' in checkpoint.config_diff(saved, {"epochs": 10, "batchnorm": "per_device"})


def test_config_check_allows_a_new_config_when_there_is_no_checkpoint(tmp_path):
    checkpoint.check_and_write_config(tmp_path, {"epochs": 1})
    checkpoint.check_and_write_config(tmp_path, {"epochs": 2})  # the first attempt never saved anything
    (tmp_path / checkpoint.CKPT_DIR / "5").mkdir(parents=True)
    with pytest.raises(checkpoint.WorkdirError, match="different config"):
        checkpoint.check_and_write_config(tmp_path, {"epochs": 3})
    checkpoint.check_and_write_config(tmp_path, {"epochs": 3}, force=True)
    assert json.loads((tmp_path / checkpoint.CONFIG_FILE).read_text()) == {"epochs": 3}


def test_lock_refuses_a_second_holder_and_releases(tmp_path):
    with checkpoint.WorkdirLock(tmp_path):
        with pytest.raises(checkpoint.WorkdirError, match="in use"):
            checkpoint.WorkdirLock(tmp_path).acquire()
    assert not (tmp_path / checkpoint.LOCK_FILE).exists()


def test_train_state_round_trips_every_leaf(tmp_path, tiny_model):
    tx = optim.build_optimizer("sgd", optim.build_schedule("constant", lr=0.1, steps_per_epoch=1, epochs=1))
    _, saved = state_lib.create_train_state(tiny_model(seed=0), tx, seed=3)
    saved.step = saved.step + 7
    _, template = state_lib.create_train_state(tiny_model(seed=1), tx, seed=4)
    mngr = checkpoint.make_manager(tmp_path)
    checkpoint.save(mngr, 7, saved, data_iter=None, config_dict={"a": (1, 2)}, meta={"best_step": None},
                    metrics={"select": 0.5})
    mngr.wait_until_finished()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored, meta, config = checkpoint.restore(mngr, 7, checkpoint.abstract_like(template, sharding))
    assert meta == {"best_step": None} and config == {"a": [1, 2]}
    assert checkpoint.best_step(mngr) == 7
    for (path, a), (_, b) in zip(state_lib.leaf_paths(saved), state_lib.leaf_paths(restored)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    mngr.close()


def _tiny_states(tiny_model):
    tx = optim.build_optimizer("sgd", optim.build_schedule("constant", lr=0.1, steps_per_epoch=1, epochs=1))
    _, saved = state_lib.create_train_state(tiny_model(seed=0), tx, seed=3)
    _, template = state_lib.create_train_state(tiny_model(seed=1), tx, seed=4)
    return saved, template


def _assert_same_leaves(a_tree, b_tree):
    for (path, a), (_, b) in zip(state_lib.leaf_paths(a_tree), state_lib.leaf_paths(b_tree)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)


def test_state_is_written_packed_with_its_layout(tmp_path, tiny_model):
    saved, _ = _tiny_states(tiny_model)
    mngr = checkpoint.make_manager(tmp_path)
    checkpoint.save(mngr, 1, saved, data_iter=None, config_dict={}, meta={})
    mngr.wait_until_finished()
    items = {p.name for p in (tmp_path / checkpoint.CKPT_DIR / "1").iterdir() if p.is_dir()}
    assert {checkpoint.PACKED_ITEM, checkpoint.LAYOUT_ITEM} <= items and checkpoint.TREE_ITEM not in items
    table = json.loads((tmp_path / checkpoint.CKPT_DIR / "1" / checkpoint.LAYOUT_ITEM / "metadata").read_text())
    assert [row[0] for row in table["leaves"]] == [p for p, _ in state_lib.leaf_paths(saved)]
    mngr.close()


def test_checkpoints_written_as_a_tree_still_restore(tmp_path, tiny_model):
    # The format of runs saved before the packed state: the TrainState tree as one StandardSave item.
    saved, template = _tiny_states(tiny_model)
    mngr = checkpoint.make_manager(tmp_path)
    mngr.save(3, args=ocp.args.Composite(**{checkpoint.TREE_ITEM: ocp.args.StandardSave(saved),
                                            "config": ocp.args.JsonSave({}), "meta": ocp.args.JsonSave({"m": 1})}))
    mngr.wait_until_finished()
    restored, meta, _ = checkpoint.restore(mngr, 3, checkpoint.abstract_like(template))
    assert meta == {"m": 1}
    _assert_same_leaves(saved, restored)
    mngr.close()


def test_packed_checkpoint_refuses_a_different_state(tmp_path, tiny_model):
    saved, _ = _tiny_states(tiny_model)
    tx = optim.build_optimizer("sgd", optim.build_schedule("constant", lr=0.1, steps_per_epoch=1, epochs=1))
    _, other = state_lib.create_train_state(tiny_model(seed=1, use_bn=False), tx, seed=4)
    mngr = checkpoint.make_manager(tmp_path)
    checkpoint.save(mngr, 2, saved, data_iter=None, config_dict={}, meta={})
    mngr.wait_until_finished()
    with pytest.raises(ValueError, match="holds a different train state.*another config"):
        checkpoint.restore(mngr, 2, checkpoint.abstract_like(other))
    mngr.close()


def test_config_on_bad_reaches_the_data_loader(tmp_path):
    """`--config.on_bad` chooses between stopping on a corrupt file (default) and skipping it with a report."""
    from configs import demo
    from lgmsnet_jax.training import builders
    from tests.data_pipelines.layouts import make_layout

    data = tmp_path / "data"
    make_layout("folder", data, n=10)
    (data / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (data / "masks" / "corrupt.png").write_bytes((data / "masks" / "case 0.png").read_bytes())
    config = demo.get_config()
    config.dataset, config.data_dir, config.cache_dir = "folder", str(data), str(tmp_path / "cache")
    with pytest.raises(builders.DataMissingError, match="corrupt"):
        builders.load_sources(config)
    config.on_bad = "skip"
    sources = builders.load_sources(config)
    ids = {sources[r][i]["id"] for r in ("train", "val", "test") if sources[r] is not None
           for i in range(len(sources[r]))}
    assert "corrupt" not in ids and len(ids) == 10


def test_resume_of_saved_iterator_states_needs_the_same_process_count(tmp_path):
    """Runs whose stream resumes from saved iterator states (3D) stop with the way out when the process count
    differs from the checkpoint's; resume_data=restart then asks for a reseeded stream."""
    import jax.numpy as jnp
    from lgmsnet_jax.training import checkpoint, loop

    class StateStream:
        stream_from_step = False
        calls = []

        def train_iter(self, seed_offset=0, start_step=0):
            self.calls.append((seed_offset, start_step))
            return None

    mngr = checkpoint.make_manager(tmp_path)
    state = {"w": jnp.arange(3.0)}
    checkpoint.save(mngr, 5, state, data_iter=None, config_dict={}, meta={"process_count": 2})
    mngr.wait_until_finished()
    run = StateStream()
    with pytest.raises(checkpoint.WorkdirError, match=r"written by 2 process\(es\) and this run has 1.*"
                                                      r"resume_data=restart"):
        loop._resume(mngr, 5, state, None, run, "exact", 1)
    restored, meta, _ = loop._resume(mngr, 5, state, None, run, "restart", 1)
    assert run.calls == [(5, 0)] and meta["process_count"] == 2
    np.testing.assert_array_equal(restored["w"], [0.0, 1.0, 2.0])


def _foreign_lock(path, age_s):
    lock = path / checkpoint.LOCK_FILE
    lock.write_text(json.dumps({"pid": 12345, "host": "another-node", "since": "2026-11-30 01:00:00"}))
    t = time.time() - age_s
    os.utime(lock, (t, t))
    return lock


def test_lock_from_another_host_is_refused_while_its_heartbeat_is_fresh_and_taken_over_after(tmp_path):
    _foreign_lock(tmp_path, age_s=5)
    with pytest.raises(checkpoint.WorkdirError, match=r"pid 12345 on host another-node.*heartbeat is 600 s old"):
        checkpoint.WorkdirLock(tmp_path).acquire()
    _foreign_lock(tmp_path, age_s=601)  # killed on its node (preempted job requeued elsewhere)
    with checkpoint.WorkdirLock(tmp_path) as lock:
        assert lock.held
        assert json.loads((tmp_path / checkpoint.LOCK_FILE).read_text())["host"] == socket.gethostname()
    assert not (tmp_path / checkpoint.LOCK_FILE).exists()


def test_held_lock_keeps_its_heartbeat_and_stops_on_release(tmp_path, monkeypatch):
    lock = checkpoint.WorkdirLock(tmp_path, heartbeat_s=0.02).acquire()
    path = tmp_path / checkpoint.LOCK_FILE
    os.utime(path, (1.0, 1.0))
    deadline = time.time() + 10
    while path.stat().st_mtime < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert path.stat().st_mtime > time.time() - 60  # refreshed by the heartbeat thread
    # So a run on another host sees a live lock, however long this one has held it.
    with monkeypatch.context() as m:
        m.setattr(socket, "gethostname", lambda: "another-node")
        with pytest.raises(checkpoint.WorkdirError, match="in use"):
            checkpoint.WorkdirLock(tmp_path, stale_after_s=30).acquire()
    stop = lock._stop
    lock.release()
    assert stop.is_set() and not path.exists()


def test_lock_of_a_live_pid_here_with_a_dead_heartbeat_is_taken_over(tmp_path):
    # e.g. a restarted container: same hostname, and the old run's pid now belongs to another live process
    lock = tmp_path / checkpoint.LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-11-30 01:00:00"}))
    with pytest.raises(checkpoint.WorkdirError, match="in use"):
        checkpoint.WorkdirLock(tmp_path).acquire()  # a fresh heartbeat: a live holder
    os.utime(lock, (time.time() - 601,) * 2)
    with checkpoint.WorkdirLock(tmp_path) as held:
        assert held.held
