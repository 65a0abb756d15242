"""The real Kvasir-SEG and BUSI copies in ../shared/data (skipped without them); caches go to tmp, never ../shared."""
import numpy as np
import pytest
from PIL import Image

import data_pipelines as dp

SIZE = (64, 64)  # small cache: decoding dominates, and the counts/masks do not depend on the size


@pytest.fixture(scope="session")
def real(shared_dir, real_cache_dir):
    """(kvasir dir, busi dir, cache dir)."""
    data = shared_dir / "data"
    if not (data / "Kvasir-SEG").is_dir() or not (data / "BUSI").is_dir():
        pytest.skip("../shared/data has no Kvasir-SEG/BUSI copy")
    return data / "Kvasir-SEG", data / "BUSI", real_cache_dir


def _load(name, path, split, cache, **kw):
    return dp.load_source(name, path, split, image_size=SIZE, cache_dir=cache, **kw)


def test_kvasir_counts_and_pranet_split(real):
    kvasir, _, cache = real
    assert len(_load("kvasir", kvasir, "all", cache)) == 1000
    test = _load("kvasir", kvasir, "test", cache)
    train, val = _load("kvasir", kvasir, "train", cache), _load("kvasir", kvasir, "val", cache)
    assert sorted(test.ids) == sorted(dp.read_ids(kvasir / "splits" / "pranet_test.txt"))
    assert (len(train), len(val), len(test)) == (810, 90, 100)
    assert set(train.ids) | set(val.ids) == set(dp.read_ids(kvasir / "splits" / "pranet_train.txt"))
    assert not set(train.ids) & set(val.ids)
    duck = {s: _load("kvasir", kvasir, s, cache, split_scheme="seeded").ids for s in ("train", "val", "test")}
    assert [len(duck[s]) for s in ("train", "val", "test")] == [800, 100, 100]


def test_kvasir_jpeg_masks_are_binary_and_nonempty(real):
    kvasir, _, cache = real
    src = _load("kvasir", kvasir, "test", cache)
    masks = np.stack([src[i]["mask"] for i in range(len(src))])
    assert masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1}
    assert (masks.reshape(len(src), -1).max(axis=1) == 1).all()


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_busi_reference_splits_452_195(real, fold):
    _, busi, cache = real
    train, val = _load("busi", busi, "train", cache, fold=fold), _load("busi", busi, "val", cache, fold=fold)
    assert (len(train), len(val)) == (452, 195)
    assert not set(train.ids) & set(val.ids) and len(set(train.ids) | set(val.ids)) == 647


def test_busi_multiple_masks_are_merged_by_union(real):
    _, busi, cache = real
    src = _load("busi", busi, "all", cache)
    assert len(src) == 647
    i = src.ids.index("benign (195)")  # the image with three mask files
    files = sorted((busi / "benign").glob("benign (195)_mask*.png"))
    assert len(files) == 3
    parts = [np.asarray(Image.open(f).convert("L")) > 127 for f in files]
    small = lambda m: np.asarray(Image.fromarray(m.astype(np.uint8)).resize(SIZE[::-1], Image.Resampling.NEAREST))  # noqa: E731
    union = small(np.logical_or.reduce(parts))
    np.testing.assert_array_equal(src[i]["mask"], union)
    assert union.sum() > small(parts[0]).sum()


def test_busi_batches_deterministic_and_resume(real):
    _, busi, cache = real
    src = _load("busi", busi, "train", cache, fold=1)
    ds = dp.train_dataset(src, seed=41, batch_size=8, image_size=SIZE, augment="busi")
    a, b = iter(ds), iter(ds)
    first = [next(a) for _ in range(3)]
    for x in first:
        np.testing.assert_array_equal(x["image"], next(b)["image"])
    state = a.get_state()
    want = next(a)["image"]
    c = iter(ds)
    c.set_state(state)
    np.testing.assert_array_equal(next(c)["image"], want)
    assert set(np.unique(want)) != {0.0}


# 0 vs 2 workers (and resuming with 2 workers) on real BUSI: tests/data_pipelines/test_pipeline.py
# `test_zero_and_two_workers_give_identical_batches_and_resume` uses BUSI when ../shared is present.
