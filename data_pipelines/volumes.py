"""3D volume readers (NIfTI in the BTCV and KiTS23 layouts, HDF5 for ACDC) and up-front validation.

Every reader returns a `Volume` whose arrays are in voxel order (i, j, k) of its affine, so the
preprocessing step (preprocess3d.py) can reorient, resample and crop all formats the same way.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Sequence

import numpy as np

# HDF5 attributes the ACDC files carry (../shared/data/SOURCES.md §3).
_ACDC_SPACING_ATTR = "spacing_zyx_mm"
_ACDC_SCALE_ATTR = "intensity_scale"
# Affines of image and label must agree to this many millimetres (header float round-off only).
_AFFINE_ATOL_MM = 1e-3


@dataclasses.dataclass(frozen=True)
class CaseRef:
    """Where one case lives on disk.

    Attributes:
      name: case id, unique within a dataset (`img0001`, `case_00000`, `patient001_frame01`).
      image_path: NIfTI image, or the HDF5 file holding both arrays.
      label_path: NIfTI label; None for HDF5 (same file) or for unlabelled cases.
      fmt: "nifti" or "hdf5".
    """

    name: str
    image_path: pathlib.Path
    label_path: pathlib.Path | None
    fmt: str


@dataclasses.dataclass
class Volume:
    """One case in memory.

    Attributes:
      name: case id.
      image: (I, J, K) float32 intensities.
      label: (I, J, K) uint8 class ids, or None for unlabelled cases.
      affine: (4, 4) float64 voxel -> world (RAS+ millimetres, NIfTI convention).
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (I, J, K): the column norms of the affine."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


class BadVolumesError(ValueError):
    """Raised with every problem found in a dataset, one line per case."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} bad volume(s):\n  " + "\n  ".join(self.problems))


# ----------------------------------------------------------------------------------------------
# Dataset layouts
# ----------------------------------------------------------------------------------------------

def list_btcv(root: str | pathlib.Path, split: str = "training",
              json_name: str | None = "dataset_0.json") -> list[CaseRef]:
    """Cases of a BTCV / Decathlon-style folder (`imagesTr/`, `labelsTr/`, a dataset json).

    Args:
      root: folder holding `imagesTr/`, `labelsTr/` and the json list.
      split: the json key to read ("training", "validation"), as in the UNETR `dataset_0.json`.
      json_name: json file in `root`; None pairs `imagesTr/imgXXXX.nii.gz` with
        `labelsTr/labelXXXX.nii.gz` (or the same file name) and ignores `split`.

    Returns:
      CaseRefs sorted by name. Raises FileNotFoundError naming the missing file.
    """
    root = pathlib.Path(root)
    if json_name is not None:
        jpath = root / json_name
        if not jpath.is_file():
            raise FileNotFoundError(f"BTCV dataset list not found: {jpath}")
        entries = json.loads(jpath.read_text())
        if split not in entries:
            raise KeyError(f"{jpath} has no '{split}' list (keys: {sorted(entries)})")
        refs = []
        for e in entries[split]:
            img = root / e["image"]
            lbl = root / e["label"] if "label" in e else None
            refs.append(CaseRef(_nifti_stem(img), img, lbl, "nifti"))
        return sorted(refs, key=lambda r: r.name)
    images = sorted((root / "imagesTr").glob("*.nii*"))
    if not images:
        raise FileNotFoundError(f"no NIfTI files in {root / 'imagesTr'}")
    refs = []
    for img in images:
        cands = [root / "labelsTr" / img.name.replace("img", "label", 1), root / "labelsTr" / img.name]
        lbl = next((c for c in cands if c.is_file()), None)
        if lbl is None:
            raise FileNotFoundError(f"no label for {img} (looked for {', '.join(map(str, cands))})")
        refs.append(CaseRef(_nifti_stem(img), img, lbl, "nifti"))
    return refs


def list_kits23(root: str | pathlib.Path) -> list[CaseRef]:
    """Cases of a KiTS23 folder: `case_XXXXX/imaging.nii.gz` + `case_XXXXX/segmentation.nii.gz`.

    Args:
      root: the `dataset/` folder of the KiTS23 repository.

    Returns:
      CaseRefs sorted by case id; a case without a segmentation gets label_path None.
    """
    root = pathlib.Path(root)
    cases = sorted(p for p in root.glob("case_*") if p.is_dir())
    if not cases:
        raise FileNotFoundError(f"no case_* folders in {root}")
    refs = []
    for c in cases:
        seg = c / "segmentation.nii.gz"
        refs.append(CaseRef(c.name, c / "imaging.nii.gz", seg if seg.is_file() else None, "nifti"))
    return refs


def list_acdc(root: str | pathlib.Path) -> list[CaseRef]:
    """Cases of the ACDC HDF5 copy (`volumes/patientXXX_frame0{1,2}.h5`, SOURCES.md §3).

    Args:
      root: the `ACDC/` folder (holding `volumes/`).

    Returns:
      CaseRefs sorted by volume id.
    """
    root = pathlib.Path(root)
    files = sorted((root / "volumes").glob("*.h5"))
    if not files:
        raise FileNotFoundError(f"no .h5 volumes in {root / 'volumes'}")
    return [CaseRef(f.stem, f, None, "hdf5") for f in files]


def list_cases(dataset: str, root: str | pathlib.Path, **kwargs) -> list[CaseRef]:
    """Dispatches to list_btcv / list_kits23 / list_acdc by dataset name."""
    readers = {"btcv": list_btcv, "kits23": list_kits23, "acdc": list_acdc}
    if dataset not in readers:
        raise ValueError(f"unknown 3D dataset {dataset!r}; expected one of {sorted(readers)}")
    return readers[dataset](root, **kwargs)


def _nifti_stem(path: pathlib.Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", path.name)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def load_case(ref: CaseRef) -> Volume:
    """Reads one case into memory.

    NIfTI: the image through `get_fdata` (scaling slope/intercept applied) as float32, the label
    rounded to uint8. HDF5 (ACDC): `image / intensity_scale`, which is the SSL4MIS [0, 1] array
    bit for bit, transposed from the stored (Z, Y, X) to (X, Y, Z) (the voxel order of the
    original NIfTI); the affine is diag(spacing) because the files carry no orientation.

    Args:
      ref: the case.

    Returns:
      The Volume. Raises ValueError naming the case for a read failure.
    """
    try:
        if ref.fmt == "nifti":
            return _load_nifti(ref)
        if ref.fmt == "hdf5":
            return _load_acdc_h5(ref)
    except (OSError, KeyError, EOFError, ValueError) as e:
        raise ValueError(f"{ref.name}: cannot read {ref.image_path}: {type(e).__name__}: {e}") from e
    raise ValueError(f"{ref.name}: unknown format {ref.fmt!r}")


def _squeeze_to_3d(arr: np.ndarray, path: pathlib.Path) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {arr.shape}")
    return arr


def _label_to_uint8(arr: np.ndarray, path: pathlib.Path) -> np.ndarray:
    rounded = np.rint(arr)
    if not np.array_equal(rounded, arr):
        raise ValueError(f"{path}: label has non-integer values")
    if rounded.min() < 0 or rounded.max() > 255:
        raise ValueError(f"{path}: label values {rounded.min()}..{rounded.max()} do not fit uint8")
    return rounded.astype(np.uint8)


def _load_nifti(ref: CaseRef) -> Volume:
    import nibabel as nib  # deferred: only NIfTI datasets need it

    img = nib.load(str(ref.image_path))
    image = _squeeze_to_3d(np.asarray(img.get_fdata(dtype=np.float32)), ref.image_path)
    label = None
    if ref.label_path is not None:
        lbl = nib.load(str(ref.label_path))
        label = _label_to_uint8(_squeeze_to_3d(np.asarray(lbl.dataobj), ref.label_path), ref.label_path)
    return Volume(ref.name, image, label, np.asarray(img.affine, np.float64))


def _load_acdc_h5(ref: CaseRef) -> Volume:
    import h5py

    with h5py.File(ref.image_path, "r") as f:
        scale = np.float32(f.attrs[_ACDC_SCALE_ATTR])
        spacing_zyx = np.asarray(f.attrs[_ACDC_SPACING_ATTR], np.float64)
        image = np.asarray(f["image"][...]).astype(np.float32) / scale
        label = np.asarray(f["label"][...])
    if label.dtype != np.uint8:
        label = _label_to_uint8(label, ref.image_path)
    affine = np.diag([*spacing_zyx[::-1], 1.0])
    return Volume(ref.name, np.ascontiguousarray(image.transpose(2, 1, 0)),
                  np.ascontiguousarray(label.transpose(2, 1, 0)), affine)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def check_case(ref: CaseRef, num_classes: int) -> list[str]:
    """Finds the problems of one case without loading its image data.

    Checks: files exist and open; image and label are 3D with equal shapes; the affines agree
    (to 1e-3 mm); label values lie in [0, num_classes). Reads headers and the label array only.

    Args:
      ref: the case.
      num_classes: number of classes including background.

    Returns:
      Problem strings, each starting with the case name; empty when the case is fine.
    """
    try:
        if ref.fmt == "nifti":
            return _check_nifti(ref, num_classes)
        if ref.fmt == "hdf5":
            return _check_h5(ref, num_classes)
        return [f"{ref.name}: unknown format {ref.fmt!r}"]
    except ImportError:
        raise  # a missing package (nibabel, h5py) is the installation's fault, not every case's
    except Exception as e:  # noqa: BLE001 -- any reader failure is reported, not raised
        return [f"{ref.name}: unreadable ({type(e).__name__}: {e})"]


def _label_problems(name: str, label: np.ndarray, num_classes: int) -> list[str]:
    values = np.unique(label)
    bad = values[(values < 0) | (values >= num_classes) | (values != np.rint(values))]
    if bad.size:
        return [f"{name}: label values {bad.tolist()[:8]} outside the classes 0..{num_classes - 1}"]
    return []


def _check_nifti(ref: CaseRef, num_classes: int) -> list[str]:
    import nibabel as nib

    for p in (ref.image_path, ref.label_path):
        if p is not None and not p.is_file():
            return [f"{ref.name}: missing file {p}"]
    img = nib.load(str(ref.image_path))
    ishape = tuple(s for s in img.shape if s != 1) if len(img.shape) > 3 else tuple(img.shape)
    if len(ishape) != 3:
        return [f"{ref.name}: image {ref.image_path} is not 3D (shape {img.shape})"]
    if ref.label_path is None:
        return []
    lbl = nib.load(str(ref.label_path))
    problems = []
    lshape = tuple(lbl.shape[:3])
    if lshape != tuple(img.shape[:3]):
        problems.append(f"{ref.name}: image shape {tuple(img.shape)} != label shape {tuple(lbl.shape)}")
    if not np.allclose(img.affine, lbl.affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
        problems.append(f"{ref.name}: image and label affines differ "
                        f"(max |diff| {np.abs(img.affine - lbl.affine).max():.4g} mm)")
    problems += _label_problems(ref.name, np.asarray(lbl.dataobj), num_classes)
    return problems


def _check_h5(ref: CaseRef, num_classes: int) -> list[str]:
    import h5py

    if not ref.image_path.is_file():
        return [f"{ref.name}: missing file {ref.image_path}"]
    with h5py.File(ref.image_path, "r") as f:
        missing = [k for k in ("image", "label") if k not in f]
        missing += [a for a in (_ACDC_SPACING_ATTR, _ACDC_SCALE_ATTR) if a not in f.attrs]
        if missing:
            return [f"{ref.name}: {ref.image_path} lacks {missing}"]
        if f["image"].ndim != 3 or f["image"].shape != f["label"].shape:
            return [f"{ref.name}: image shape {f['image'].shape} != label shape {f['label'].shape}"]
        spacing = np.asarray(f.attrs[_ACDC_SPACING_ATTR], np.float64)
        if spacing.shape != (3,) or not np.all(spacing > 0):
            return [f"{ref.name}: bad {_ACDC_SPACING_ATTR} {spacing.tolist()}"]
        return _label_problems(ref.name, np.asarray(f["label"][...]), num_classes)


def validate_cases(refs: Sequence[CaseRef], num_classes: int) -> None:
    """Checks every case up front and raises one error listing all bad cases by name.

    Args:
      refs: the cases (all splits) about to be preprocessed or trained on.
      num_classes: number of classes including background.

    Raises:
      BadVolumesError: one line per problem, each naming its case; also for duplicate names.
    """
    problems = []
    seen: set[str] = set()
    for ref in refs:
        if ref.name in seen:
            problems.append(f"{ref.name}: duplicate case name")
        seen.add(ref.name)
        problems += check_case(ref, num_classes)
    if problems:
        raise BadVolumesError(problems)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------

def acdc_patient_split(names: Sequence[str], num_val_patients: int, seed: int) -> dict[str, list[str]]:
    """Seeded train/val split of ACDC volumes by patient (both frames of a patient stay together).

    Splitting by volume would put the ED and ES frames of one heart on both sides.

    Args:
      names: volume ids `patientXXX_frameYY`.
      num_val_patients: patients in the validation part.
      seed: numpy PCG64 seed of the patient permutation (patients sorted first).

    Returns:
      {"train": sorted ids, "val": sorted ids}.
    """
    patients = sorted({n.split("_")[0] for n in names})
    if not 0 < num_val_patients < len(patients):
        raise ValueError(f"num_val_patients={num_val_patients} with {len(patients)} patients")
    perm = np.random.default_rng(seed).permutation(len(patients))
    val_patients = {patients[i] for i in perm[:num_val_patients]}
    return {"train": sorted(n for n in names if n.split("_")[0] not in val_patients),
            "val": sorted(n for n in names if n.split("_")[0] in val_patients)}


def write_split(path: str | pathlib.Path, split: dict[str, list[str]], **info) -> None:
    """Writes {"train": [...], "val": [...], **info} as JSON (info: seed, how it was made)."""
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps({**info, **split}, indent=1) + "\n")


def read_split(path: str | pathlib.Path, available: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Reads a split JSON; with `available`, raises naming any id that is not a known case.

    Args:
      path: JSON file with "train" and "val" lists.
      available: case names that exist; None skips the check.

    Returns:
      {"train": ids, "val": ids}.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    data = json.loads(path.read_text())
    split = {k: list(data[k]) for k in ("train", "val")}
    if set(split["train"]) & set(split["val"]):
        raise ValueError(f"{path}: train and val overlap: {sorted(set(split['train']) & set(split['val']))}")
    if available is not None:
        missing = sorted(set(split["train"] + split["val"]) - set(available))
        if missing:
            raise ValueError(f"{path}: ids not found in the dataset: {missing}")
    return split
