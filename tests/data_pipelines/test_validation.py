"""Bad input is found up front, reported with the file name, and either stops the run or is skipped with a report."""
import json

import pytest

import data_pipelines as dp
from tests.data_pipelines.layouts import make_layout, snapshot, write_pair

SIZE = (40, 48)


def _load(tmp_path, name="folder", split="all", **kw):
    return dp.load_source(name, tmp_path / "data", split, image_size=SIZE, cache_dir=tmp_path / "cache", **kw)


def _kinds(err: dp.DataError) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i in err.issues:
        out.setdefault(i.kind, set()).add(i.path.rsplit("/", 1)[-1])
    return out


@pytest.fixture
def broken(tmp_path):
    """A folder with one of each problem next to three good pairs."""
    data = tmp_path / "data"
    make_layout("folder", data, n=3)                                       # case 0..2 are fine
    (data / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    write_pair(data / "images" / "badmask.png", [data / "masks" / "badmask.png"], seed=9)
    (data / "masks" / "badmask.png").write_bytes(b"garbage")
    write_pair(data / "images" / "truncated.jpg", [data / "masks" / "truncated.png"], seed=8)
    raw = (data / "images" / "truncated.jpg").read_bytes()
    (data / "images" / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    write_pair(data / "images" / "nomask.png", [], seed=7)
    write_pair(data / "images" / "orphan_src.png", [data / "masks" / "orphan.png"], seed=6)
    (data / "images" / "orphan_src.png").unlink()                          # mask without image
    write_pair(data / "images" / "mismatch.png", [], seed=5, size=(40, 48))
    write_pair(data / "images" / "tmp.png", [data / "masks" / "mismatch.png"], seed=5, size=(30, 48))
    (data / "images" / "tmp.png").unlink()
    (data / "masks" / "corrupt.png").write_bytes((data / "masks" / "case 0.png").read_bytes())
    return tmp_path


def test_error_lists_every_problem_with_its_file(broken):
    with pytest.raises(dp.DataError) as e:
        _load(broken)
    kinds = _kinds(e.value)
    assert kinds == {"unreadable": {"corrupt.png", "badmask.png", "truncated.jpg"}, "missing_mask": {"nomask.png"},
                     "extra_mask": {"orphan.png"}, "size_mismatch": {"mismatch.png"}}
    for name in ("corrupt.png", "badmask.png", "truncated.jpg", "nomask.png", "orphan.png", "mismatch.png"):
        assert name in str(e.value)


def test_skip_drops_bad_items_and_writes_report(broken):
    before = snapshot(broken / "data")
    report = broken / "out" / "report.json"
    src = _load(broken, on_bad="skip", report_path=report)
    assert sorted(src.ids) == ["case 0", "case 1", "case 2"]
    doc = json.loads(report.read_text())
    assert doc["kept"] == 3
    assert set(doc["dropped_ids"]) >= {"corrupt", "badmask", "truncated", "nomask", "mismatch"}
    assert {i["kind"] for i in doc["issues"]} == {"unreadable", "missing_mask", "extra_mask", "size_mismatch"}
    assert snapshot(broken / "data") == before, "the data folder was modified"


def test_empty_folder_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    with pytest.raises(dp.DataError, match="no image files"):
        _load(tmp_path)
    with pytest.raises(dp.DataError, match="no usable items"):
        _load(tmp_path, on_bad="skip", report_path=tmp_path / "r.json")


def test_missing_data_folder_is_an_error(tmp_path):
    with pytest.raises(dp.DataError, match="does not exist"):
        _load(tmp_path)


def test_split_id_without_file_is_reported(tmp_path):
    make_layout("busi", tmp_path / "data", n=4)
    splits = tmp_path / "data" / "splits"
    splits.mkdir()
    (splits / "busi_train1.txt").write_bytes(b"benign (1)\r\nmalignant (2)\r\nbenign (999)\r\n")
    with pytest.raises(dp.DataError) as e:
        _load(tmp_path, "busi", "train", fold=1)
    assert [(i.kind, i.item_id) for i in e.value.issues] == [("missing_id", "benign (999)")]
    assert "busi_train1.txt" in str(e.value)
    src = _load(tmp_path, "busi", "train", fold=1, on_bad="skip", report_path=tmp_path / "r.json")
    assert src.ids == ["benign (1)", "malignant (2)"]


def test_problem_outside_the_split_does_not_block_it(tmp_path):
    make_layout("busi", tmp_path / "data", n=4)
    (tmp_path / "data" / "benign" / "benign (3).png").write_bytes(b"broken")
    splits = tmp_path / "data" / "splits"
    splits.mkdir()
    (splits / "busi_val1.txt").write_text("benign (1)\nmalignant (2)\n")
    assert _load(tmp_path, "busi", "val", fold=1).ids == ["benign (1)", "malignant (2)"]


def test_writing_inside_the_data_folder_is_refused(tmp_path):
    make_layout("folder", tmp_path / "data", n=2)
    with pytest.raises(ValueError, match="cache_dir .* is inside the data folder"):
        dp.load_source("folder", tmp_path / "data", "all", image_size=SIZE, cache_dir=tmp_path / "data" / "c")
    with pytest.raises(ValueError, match="report_path .* is inside the data folder"):
        _load(tmp_path, on_bad="skip", report_path=tmp_path / "data" / "report.json")
    with pytest.raises(ValueError, match="split_file .* is inside the data folder"):
        _load(tmp_path, split="train", split_file=tmp_path / "data" / "split.json")
