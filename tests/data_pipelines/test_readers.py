"""Readers on small synthetic folders laid out like each dataset's download; masks are the union, binary."""
import numpy as np
import pytest
from PIL import Image

import data_pipelines as dp
from tests.data_pipelines.layouts import make_layout, snapshot

SIZE = (40, 48)  # native size of the synthetic images, so cached masks equal the written ones exactly


@pytest.mark.parametrize("name", ["folder", "kvasir", "busi", "isic18", "tnscui", "cvc300", "cvc_clinicdb", "ph2",
                                  "bus", "tucc", "tucc_h5"])
def test_reader_lists_every_pair_and_unions_masks(name, tmp_path):
    data = tmp_path / "data"
    expected = make_layout(name, data, n=5)
    name = name.removesuffix("_h5")
    before = snapshot(data)
    src = dp.load_source(name, data, "all", image_size=SIZE, cache_dir=tmp_path / "cache")
    assert sorted(src.ids) == sorted(expected)
    for i in range(len(src)):
        ex = src[i]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (*SIZE, 3)
        assert ex["mask"].dtype == np.uint8 and set(np.unique(ex["mask"])) <= {0, 1}
        np.testing.assert_array_equal(ex["mask"].astype(bool), expected[ex["id"]], err_msg=ex["id"])
    assert snapshot(data) == before, "the data folder was modified"


@pytest.mark.parametrize("name", ["folder", "busi", "isic18", "tnscui"])
def test_cmunext_layout_with_masks_0_is_accepted(name, tmp_path):
    expected = make_layout("cmunext", tmp_path / "data", n=4)
    src = dp.load_source(name, tmp_path / "data", "all", image_size=SIZE, cache_dir=tmp_path / "cache")
    assert sorted(src.ids) == sorted(expected)
    np.testing.assert_array_equal(src[0]["mask"].astype(bool), expected[src[0]["id"]])


def test_busi_image_mode_l_and_rgb_both_give_three_channels(tmp_path):
    make_layout("busi", tmp_path / "data", n=4)
    src = dp.load_source("busi", tmp_path / "data", "all", image_size=SIZE, cache_dir=tmp_path / "cache")
    for i in range(len(src)):
        path = next((tmp_path / "data").rglob(f"{src.ids[i]}.png"))
        ref = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(src[i]["image"], ref)


def test_zero_shot_test_split_is_every_image(tmp_path):
    expected = make_layout("cvc300", tmp_path / "data", n=6)
    src = dp.load_source("cvc300", tmp_path / "data", "test", image_size=SIZE, cache_dir=tmp_path / "cache")
    assert sorted(src.ids) == sorted(expected)


def test_cache_resizes_once_and_is_reused(tmp_path):
    make_layout("folder", tmp_path / "data", n=3)
    src = dp.load_source("folder", tmp_path / "data", "all", image_size=(16, 24), cache_dir=tmp_path / "cache")
    assert src[0]["image"].shape == (16, 24, 3) and src[0]["mask"].shape == (16, 24)
    entries = list((tmp_path / "cache" / "folder").iterdir())
    dp.load_source("folder", tmp_path / "data", "all", image_size=(16, 24), cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "folder").iterdir()) == entries, "second load rebuilt the cache"
