"""`python -m lgmsnet_jax.predict` end to end on CPU: 2D images of any size (masks at the original size, overlays,
probabilities), no silent overwrites, and 3D NIfTI in/out with the input's affine."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import data_pipelines as dp
from lgmsnet_jax import predict
from lgmsnet_jax.inference import predict2d
from test_evaluate import NET, trained_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


def _inputs(folder):
    """Synthetic ellipse images at three odd sizes, one greyscale, and their true masks (by stem)."""
    folder.mkdir(parents=True)
    truth = {}
    for i, (hw, ext, mode) in enumerate([((40, 52), "jpg", "RGB"), ((37, 61), "png", "RGB"), ((50, 30), "png", "L")]):
        ex = dp.SyntheticSource(1, hw, seed=100 + i)[0]
        Image.fromarray(ex["image"]).convert(mode).save(folder / f"img{i}.{ext}")
        truth[f"img{i}"] = ex["mask"].astype(bool)
    return truth


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_predict_writes_masks_at_original_size_overlays_and_probabilities(run_dir, tmp_path, capsys):
    truth = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert predict.main(["--workdir", str(run_dir), "--input", str(tmp_path / "in"), "--output", str(out),
                         "--probabilities", "npy", "--batch_size", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"img{i}_{k}" for i in range(3) for k in ("mask.png", "overlay.png", "prob.npy"))
    for stem, gt in truth.items():
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        prob = np.load(out / f"{stem}_prob.npy")
        over = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        image = dp.decode_image(next((tmp_path / "in").glob(f"{stem}.*")))
        assert mask.shape == gt.shape == prob.shape and over.shape == gt.shape + (3,)
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, prob > 0.5)
        # The run reached val IoU ~0.85 on 32x32 ellipses; mapped back to each image's own size (non-square,
        # greyscale) the mask must still sit on the ellipse: a flipped or transposed mapping would not.
        assert _iou(mask == 255, gt) > 0.6, stem
        changed = np.any(over != image, axis=-1)
        edge = predict2d.contour(mask == 255)
        assert changed.any() and not (changed & ~edge).any()
        assert np.all(over[edge] == predict2d.CONTOUR_RGB)


def test_predict_never_overwrites_unless_asked(run_dir, tmp_path, capsys):
    _inputs(tmp_path / "in")
    argv = ["--workdir", str(run_dir), "--input", str(tmp_path / "in" / "img1.png"), "--output", str(tmp_path / "o")]
    assert predict.main(argv) == 0
    mask = tmp_path / "o" / "img1_mask.png"
    os.utime(mask, (1, 1))
    capsys.readouterr()
    assert predict.main(argv) == 2
    assert "2 output file(s) exist" in capsys.readouterr().err and mask.stat().st_mtime == 1
    assert predict.main([*argv, "--overwrite"]) == 0 and mask.stat().st_mtime > 1


def test_pad_mode_predicts_at_native_resolution(run_dir, tmp_path):
    from lgmsnet_jax.training import builders

    _inputs(tmp_path / "in")
    src = tmp_path / "in" / "img0.jpg"
    assert predict.main(["--workdir", str(run_dir), "--input", str(src), "--output", str(tmp_path / "o"),
                         "--fit", "pad", "--probabilities", "npy", "--no_overlay"]) == 0
    model, config = builders.restore_model(run_dir, "best")
    x = dp.normalize(dp.decode_image(src), config.normalize)[None]
    want = np.asarray(nnx.sigmoid(model(jnp.asarray(x), train=False)))[0, ..., 0]
    np.testing.assert_allclose(np.load(tmp_path / "o" / "img0_prob.npy"), want, atol=1e-6)
    assert not (tmp_path / "o" / "img0_overlay.png").exists()


def test_prepare_pads_to_the_size_multiple_and_crops_back():
    image = np.full((37, 61, 3), 200, np.uint8)
    prep = predict2d.prepare(image, fit="pad", grid=(32, 32), size_multiple=16, normalize="unit")
    assert prep.x.shape == (48, 64, 3) and prep.crop == (37, 61)
    np.testing.assert_allclose(prep.x[:37, :61], 200 / 255, rtol=1e-6)
    assert not prep.x[37:].any() and not prep.x[:, 61:].any()
    assert predict2d.to_original(np.ones((48, 64, 1), np.float32), prep).shape == (37, 61, 1)


def test_to_original_keeps_values_and_orientation():
    prep = predict2d.Prepared(np.zeros((32, 32, 3), np.float32), (40, 100), None)
    const = predict2d.to_original(np.full((32, 32, 1), 0.7, np.float32), prep)
    assert const.shape == (40, 100, 1)
    np.testing.assert_allclose(const, 0.7, atol=1e-6)
    ramp = np.broadcast_to(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None], (32, 32, 1))
    back = predict2d.to_original(np.ascontiguousarray(ramp), prep)[..., 0]
    assert np.all(np.diff(back[20]) >= 0) and back[20, 0] < 0.05 and back[20, -1] > 0.95


def test_overlay_draws_only_the_contour():
    image = np.zeros((10, 10, 3), np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    mask[3:7, 3:7] = 255
    out = predict2d.overlay(image, mask, thickness=1)
    painted = np.all(out == predict2d.CONTOUR_RGB, axis=-1)
    assert painted.sum() == 12 and painted[3, 3:7].all() and not painted[4:6, 4:6].any()
    assert not out[~painted].any()


def _threshold_net_3d(tmp_path):
    """A converted 3D checkpoint whose class 1 is exactly 'scaled intensity > 0.5' (HU > 37.5 in BTCV's window)."""
    from lgmsnet_jax import convert
    from lgmsnet_jax.models import build_model

    model = build_model(NET, ndim=3, in_channels=1, num_classes=2, width=1)
    k = np.zeros((3, 3, 3, 1, 1), np.float32)
    k[1, 1, 1] = 1.0
    model.conv.kernel[...] = jnp.asarray(k)
    model.conv.bias[...] = jnp.zeros((1,), jnp.float32)
    model.bn.mean[...], model.bn.var[...] = jnp.zeros((1,)), jnp.full((1,), 1.0 - 1e-5)  # identity in eval
    model.head.kernel[...] = jnp.asarray([[[[[0.0, 1.0]]]]], jnp.float32)
    model.head.bias[...] = jnp.asarray([0.5, 0.0], jnp.float32)
    return convert.save_converted(model, tmp_path / "conv3d",
                                  {"name": NET, "ndim": 3, "in_channels": 1, "num_classes": 2, "width": 1})


def test_predict_3d_nifti_keeps_the_input_grid_and_affine(tmp_path, capsys):
    import nibabel as nib

    ckpt = _threshold_net_3d(tmp_path)
    vol = np.full((20, 24, 12), -500.0, np.float32)
    vol[3:12, 14:22, 2:7] = 200.0  # an off-centre box: a wrong axis order or flip would move it
    # LPS-ordered, permuted axes, anisotropic 3 x 2 x 4 mm voxels: exercises reorientation and resampling both ways.
    affine = np.array([[0, -2.0, 0, 30], [-3.0, 0, 0, 10], [0, 0, 4.0, -5], [0, 0, 0, 1]])
    (tmp_path / "vols").mkdir()
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "vols" / "case1.nii.gz"))
    assert predict.main(["--workdir", str(ckpt), "--input", str(tmp_path / "vols"), "--output",
                         str(tmp_path / "out"), "--image_size", "16", "16", "16"]) == 0, capsys.readouterr().err
    out = nib.load(str(tmp_path / "out" / "case1_labels.nii.gz"))
    labels = np.asarray(out.dataobj)
    assert labels.shape == vol.shape and labels.dtype == np.uint8
    np.testing.assert_allclose(out.affine, affine)
    want = vol > 37.5
    assert _iou(labels == 1, want) > 0.8
    np.testing.assert_array_equal(labels[5:10, 16:20, 3:6], 1)  # the box interior, away from resampling edges
    assert not labels[:, :10].any()
