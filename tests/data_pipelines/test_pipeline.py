"""Grain pipelines: determinism, epoch coverage, sharding, resume, worker-count independence, eval padding."""
import gc

import numpy as np
import pytest

import data_pipelines as dp


class IndexSource:
    """Record i is an image filled with value i and an all-ones mask (identifies records in batches)."""

    def __init__(self, n, size=(8, 8)):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full((*self.size, 3), i, np.uint8), "mask": np.ones(self.size, np.uint8), "id": str(i)}


def _ids(batch):
    return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()


def _take(ds, k):
    it = iter(ds)
    out = [next(it) for _ in range(k)]
    it.close()
    return out


def _train(src, **kw):
    args = dict(seed=0, batch_size=4, image_size=(8, 8), augment="none", normalize="unit")
    args.update(kw)
    return dp.train_dataset(src, **args)


def test_each_epoch_visits_every_record_once_in_a_new_order():
    batches = _take(_train(IndexSource(12)), 6)
    epoch1 = sum((_ids(b) for b in batches[:3]), [])
    epoch2 = sum((_ids(b) for b in batches[3:]), [])
    assert sorted(epoch1) == list(range(12)) and sorted(epoch2) == list(range(12))
    assert epoch1 != epoch2


def test_same_seed_same_batches_other_seed_other_batches():
    src = dp.SyntheticSource(16, (32, 32), seed=1)
    a = _take(_train(src, seed=3, augment="kvasir", image_size=(32, 32)), 3)
    b = _take(_train(src, seed=3, augment="kvasir", image_size=(32, 32)), 3)
    c = _take(_train(src, seed=4, augment="kvasir", image_size=(32, 32)), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_batches_have_interface_shapes_and_binary_masks():
    src = dp.SyntheticSource(8, (32, 32), seed=0)
    (b,) = _take(_train(src, augment="kvasir", image_size=(32, 32), normalize="imagenet"), 1)
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == (4, 32, 32, 1) and b["mask"].dtype == np.float32
    assert set(np.unique(b["mask"])) <= {0.0, 1.0}


def test_records_of_another_size_are_resized():
    (b,) = _take(_train(dp.SyntheticSource(8, (20, 24), seed=0), image_size=(16, 16)), 1)
    assert b["image"].shape == (4, 16, 16, 3) and b["mask"].shape == (4, 16, 16, 1)


def test_resume_from_saved_state_gives_the_next_batch():
    ds = _train(dp.SyntheticSource(10, (16, 16), seed=0), augment="busi", image_size=(16, 16))
    full = _take(ds, 6)
    it = iter(ds)
    for _ in range(4):
        next(it)
    state = it.get_state()
    it.close()
    resumed = iter(ds)
    resumed.set_state(state)
    for want in full[4:]:
        np.testing.assert_array_equal(next(resumed)["image"], want["image"])


def test_restore_with_other_settings_is_refused():
    src = IndexSource(12)
    it = iter(_train(src))
    next(it)
    state = it.get_state()
    other = iter(_train(src, worker_count=0, shard_count=2, shard_index=0))
    with pytest.raises(ValueError, match=r"shard_count: saved 1, now 2"):
        other.set_state(state)
    with pytest.raises(ValueError, match="worker_count: saved 2, now 0"):
        it.set_state({**state, "pipeline": {**state["pipeline"], "worker_count": 2}})
    with pytest.raises(ValueError, match="no 'pipeline' settings"):
        it.set_state(state["iterator"])


def test_shards_are_disjoint_and_cover_the_source():
    seen = []
    for k in range(3):
        (b,) = _take(_train(IndexSource(12), shard_index=k, shard_count=3), 1)
        seen += _ids(b)
    assert sorted(seen) == list(range(12))


@pytest.fixture(scope="module")
def worker_source(real_cache_dir):
    """The real BUSI val1 set at 64x64 when ../shared is present (acceptance), else synthetic data."""
    from tests.conftest import SHARED

    busi = SHARED / "data" / "BUSI"
    if busi.is_dir():
        return dp.load_source("busi", busi, "val", fold=1, image_size=(64, 64), cache_dir=real_cache_dir)
    return dp.SyntheticSource(20, (64, 64), seed=2)


def test_zero_and_two_workers_give_identical_batches_and_resume(worker_source):
    kw = dict(seed=5, batch_size=4, image_size=(64, 64), augment="kvasir")
    base = _take(dp.train_dataset(worker_source, worker_count=0, **kw), 8)
    ds2 = dp.train_dataset(worker_source, worker_count=2, **kw)
    it = iter(ds2)
    got = [next(it) for _ in range(5)]
    state = it.get_state()
    assert state["pipeline"]["worker_count"] == 2
    it.close()
    resumed = iter(ds2)
    resumed.set_state(state)
    got += [next(resumed) for _ in range(3)]
    resumed.close()
    del it, resumed
    gc.collect()
    for i, (x, y) in enumerate(zip(base, got)):
        np.testing.assert_array_equal(x["image"], y["image"], err_msg=f"batch {i}")
        np.testing.assert_array_equal(x["mask"], y["mask"], err_msg=f"batch {i}")


def test_orbax_saves_and_restores_the_iterator(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    ds = _train(IndexSource(12))
    it = iter(ds)
    next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        want = _ids(next(it))
        it2 = iter(ds)
        mngr.restore(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(it2)))
    assert _ids(next(it2)) == want


def test_eval_pads_last_batch_and_marks_it():
    batches = list(dp.eval_dataset(IndexSource(10), batch_size=4, image_size=(8, 8), normalize="unit"))
    assert len(batches) == dp.eval_batch_count(10, 4) == 3
    assert batches[2]["valid"].tolist() == [1, 1, 0, 0]
    assert batches[2]["index"].tolist() == [8, 9, -1, -1]
    assert sum((_ids(b)[: int(b["valid"].sum())] for b in batches), []) == list(range(10))
    assert batches[2]["image"][2:].max() == 0 and batches[2]["mask"][2:].max() == 0


def test_eval_shards_have_equal_batch_counts_and_cover_the_source():
    shards = [list(dp.eval_dataset(IndexSource(10), batch_size=2, image_size=(8, 8), normalize="unit",
                                   shard_index=k, shard_count=3)) for k in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]
    idx = [i for s in shards for b in s for i, v in zip(b["index"].tolist(), b["valid"]) if v]
    assert sorted(idx) == list(range(10))


@pytest.mark.parametrize("n,b,want", [(452, 16, 29), (448, 16, 28), (1, 8, 1)])
def test_steps_per_epoch_is_ceil(n, b, want):
    assert dp.steps_per_epoch(n, b) == want


def test_global_batches_do_not_depend_on_the_process_count():
    """Process k's j-th batch is rows [k*b, (k+1)*b) of the 1-process j-th batch: same data for 1, 2 or 4 processes."""
    src = IndexSource(20)
    one = _take(_train(src, batch_size=8), 6)  # 6 steps: crosses two epoch boundaries
    for n in (2, 4):
        parts = [_take(_train(src, batch_size=8 // n, shard_index=k, shard_count=n), 6) for k in range(n)]
        for j in range(6):
            assert sum((_ids(p[j]) for p in parts), []) == _ids(one[j])


def test_stream_can_start_at_any_step():
    src = IndexSource(10)
    full = _take(_train(src, batch_size=4, augment="busi", shard_index=1, shard_count=2, seed=3), 7)
    late = _take(_train(src, batch_size=4, augment="busi", shard_index=1, shard_count=2, seed=3, start_step=4), 3)
    for a, b in zip(full[4:], late):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="start_step"):
        _train(src, start_step=-1)
    with pytest.raises(ValueError, match="fewer than the global batch 4 x 3"):
        _train(src, shard_count=3)
