"""Readers and validation of 3D volumes: NIfTI (BTCV, KiTS23 layouts), HDF5 (ACDC)."""

import json

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import volumes

# Voxel axes: i -> world -A (0.8 mm), j -> S (2.0 mm), k -> R (1.2 mm); not RAS, not diagonal.
AFFINE = np.array([[0.0, 0.0, 1.2, 10.0],
                   [-0.8, 0.0, 0.0, 20.0],
                   [0.0, 2.0, 0.0, -5.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _write_nifti(path, arr, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def _btcv_case(root, idx, image, label, affine=AFFINE, label_affine=None):
    _write_nifti(root / "imagesTr" / f"img{idx:04d}.nii.gz", image, affine)
    _write_nifti(root / "labelsTr" / f"label{idx:04d}.nii.gz", label,
                 affine if label_affine is None else label_affine)
    return {"image": f"imagesTr/img{idx:04d}.nii.gz", "label": f"labelsTr/label{idx:04d}.nii.gz"}


def _random_case(rng, shape=(5, 6, 7), num_classes=3):
    image = rng.normal(size=shape).astype(np.float32) * 100
    label = rng.integers(0, num_classes, size=shape).astype(np.uint8)
    return image, label


def test_btcv_nifti_round_trip_keeps_arrays_and_affine(tmp_path):
    rng = np.random.default_rng(0)
    image, label = _random_case(rng)
    entries = [_btcv_case(tmp_path, 1, image, label), _btcv_case(tmp_path, 2, image + 1, label)]
    (tmp_path / "dataset_0.json").write_text(json.dumps({"training": entries[:1], "validation": entries[1:]}))

    refs = volumes.list_btcv(tmp_path, split="training")
    assert [r.name for r in refs] == ["img0001"]
    assert [r.name for r in volumes.list_btcv(tmp_path, split="validation")] == ["img0002"]
    assert [r.name for r in volumes.list_btcv(tmp_path, json_name=None)] == ["img0001", "img0002"]
    vol = volumes.load_case(refs[0])
    np.testing.assert_array_equal(vol.image, image)
    np.testing.assert_array_equal(vol.label, label)
    assert vol.label.dtype == np.uint8
    np.testing.assert_allclose(vol.affine, AFFINE)
    np.testing.assert_allclose(vol.spacing, (0.8, 2.0, 1.2), rtol=1e-6)


def test_kits23_layout_pairs_imaging_and_segmentation(tmp_path):
    rng = np.random.default_rng(1)
    image, label = _random_case(rng, num_classes=4)
    _write_nifti(tmp_path / "case_00000" / "imaging.nii.gz", image)
    _write_nifti(tmp_path / "case_00000" / "segmentation.nii.gz", label)
    _write_nifti(tmp_path / "case_00001" / "imaging.nii.gz", image)  # unlabelled case
    refs = volumes.list_kits23(tmp_path)
    assert [r.name for r in refs] == ["case_00000", "case_00001"]
    assert refs[1].label_path is None
    vol = volumes.load_case(refs[0])
    np.testing.assert_array_equal(vol.label, label)
    assert volumes.load_case(refs[1]).label is None
    volumes.validate_cases(refs, num_classes=4)


def test_acdc_reader_returns_ssl4mis_array_in_xyz_order(shared_dir):
    import h5py

    refs = volumes.list_acdc(shared_dir / "data" / "ACDC")
    assert len(refs) == 60
    ref = next(r for r in refs if r.name == "patient085_frame01")
    vol = volumes.load_case(ref)
    with h5py.File(ref.image_path, "r") as f:
        raw = f["image"][...]
        scale = np.float32(f.attrs["intensity_scale"])
        lab = f["label"][...]
    assert raw.shape == (15, 288, 184)  # (Z, Y, X) as stored
    assert vol.image.shape == (184, 288, 15)
    np.testing.assert_array_equal(vol.image, (raw.astype(np.float32) / scale).transpose(2, 1, 0))
    np.testing.assert_array_equal(vol.label, lab.transpose(2, 1, 0))
    assert vol.image.min() == 0.0 and vol.image.max() == 1.0  # SSL4MIS min-max scaling
    np.testing.assert_allclose(vol.spacing, (1.215280056, 1.215280056, 5.0))
    assert set(np.unique(vol.label)) == {0, 1, 2, 3}


def test_validate_reports_every_bad_case_by_name(tmp_path):
    rng = np.random.default_rng(2)
    image, label = _random_case(rng)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    entries = [
        _btcv_case(tmp_path, 1, image, label),                                   # fine
        _btcv_case(tmp_path, 2, image, label[:, :, :6]),                         # shape mismatch
        _btcv_case(tmp_path, 3, image, label, label_affine=shifted),             # affine mismatch
        _btcv_case(tmp_path, 4, image, (label + 5).astype(np.uint8)),            # labels 5..7 with 3 classes
        _btcv_case(tmp_path, 5, image, label),                                   # corrupted below
    ]
    (tmp_path / "imagesTr" / "img0005.nii.gz").write_bytes(b"not a nifti file")
    refs = [volumes.CaseRef(f"img{i:04d}", tmp_path / e["image"], tmp_path / e["label"], "nifti")
            for i, e in enumerate(entries, start=1)]
    with pytest.raises(volumes.BadVolumesError) as err:
        volumes.validate_cases(refs, num_classes=3)
    problems = err.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("img0002: image shape (5, 6, 7) != label shape (5, 6, 6)")
    assert problems[1].startswith("img0003: image and label affines differ (max |diff| 0.5 mm)")
    assert problems[2].startswith("img0004: label values [5, 6, 7] outside the classes 0..2")
    assert problems[3].startswith("img0005: unreadable")
    assert "img0001" not in str(err.value)


def test_validate_rejects_bad_acdc_file(tmp_path):
    import h5py

    (tmp_path / "volumes").mkdir()
    with h5py.File(tmp_path / "volumes" / "patient900_frame01.h5", "w") as f:
        f["image"] = np.zeros((3, 4, 5), np.int16)
        f["label"] = np.full((3, 4, 5), 4, np.uint8)
        f.attrs["intensity_scale"] = np.float32(1.0)
        f.attrs["spacing_zyx_mm"] = np.array([10.0, 1.5, 1.5])
    with h5py.File(tmp_path / "volumes" / "patient900_frame02.h5", "w") as f:
        f["image"] = np.zeros((3, 4, 5), np.int16)
    with pytest.raises(volumes.BadVolumesError) as err:
        volumes.validate_cases(volumes.list_acdc(tmp_path), num_classes=4)
    assert err.value.problems == [
        "patient900_frame01: label values [4] outside the classes 0..3",
        f"patient900_frame02: {tmp_path / 'volumes' / 'patient900_frame02.h5'} lacks "
        "['label', 'spacing_zyx_mm', 'intensity_scale']",
    ]


def test_acdc_split_file_is_reproduced_from_its_seed_and_keeps_patients_together(shared_dir):
    import pathlib

    import data_pipelines

    names = [r.name for r in volumes.list_acdc(shared_dir / "data" / "ACDC")]
    path = pathlib.Path(data_pipelines.__file__).parent / "splits" / "acdc" / "acdc_train40_val20_seed0.json"
    committed = volumes.read_split(path, available=names)
    assert committed == volumes.acdc_patient_split(names, num_val_patients=10, seed=0)
    assert len(committed["train"]) == 40 and len(committed["val"]) == 20
    assert sorted(committed["train"] + committed["val"]) == sorted(names)
    train_patients = {n.split("_")[0] for n in committed["train"]}
    assert not train_patients & {n.split("_")[0] for n in committed["val"]}
    assert volumes.acdc_patient_split(names, 10, seed=1) != committed


def test_read_split_names_unknown_ids(tmp_path):
    volumes.write_split(tmp_path / "s.json", {"train": ["a", "b"], "val": ["zz"]}, seed=3)
    with pytest.raises(ValueError, match=r"ids not found in the dataset: \['zz'\]"):
        volumes.read_split(tmp_path / "s.json", available=["a", "b", "c"])
