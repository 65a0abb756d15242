"""3D preprocessing: RAS orientation, resampling, CT windowing, foreground crop, .npy cache."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import preprocess3d, volumes

# Voxel axes: i -> world -A (0.8 mm), j -> S (2.0 mm), k -> R (1.2 mm).
AFFINE = np.array([[0.0, 0.0, 1.2, 10.0],
                   [-0.8, 0.0, 0.0, 20.0],
                   [0.0, 2.0, 0.0, -5.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (5, 6, 7)
MARK = (1, 2, 3)  # voxel holding a unique image value and label 2


def _marked_case(tmp_path):
    image = np.zeros(SHAPE, np.float32)
    label = np.zeros(SHAPE, np.uint8)
    image[MARK] = 7.0
    label[MARK] = 2
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(image, AFFINE), str(tmp_path / "imagesTr" / "img0001.nii.gz"))
    nib.save(nib.Nifti1Image(label, AFFINE), str(tmp_path / "labelsTr" / "label0001.nii.gz"))
    return volumes.list_btcv(tmp_path, json_name=None)[0]


def test_nifti_round_trip_reorients_to_ras_and_resamples(tmp_path):
    ref = _marked_case(tmp_path)
    vol = volumes.load_case(ref)
    world = AFFINE @ np.array([*MARK, 1.0])
    np.testing.assert_allclose(world[:3], (13.6, 19.2, -1.0))

    image, label, affine = preprocess3d.reorient_to_ras(vol.image, vol.label, vol.affine)
    # R <- k, A <- i reversed, S <- j.
    assert image.shape == (7, 5, 6)
    np.testing.assert_allclose(affine[:3, :3], np.diag([1.2, 0.8, 2.0]))
    ras_mark = (3, SHAPE[0] - 1 - MARK[0], 2)
    assert image[ras_mark] == 7.0 and label[ras_mark] == 2
    np.testing.assert_allclose(affine @ np.array([*ras_mark, 1.0]), world)
    canonical = nib.as_closest_canonical(nib.load(str(ref.image_path)))
    np.testing.assert_array_equal(image, canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(affine, canonical.affine)

    image, label, affine = preprocess3d.resample_to_spacing(image, label, affine, (0.6, 0.8, 1.0))
    assert image.shape == (14, 5, 12)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), (0.6, 0.8, 1.0))
    new_mark = (6, 3, 4)  # same world point on the finer grid
    np.testing.assert_allclose(affine @ np.array([*new_mark, 1.0]), world)
    assert image[new_mark] == pytest.approx(7.0) and label[new_mark] == 2
    # Linear image: half-way to the neighbour along R (1.2 mm -> 0.6 mm) is the mean of the two.
    assert image[7, 3, 4] == pytest.approx(3.5)
    # Nearest label: only values that existed, and the marked class keeps roughly its volume in mm^3.
    assert set(np.unique(label)) == {0, 2}
    assert (label == 2).sum() * 0.6 * 0.8 * 1.0 == pytest.approx(1.2 * 0.8 * 2.0, rel=0.5)


def test_ct_window_maps_hu_range_to_unit_interval():
    cfg = preprocess3d.PreprocessConfig(intensity="ct_window", window=(-175.0, 250.0))
    hu = np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0], np.float32).reshape(1, 1, 5)
    np.testing.assert_allclose(preprocess3d.scale_intensity(hu, cfg).ravel(), [0.0, 0.0, 0.5, 1.0, 1.0],
                               atol=1e-7)


def test_foreground_crop_is_the_bounding_box_of_positive_image():
    image = np.zeros((6, 7, 8), np.float32)
    image[1, 2, 3] = 0.5
    image[4, 5, 3] = 0.1
    assert preprocess3d.foreground_box(image, 0.0) == (slice(1, 5), slice(2, 6), slice(3, 4))
    assert preprocess3d.foreground_box(np.zeros((2, 3, 4)), 0.0) == (slice(0, 2), slice(0, 3), slice(0, 4))


def test_preprocess_crop_shifts_affine_origin_to_the_crop_corner():
    image = np.zeros((6, 7, 8), np.float32)
    image[2:4, 3:5, 1:2] = 1.0
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (5.0, 6.0, 7.0)
    cfg = preprocess3d.PreprocessConfig(crop_foreground=True)
    out, _, new_affine, meta = preprocess3d.preprocess_volume(
        volumes.Volume("c", image, None, affine), cfg)
    assert out.shape == (2, 2, 1) and meta["crop_start"] == [2, 3, 1]
    np.testing.assert_allclose(new_affine[:3, 3], (5.0 + 4.0, 6.0 + 9.0, 7.0 + 4.0))


def test_build_cache_memmaps_arrays_and_skips_cached_cases(tmp_path):
    ref = _marked_case(tmp_path)
    cfg = preprocess3d.PreprocessConfig(spacing_mm=(0.6, 0.8, 1.0), intensity="none", crop_foreground=False)
    cache = preprocess3d.cache_dir_for(tmp_path / "cache", "btcv", cfg)
    assert preprocess3d.build_cache([ref], cache, cfg, num_classes=3) == ["img0001"]
    case = preprocess3d.load_cached(cache, "img0001")
    assert isinstance(case["image"], np.memmap) and case["image"].dtype == np.float32
    assert case["image"].shape == (14, 5, 12) and case["label"].dtype == np.uint8
    np.testing.assert_array_equal(case["fg_index"], np.flatnonzero(np.asarray(case["label"]) > 0))
    assert case["meta"]["spacing_mm"] == pytest.approx([0.6, 0.8, 1.0])

    stamp = os.stat(cache / "img0001" / "image.npy").st_mtime_ns
    preprocess3d.build_cache([ref], cache, cfg, num_classes=3)
    assert os.stat(cache / "img0001" / "image.npy").st_mtime_ns == stamp  # reused, not rewritten

    other = preprocess3d.PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0))
    assert preprocess3d.cache_dir_for(tmp_path / "cache", "btcv", other) != cache
    with pytest.raises(ValueError, match="another preprocessing config"):
        preprocess3d.build_cache([ref], cache, other, num_classes=3)
    assert json.loads((cache / "preprocess.json").read_text())["spacing_mm"] == [0.6, 0.8, 1.0]


def test_build_cache_fails_up_front_on_bad_case(tmp_path):
    ref = _marked_case(tmp_path)
    cfg = preprocess3d.PreprocessConfig()
    with pytest.raises(volumes.BadVolumesError, match=r"img0001: label values \[2\] outside the classes 0..1"):
        preprocess3d.build_cache([ref], tmp_path / "cache", cfg, num_classes=2)
    assert not (tmp_path / "cache").exists()  # nothing written before validation passed
