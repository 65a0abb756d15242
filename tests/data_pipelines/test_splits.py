"""Split files: CRLF reference lists, seeded splits that are written once and reused so runs repeat exactly."""
import json

import pytest

import data_pipelines as dp
from data_pipelines import splitting
from tests.data_pipelines.layouts import make_layout, write_pair


def test_read_ids_strips_crlf_blank_lines_and_repeats(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_bytes(b"benign (1)\r\nmalignant (84)\r\n\r\nbenign (1)\r\n  ISIC_0000001 \n")
    assert dp.read_ids(f) == ["benign (1)", "malignant (84)", "ISIC_0000001"]


def test_packaged_reference_splits_have_the_reference_sizes():
    for name, sizes in (("busi", (452, 195)), ("isic18", (1815, 779)), ("tnscui", (2550, 1094))):
        for fold in (1, 2, 3):
            train = dp.read_ids(splitting.reference_split_file(name, "train", fold))
            val = dp.read_ids(splitting.reference_split_file(name, "val", fold))
            assert (len(train), len(val)) == sizes and not set(train) & set(val)
    with pytest.raises(ValueError, match="fold must be 1, 2 or 3"):
        splitting.reference_split_file("busi", "train", 4)


def test_seeded_split_is_a_deterministic_partition():
    ids = [f"id{i}" for i in range(103)]
    a = dp.seeded_split(ids, seed=7)
    assert a == dp.seeded_split(list(reversed(ids)), seed=7)  # input order does not matter
    assert a != dp.seeded_split(ids, seed=8)
    assert [len(a[k]) for k in ("train", "val", "test")] == [83, 10, 10]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)


def test_folder_split_is_written_once_and_reused(tmp_path):
    data = tmp_path / "data"
    make_layout("folder", data, n=20)
    kw = dict(image_size=(16, 16), cache_dir=tmp_path / "cache", seed=1, split_file=tmp_path / "split.json")
    first = {s: dp.load_source("folder", data, s, **kw).ids for s in ("train", "val", "test")}
    assert [len(first[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["meta"]["seed"] == 1 and saved["parts"]["val"] == sorted(first["val"])
    write_pair(data / "images" / "new.png", [data / "masks" / "new.png"], seed=99)  # the folder grows
    again = {s: dp.load_source("folder", data, s, **kw).ids for s in ("train", "val", "test")}
    assert again == first
