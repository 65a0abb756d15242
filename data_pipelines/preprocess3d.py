"""Deterministic 3D preprocessing (RAS orientation, resampling, intensity scaling, foreground crop)
and its on-disk cache of memory-mappable .npy files, one folder per case.

Mirrors the deterministic prefix of the UNETR/BTCV MONAI pipeline (reference_lgmsnet.md §6):
Orientationd("RAS") -> Spacingd(bilinear image, nearest label) -> ScaleIntensityRanged -> CropForegroundd.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from data_pipelines import volumes

# Bump when the cached arrays would change for the same config (invalidates old caches).
_CACHE_VERSION = 1
_INTENSITY_MODES = ("ct_window", "minmax", "zscore", "none")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What the cached arrays depend on.

    Attributes:
      spacing_mm: target voxel size along (I, J, K) after RAS orientation; None keeps the native one.
      intensity: "ct_window" (clip `window` to `scaled_range`, MONAI ScaleIntensityRanged),
        "minmax" (per volume to [0, 1]), "zscore" (per volume), or "none" (reader's values).
      window: (a_min, a_max) input range for "ct_window", e.g. HU (-175, 250).
      scaled_range: (b_min, b_max) output range for "ct_window".
      orient_ras: reorient to the closest RAS+ voxel order first.
      crop_foreground: crop to the bounding box of image > foreground_threshold (after scaling).
      foreground_threshold: threshold of that crop (MONAI's default select_fn is x > 0).
    """

    spacing_mm: tuple[float, float, float] | None = None
    intensity: str = "none"
    window: tuple[float, float] = (-175.0, 250.0)
    scaled_range: tuple[float, float] = (0.0, 1.0)
    orient_ras: bool = True
    crop_foreground: bool = True
    foreground_threshold: float = 0.0

    def __post_init__(self):
        if self.intensity not in _INTENSITY_MODES:
            raise ValueError(f"intensity={self.intensity!r}; expected one of {_INTENSITY_MODES}")
        if self.spacing_mm is not None and (len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0):
            raise ValueError(f"spacing_mm must be 3 positive values, got {self.spacing_mm}")

    def fingerprint(self) -> str:
        """12 hex digits identifying the config (and cache version)."""
        blob = json.dumps({"v": _CACHE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# Array transforms (pure numpy, image (I, J, K) float32 and label (I, J, K) uint8 or None)
# ----------------------------------------------------------------------------------------------

def reorient_to_ras(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray):
    """Permutes/flips voxel axes so that they point (as closely as possible) to R, A, S.

    Same result as `nibabel.as_closest_canonical`; the world position of every voxel is unchanged.

    Args:
      image: (I, J, K) array.
      label: (I, J, K) array or None.
      affine: (4, 4) voxel -> world.

    Returns:
      (image, label, affine) in RAS voxel order.
    """
    from nibabel import orientations as nio

    ornt = nio.io_orientation(affine)
    if np.array_equal(ornt, nio.axcodes2ornt(("R", "A", "S"))):
        return image, label, affine
    new_affine = affine @ nio.inv_ornt_aff(ornt, image.shape)
    image = np.ascontiguousarray(nio.apply_orientation(image, ornt))
    if label is not None:
        label = np.ascontiguousarray(nio.apply_orientation(label, ornt))
    return image, label, new_affine


def resample_to_spacing(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray,
                        spacing_mm: Sequence[float]):
    """Resamples to a target voxel size: trilinear for the image, nearest for the label.

    The first voxel centre keeps its world position (MONAI Spacing keeps the affine origin); the
    output has round(n * old / new) voxels per axis, and samples past the last input voxel
    repeat the edge value.

    Args:
      image: (I, J, K) float32.
      label: (I, J, K) uint8 or None.
      affine: (4, 4) voxel -> world.
      spacing_mm: target voxel size along (I, J, K).

    Returns:
      (image, label, affine) on the new grid.
    """
    old = np.linalg.norm(affine[:3, :3], axis=0)
    new = np.asarray(spacing_mm, np.float64)
    if np.allclose(old, new, rtol=1e-6, atol=0.0):
        return image, label, affine
    ratio = new / old  # input voxels per output voxel
    out_shape = tuple(max(1, int(round(n / r))) for n, r in zip(image.shape, ratio))
    image = scipy.ndimage.affine_transform(image.astype(np.float32), ratio, output_shape=out_shape,
                                           order=1, mode="nearest", prefilter=False)
    if label is not None:
        label = scipy.ndimage.affine_transform(label, ratio, output_shape=out_shape, order=0,
                                               mode="nearest", prefilter=False)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * ratio[None, :]
    return image, label, new_affine


def scale_intensity(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Applies the config's intensity mode.

    Args:
      image: (I, J, K) float32.
      config: intensity, window and scaled_range are read.

    Returns:
      (I, J, K) float32.
    """
    image = image.astype(np.float32)
    if config.intensity == "ct_window":
        (a0, a1), (b0, b1) = config.window, config.scaled_range
        out = (image - np.float32(a0)) / np.float32(a1 - a0) * np.float32(b1 - b0) + np.float32(b0)
        return np.clip(out, b0, b1).astype(np.float32)
    if config.intensity == "minmax":
        lo, hi = float(image.min()), float(image.max())
        return ((image - np.float32(lo)) / np.float32(max(hi - lo, 1e-8))).astype(np.float32)
    if config.intensity == "zscore":
        return ((image - np.float32(image.mean())) / np.float32(max(float(image.std()), 1e-8))).astype(np.float32)
    return image


def foreground_box(image: np.ndarray, threshold: float) -> tuple[slice, slice, slice]:
    """Bounding box of image > threshold (the whole volume when nothing exceeds it).

    Args:
      image: (I, J, K) array.
      threshold: strict lower bound of foreground.

    Returns:
      Three slices.
    """
    fg = image > threshold
    if not fg.any():
        return tuple(slice(0, n) for n in image.shape)
    box = []
    for axis in range(3):
        hit = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def preprocess_volume(vol: volumes.Volume, config: PreprocessConfig):
    """Runs the deterministic pipeline on one volume.

    Args:
      vol: a Volume from volumes.load_case.
      config: the PreprocessConfig.

    Returns:
      (image (I, J, K) float32, label (I, J, K) uint8 or None, affine (4, 4), meta dict).
    """
    image, label, affine = vol.image, vol.label, vol.affine
    meta = {"name": vol.name, "source_shape": list(image.shape), "source_spacing_mm": list(vol.spacing)}
    if config.orient_ras:
        image, label, affine = reorient_to_ras(image, label, affine)
    if config.spacing_mm is not None:
        image, label, affine = resample_to_spacing(image, label, affine, config.spacing_mm)
    image = scale_intensity(image, config)
    box = tuple(slice(0, n) for n in image.shape)
    if config.crop_foreground:
        box = foreground_box(image, config.foreground_threshold)
        image = np.ascontiguousarray(image[box])
        label = None if label is None else np.ascontiguousarray(label[box])
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], np.float64) + affine[:3, 3]
    meta.update(shape=list(image.shape), spacing_mm=[float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
                affine=affine.tolist(), crop_start=[s.start for s in box])
    return image, label, affine, meta


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------

def cache_dir_for(cache_root: str | pathlib.Path, dataset: str, config: PreprocessConfig) -> pathlib.Path:
    """`<cache_root>/<dataset>-<fingerprint>`: a new config never reuses another config's arrays."""
    return pathlib.Path(cache_root) / f"{dataset}-{config.fingerprint()}"


def _source_stamp(ref: volumes.CaseRef) -> list:
    paths = [p for p in (ref.image_path, ref.label_path) if p is not None]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _is_cached(case_dir: pathlib.Path, ref: volumes.CaseRef) -> bool:
    meta_path = case_dir / "meta.json"
    if not meta_path.is_file():
        return False
    return json.loads(meta_path.read_text()).get("source") == _source_stamp(ref)


def _write_case(ref: volumes.CaseRef, cache_dir: pathlib.Path, config: PreprocessConfig) -> str:
    """Preprocesses one case into `cache_dir/<name>/`; returns '' or a problem string."""
    try:
        vol = volumes.load_case(ref)
        image, label, _, meta = preprocess_volume(vol, config)
    except ImportError:
        raise  # a missing package is not a bad case: one clear error instead of one line per case
    except Exception as e:  # noqa: BLE001 -- reported with the case name by build_cache
        return f"{ref.name}: {type(e).__name__}: {e}"
    meta["source"] = _source_stamp(ref)
    meta["config"] = dataclasses.asdict(config)
    final = cache_dir / ref.name
    # Write into a private folder and rename it: an interrupted run never leaves a half case.
    tmp = cache_dir / f".{ref.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "image.npy", image)
    if label is not None:
        np.save(tmp / "label.npy", label)
        # Flat indices of foreground voxels, so patch sampling never scans the volume (MONAI FgBgToIndices).
        np.save(tmp / "fg_index.npy", np.flatnonzero(label > 0).astype(np.int64))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return ""


def build_cache(refs: Sequence[volumes.CaseRef], cache_dir: str | pathlib.Path, config: PreprocessConfig,
                num_classes: int, *, workers: int = 1) -> list[str]:
    """Validates all cases, then preprocesses the ones not cached yet into `cache_dir`.

    Cases are checked up front (volumes.validate_cases) so a bad file fails before any work.
    A case is reused when its meta.json records the same source files (size, mtime).

    Args:
      refs: cases to cache.
      cache_dir: folder for this config (see cache_dir_for); holds `preprocess.json`.
      config: the PreprocessConfig.
      num_classes: classes including background, for label validation.
      workers: processes used for preprocessing (spawned, so safe after JAX was imported).

    Returns:
      The case names, in the order of refs. Raises BadVolumesError listing every failing case.
    """
    volumes.validate_cases(refs, num_classes)
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = cache_dir / "preprocess.json"
    cfg_json = {"version": _CACHE_VERSION, **dataclasses.asdict(config)}
    if cfg_path.is_file() and json.loads(cfg_path.read_text()) != json.loads(json.dumps(cfg_json)):
        raise ValueError(f"{cfg_path} was written for another preprocessing config; use a new cache_dir")
    cfg_path.write_text(json.dumps(cfg_json, indent=1))
    todo = [r for r in refs if not _is_cached(cache_dir / r.name, r)]
    logging.info("3D cache %s: %d cached, %d to preprocess", cache_dir, len(refs) - len(todo), len(todo))
    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            problems = list(pool.map(_write_case, todo, [cache_dir] * len(todo), [config] * len(todo)))
    else:
        problems = [_write_case(r, cache_dir, config) for r in todo]
    problems = [p for p in problems if p]
    if problems:
        raise volumes.BadVolumesError(problems)
    return [r.name for r in refs]


def load_cached(cache_dir: str | pathlib.Path, name: str, *, mmap: bool = True) -> dict:
    """Opens one cached case.

    Args:
      cache_dir: the folder given to build_cache.
      name: case name.
      mmap: memory-map the arrays (read-only) instead of reading them.

    Returns:
      {"image": (I, J, K) float32, "label": (I, J, K) uint8 or None, "fg_index": (F,) int64 or
      None, "meta": dict with shape, spacing_mm, affine, crop_start, source}.
    """
    case_dir = pathlib.Path(cache_dir) / name
    meta_path = case_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"case {name!r} is not in the 3D cache {cache_dir} (run build_cache)")
    mode = "r" if mmap else None
    out = {"meta": json.loads(meta_path.read_text()),
           "image": np.load(case_dir / "image.npy", mmap_mode=mode), "label": None, "fg_index": None}
    if (case_dir / "label.npy").is_file():
        out["label"] = np.load(case_dir / "label.npy", mmap_mode=mode)
        out["fg_index"] = np.load(case_dir / "fg_index.npy", mmap_mode=mode)
    return out
