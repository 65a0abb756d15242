"""`python -m lgmsnet_jax.evaluate` end to end on CPU: a tiny run trained by the project's loop, evaluated on its
own splits (equal to the trainer's validation metrics), zero-shot on a plain folder, and as a converted checkpoint.

`trained_run` is also used by tests/test_predict.py; the run is made once per session (cached under pytest's
base temp folder).
"""
import csv
import json
import pathlib
import re

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lgmsnet_jax import evaluate
from lgmsnet_jax.models import register_model, registered_models

NET = "eval_test_net"


class EvalNet(nnx.Module):
    """conv3 -> BatchNorm -> ReLU -> conv1: compiles in about a second, trains visibly in a few steps."""

    def __init__(self, ndim, in_channels, num_classes, *, width=4, rngs):
        self.conv = nnx.Conv(in_channels, width, (3,) * ndim, padding="SAME", rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)
        self.head = nnx.Conv(width, num_classes, (1,) * ndim, rngs=rngs)

    def __call__(self, x, train=None):
        return self.head(nnx.relu(self.bn(self.conv(x), use_running_average=not train)))


def _factory(ndim, in_channels, num_classes, rngs, width=4):
    return EvalNet(ndim, in_channels, num_classes, width=width, rngs=rngs)


if NET not in registered_models():
    register_model(NET)(_factory)


def trained_run(base: pathlib.Path) -> pathlib.Path:
    """A finished train.py workdir (tiny net, synthetic 32x32 data, 3 epochs of 4 steps, val + test splits)."""
    import ml_collections

    from configs import demo
    from lgmsnet_jax.training import loop

    workdir = base / "tiny_run"
    if (workdir / "summary.json").exists():
        return workdir
    c = demo.get_config()
    c.model_name = NET
    c.model = ml_collections.ConfigDict({"width": 4})
    c.image_size = (32, 32)
    c.source_kwargs.num_examples = 16
    c.batch_size = 4
    c.eval_batch_size = 6  # the last batch of 16 is padded: evaluation must ignore the padding
    c.epochs = 3
    c.eval_every = 1
    c.optim.lr = 0.1
    c.fast_compile = False
    c.cache_dir = str(base / "cache")
    loop.train_and_evaluate(c, workdir)
    return workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


def _evaluate(capsys, *argv):
    code = evaluate.main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _val_records(workdir):
    from lgmsnet_jax.training import writers
    return {r["step"]: r for r in writers.read_jsonl(workdir / "metrics.jsonl") if "val/iou" in r}


def test_evaluate_equals_trainer_validation_metrics_of_the_same_checkpoint(capsys, run_dir):
    records = _val_records(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    best = _evaluate(capsys, "--workdir", str(run_dir), "--split", "val")
    assert best["count"] == 16 and summary["metrics"]["val"]["count"] == 16
    for k in ("iou", "dice", "f1", "se", "pc", "sp", "acc"):
        assert best["metrics"][k]["mean"] == pytest.approx(summary["metrics"]["val"][k], rel=1e-6, abs=1e-7), k
        assert best["metrics"][k]["mean"] == pytest.approx(records[best["checkpoint_step"]][f"val/{k}"], abs=1e-7)
    latest = _evaluate(capsys, "--workdir", str(run_dir), "--checkpoint", "latest", "--split", "val")
    assert latest["checkpoint_step"] == max(records) == 12
    for k in ("iou", "f1", "acc"):
        assert latest["metrics"][k]["mean"] == pytest.approx(records[12][f"val/{k}"], rel=1e-6, abs=1e-7), k
    # The default split of the run's own dataset is its test split, as in the trainer's final report.
    test = _evaluate(capsys, "--workdir", str(run_dir))
    assert test["split"] == "test"
    assert test["metrics"]["iou"]["mean"] == pytest.approx(summary["metrics"]["test"]["iou"], rel=1e-6, abs=1e-7)


def test_per_image_csv_holds_every_image_and_its_statistics(capsys, run_dir, tmp_path):
    rep = _evaluate(capsys, "--workdir", str(run_dir), "--split", "val", "--out", str(tmp_path))
    with open(rep["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"synthetic_1_{i:05d}" for i in range(16)]  # the val split, in order
    for k in ("iou", "f1", "se", "pc", "acc"):
        v = np.array([float(r[k]) for r in rows])
        assert np.all((v >= 0) & (v <= 1))
        assert rep["metrics"][k]["mean"] == pytest.approx(v.mean(), abs=2e-6)
        assert rep["metrics"][k]["std"] == pytest.approx(v.std(), abs=2e-6)
        lo, hi = rep["metrics"][k]["ci95"]
        assert v.min() - 1e-9 <= lo <= rep["metrics"][k]["mean"] + 2e-6 and lo <= hi <= v.max() + 1e-9, k
    # Per image, F1 equals Dice up to the 1e-6 terms (spec §7.1).
    np.testing.assert_allclose([float(r["f1"]) for r in rows], [float(r["dice"]) for r in rows], atol=1e-4)
    assert json.loads(pathlib.Path(rep["json"]).read_text()) == rep


def _write_folder(root, n=5):
    """A plain images/ + masks/ layout with odd sizes (another 'polyp set' layout), from the synthetic generator."""
    import data_pipelines as dp

    src = dp.SyntheticSource(n, (40, 52), seed=7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        ex = src[i]
        Image.fromarray(ex["image"]).save(root / "images" / f"case{i}.jpg", quality=95)
        Image.fromarray(ex["mask"] * np.uint8(255)).save(root / "masks" / f"case{i}.png")
    return root


def test_zero_shot_on_an_unseen_folder_layout(capsys, run_dir, tmp_path):
    folder = _write_folder(tmp_path / "other_set")
    rep = _evaluate(capsys, "--workdir", str(run_dir), "--dataset", "folder", "--data_dir", str(folder),
                    "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "eval"))
    assert (rep["dataset"], rep["split"], rep["count"]) == ("folder", "all", 5)
    with open(rep["csv"], newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == [f"case{i}" for i in range(5)]
    assert 0.0 <= rep["metrics"]["iou"]["mean"] <= 1.0
    assert sorted(p.name for p in folder.rglob("*")) == sorted(  # the data folder is only read
        ["images", "masks"] + [f"case{i}.jpg" for i in range(5)] + [f"case{i}.png" for i in range(5)])


def test_converted_checkpoint_gives_the_same_metrics_as_its_run(capsys, run_dir, tmp_path):
    from lgmsnet_jax import convert
    from lgmsnet_jax.training import builders

    model, config = builders.restore_model(run_dir, "best")
    convert.save_converted(model, tmp_path / "conv", {"name": NET, "ndim": 2, "in_channels": 3, "num_classes": 1})
    ref = _evaluate(capsys, "--workdir", str(run_dir), "--split", "val")
    rep = _evaluate(capsys, "--workdir", str(tmp_path / "conv"), "--dataset", "synthetic", "--split", "val",
                    "--image_size", "32", "--normalize", config.normalize, "--batch_size", "6")
    assert rep["checkpoint_step"] is None and rep["model"].startswith("converted reference checkpoint")
    # load_source("synthetic") draws 32 examples by default, the run used 16: compare the common ones per image.
    with open(ref["csv"], newline="") as f:
        a = {r["id"]: float(r["iou"]) for r in csv.DictReader(f)}
    with open(rep["csv"], newline="") as f:
        b = {r["id"]: float(r["iou"]) for r in csv.DictReader(f)}
    assert len(b) == 32 and all(b[i] == pytest.approx(a[i], abs=1e-6) for i in a)
    # A converted checkpoint carries no dataset: asking for one is an error, not a guess.
    assert evaluate.main(["--workdir", str(tmp_path / "conv")]) == 2
    assert "--dataset is required for a converted reference checkpoint" in capsys.readouterr().err


def test_readable_report_names_model_split_and_metrics(capsys, run_dir, tmp_path):
    assert evaluate.main(["--workdir", str(run_dir), "--split", "val", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    step = re.fullmatch(rf"{re.escape(str(run_dir))} step (\d+) \(best\) on synthetic/val: 16 images", lines[0])
    assert step and re.match(r"IOU 0\.\d{4} \+- 0\.\d{4}  F1 ", lines[1])
    assert re.match(r"95% CI of the mean \(bootstrap over images\): IOU \[0\.\d{4}, [01]\.\d{4}\]  F1 ", lines[2])
    assert lines[3].endswith(f"synthetic-val-step{step.group(1)}.csv")


def test_unknown_checkpoint_step_is_a_clear_error(capsys, run_dir):
    assert evaluate.main(["--workdir", str(run_dir), "--checkpoint", "999"]) == 2
    assert re.search(r"has no checkpoint at step 999; available: \[(\d+, )*12\]", capsys.readouterr().err)


def test_evaluate_3d_run_reproduces_its_validation_report(shared_dir, tmp_path, capsys):
    """A 3D run (ACDC smoke, tiny net): per-class Dice and HD95 of the best checkpoint equal the run's report."""
    import jax

    from configs import acdc
    from lgmsnet_jax.training import loop

    c = acdc.get_config("smoke")
    c.data_dir = str(shared_dir / "data" / "ACDC")
    c.cache_dir = str(tmp_path / "cache")
    c.model_name = NET
    c.model = {"width": 4}
    # optax.adamw's bias correction fails under the suite's strict promotion; train.py runs with the default.
    with jax.numpy_dtype_promotion("standard"):
        summary = loop.train_and_evaluate(c, tmp_path / "run")
    capsys.readouterr()  # the trainer's own report
    rep = _evaluate(capsys, "--workdir", str(tmp_path / "run"))
    val = summary["metrics"]["val"]
    assert rep["split"] == "val" and rep["count"] == val["num_cases"] == 1
    for k in ("dice", "hd95", "dice/RV", "dice/Myo", "dice/LV", "hd95/LV"):
        assert rep["metrics"][k]["mean"] == pytest.approx(val[k], rel=1e-6, nan_ok=True), k
    with open(rep["csv"], newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["id"] == "patient007_frame01" and set(row) >= {"dice/RV", "hd95/Myo"}
    # The same run segments a NIfTI volume with its own preprocessing and window (predict's 3D path for a workdir).
    import nibabel as nib

    from lgmsnet_jax import predict
    vol = np.random.default_rng(0).uniform(0, 1, (30, 26, 9)).astype(np.float32)
    affine = np.diag([1.4, 1.4, 8.0, 1.0])
    (tmp_path / "vols").mkdir()
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "vols" / "heart.nii"))
    assert predict.main(["--workdir", str(tmp_path / "run"), "--input", str(tmp_path / "vols" / "heart.nii"),
                         "--output", str(tmp_path / "pred")]) == 0
    out = nib.load(str(tmp_path / "pred" / "heart_labels.nii.gz"))
    assert out.shape == vol.shape and np.asarray(out.dataobj).max() < c.num_classes
    np.testing.assert_allclose(out.affine, affine)


def test_bootstrap_interval_matches_the_normal_approximation_and_ignores_nans():
    from lgmsnet_jax import evaluate

    v = np.random.default_rng(3).normal(0.8, 0.2, size=400)
    lo, hi = evaluate.bootstrap_ci95(np.concatenate([v, [np.nan] * 7]))
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert lo < v.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert evaluate.bootstrap_ci95(v) == evaluate.bootstrap_ci95(v)  # fixed seed: the same interval every run
    assert evaluate.bootstrap_ci95(np.full(9, 0.5)) == pytest.approx([0.5, 0.5])
    assert np.isnan(evaluate.bootstrap_ci95(np.array([np.nan]))).all()
