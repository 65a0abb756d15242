"""The 3D task end to end: configs, data preparation, patch training on ACDC volumes, sliding-window validation,
checkpoint/resume and the final report."""

import json

import jax
import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from configs import acdc, btcv, kits23
from lgmsnet_jax.models import register_model, registered_models
from lgmsnet_jax.training import checkpoint, loop, seg3d, writers


class _Tiny3D(nnx.Module):
    """Two convs: the fastest network that still learns, for testing the 3D loop itself."""

    def __init__(self, ndim, in_channels, num_classes, rngs, **kw):
        self.conv1 = nnx.Conv(in_channels, 4, (3, 3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(4, num_classes, (1, 1, 1), rngs=rngs)

    def __call__(self, x, train=None):
        return self.conv2(nnx.relu(self.conv1(x)))


if "tiny3d_test" not in registered_models():
    register_model("tiny3d_test")(_Tiny3D)


@pytest.fixture(autouse=True)
def _standard_promotion_for_adamw():
    # optax.adamw's bias correction (b1 ** count, count int32) fails under the suite's strict dtype promotion
    # (TypePromotionError); train.py runs with JAX's default "standard" promotion, as here.
    with jax.numpy_dtype_promotion("standard"):
        yield


def _acdc_smoke(shared_dir, tmp_path, tiny: bool):
    c = acdc.get_config("smoke")
    c.data_dir = str(shared_dir / "data" / "ACDC")
    c.cache_dir = str(tmp_path / "cache")
    if tiny:
        c.model_name = "tiny3d_test"
        c.model = {}
    return c


def test_resumed_3d_run_matches_uninterrupted_run(shared_dir, tmp_path):
    losses = {"full": {}, "resumed": {}}
    full = loop.train_and_evaluate(_acdc_smoke(shared_dir, tmp_path, True), tmp_path / "full",
                                   on_step=lambda s, m: losses["full"].__setitem__(s, m["loss"]))
    first = loop.train_and_evaluate(_acdc_smoke(shared_dir, tmp_path, True), tmp_path / "resumed",
                                    stop_after_steps=1,
                                    on_step=lambda s, m: losses["resumed"].__setitem__(s, m["loss"]))
    assert first == {"stopped_at": 1}
    second = loop.train_and_evaluate(_acdc_smoke(shared_dir, tmp_path, True), tmp_path / "resumed",
                                     on_step=lambda s, m: losses["resumed"].__setitem__(s, m["loss"]))
    # Step 2 of the resumed run saw the same parameters and the same patches as the uninterrupted one.
    assert losses["resumed"] == losses["full"] and sorted(losses["full"]) == [1, 2]
    assert second["metrics"] == full["metrics"]
    val = full["metrics"]["val"]
    assert val["num_cases"] == 1 and set(full["class_names"]) == {"RV", "Myo", "LV"}
    for name in ("RV", "Myo", "LV"):
        assert 0.0 <= val[f"dice/{name}"] <= 1.0 and val[f"hd95/{name}"] > 0.0
    per_case = json.loads((tmp_path / "full" / loop.PER_CASE_FILE).read_text())
    assert list(per_case) == ["patient007_frame01"]  # first validation volume of the committed split
    assert len(per_case["patient007_frame01"]["dice"]) == 3


def test_acdc_smoke_trains_lgmsnet_3d_on_two_volumes(shared_dir, tmp_path):
    """The real (narrow) 3D LGMSNet: 2 steps on 2 ACDC volumes, 32^3 patches, then validation and report."""
    seen = {}
    summary = loop.train_and_evaluate(_acdc_smoke(shared_dir, tmp_path, False), tmp_path / "run",
                                      on_step=lambda s, m: seen.__setitem__(s, m))
    assert sorted(seen) == [1, 2] and all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in seen.values())
    val = summary["metrics"]["val"]
    assert 0.0 <= val["dice"] <= 1.0 and np.isfinite(val["hd95"])
    run = tmp_path / "run"
    assert (run / "config.json").is_file() and (run / loop.SUMMARY_FILE).is_file()
    records = writers.read_jsonl(run / "metrics.jsonl")
    assert any("val/dice/LV" in r for r in records) and any("train/loss" in r for r in records)
    mngr = checkpoint.make_manager(run, create=False)
    assert mngr.latest_step() == 2
    mngr.close()


def _btcv_folder(root, n=3, shape=(40, 36, 30)):
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    entries = []
    for i in range(1, n + 1):
        hu = rng.normal(-500, 300, size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[10:20, 10:20, 8:16] = 1 + (i % 13)
        hu[label > 0] = 60.0
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(hu, affine), str(root / "imagesTr" / f"img{i:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"label{i:04d}.nii.gz"))
        entries.append({"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"})
    (root / "dataset_0.json").write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))


def test_btcv_config_prepares_ct_patches_from_the_dataset_json(tmp_path):
    _btcv_folder(tmp_path / "BTCV")
    c = btcv.get_config("smoke")
    c.data_dir = str(tmp_path / "BTCV")
    c.cache_dir = str(tmp_path / "cache")
    data = seg3d.prepare_data(c)
    assert data.train_names == ["img0001", "img0002"] and data.val_names == ["img0003"]
    assert len(data.class_names) == 13 and c.num_classes == 14
    case = seg3d.preprocess3d.load_cached(data.cache_dir, "img0001")
    # CT window: 60 HU -> (60 + 175) / 425 inside the organ, everything in [0, 1].
    np.testing.assert_allclose(np.asarray(case["image"])[np.asarray(case["label"]) > 0], (60 + 175) / 425, rtol=1e-6)
    assert 0.0 <= float(case["image"].min()) and float(case["image"].max()) <= 1.0
    batch = seg3d.train_dataset(data, c, volumes_per_batch=1)[0]
    assert batch["image"].shape == (2, 32, 32, 32, 1) and batch["mask"].max() <= 13


def test_kits23_config_writes_a_seeded_case_split(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        d = tmp_path / "kits" / f"case_{i:05d}"
        d.mkdir(parents=True)
        seg = np.zeros((20, 20, 12), np.uint8)
        seg[5:10, 5:10, 3:6] = rng.integers(1, 4)
        nib.save(nib.Nifti1Image(rng.normal(0, 100, seg.shape).astype(np.float32), np.eye(4)), str(d / "imaging.nii.gz"))
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(d / "segmentation.nii.gz"))
    c = kits23.get_config("smoke")
    c.data_dir = str(tmp_path / "kits")
    c.cache_dir = str(tmp_path / "cache")
    data = seg3d.prepare_data(c, workdir=tmp_path / "run")
    assert len(data.train_names) == 3 and len(data.val_names) == 1
    written = json.loads((tmp_path / "run" / "split_kits23_seed0.json").read_text())
    assert written["val"] == data.val_names and written["seed"] == 0
    assert seg3d.prepare_data(c, workdir=tmp_path / "run2").val_names == data.val_names  # same seed, same split


def test_prepare_data_rejects_a_class_count_that_does_not_fit_the_dataset(tmp_path):
    c = kits23.get_config("smoke")
    c.num_classes = 3
    with pytest.raises(ValueError, match="kits23 has 4 classes, config.num_classes=3"):
        seg3d.prepare_data(c)


def test_patch_metrics_pool_foreground_classes():
    import jax.numpy as jnp

    labels = np.zeros((2, 2, 2, 2, 1), np.int32)
    labels[0, 0, 0, :, 0] = 1          # 2 voxels of class 1
    pred = np.zeros((2, 2, 2, 2), np.int32)
    pred[0, 0, 0, 0] = 1               # 1 of them found
    pred[0, 1, 1, 1] = 2               # and a class-2 false positive
    logits = np.eye(3, dtype=np.float32)[pred] * 5.0
    dice = seg3d.patch_metrics(jnp.asarray(logits), {"mask": jnp.asarray(labels)})["dice"]
    np.testing.assert_allclose(dice, [2 * 1 / (2 + 2), 1.0])  # sample 2: nothing anywhere -> 1
