"""TFDS ArrayRecord builds hold the same arrays as the plain cache; data_pipelines needs neither jax nor TensorFlow."""
import sys

import numpy as np

import data_pipelines as dp
from tests.data_pipelines.layouts import make_layout, snapshot

SIZE = (24, 32)


def test_tfds_build_matches_the_npy_cache_without_tensorflow(tmp_path):
    data = tmp_path / "data"
    make_layout("folder", data, n=10)
    before = snapshot(data)
    kw = dict(image_size=SIZE, cache_dir=tmp_path / "cache", seed=3)
    for split in ("train", "val", "test"):
        plain = dp.load_source("folder", data, split, **kw)
        tf = dp.load_source("folder", data, split, backend="tfds", **kw)
        assert sorted(tf.ids) == sorted(plain.ids)
        for i in range(len(tf)):
            ex = tf[i]
            ref = plain[plain.ids.index(ex["id"])]
            np.testing.assert_array_equal(ex["image"], ref["image"])
            np.testing.assert_array_equal(ex["mask"], ref["mask"])
    assert (tmp_path / "cache" / "tfds" / "lgmsnet_folder").is_dir()
    assert snapshot(data) == before
    assert "tensorflow" not in sys.modules


def test_2d_pipeline_modules_do_not_import_jax():
    # Grain itself imports jax when it is installed, so check our own import statements.
    import ast
    import pathlib

    pkg = pathlib.Path(dp.__file__).parent
    mine = ["__init__", "benchmark", "cache", "pipeline", "readers", "sources", "splitting", "tfds_builders",
            "transforms", "verify"]
    for name in mine:
        tree = ast.parse((pkg / f"{name}.py").read_text())
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(m == "jax" or m.startswith(("jax.", "flax", "tensorflow.")) or m == "tensorflow"
                           for m in mods), f"{name}.py imports {mods}"
