"""3D prediction of a NIfTI volume: the run's deterministic preprocessing (RAS, spacing, intensity), sliding-window
inference on the device, and the label map taken back to the input's own voxel grid and affine.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np
import scipy.ndimage

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A converted reference checkpoint carries no preprocessing: the 3D reference model is BTCV's (spec §6).
BTCV_PREPROCESS = dict(spacing_mm=(1.5, 1.5, 2.0), intensity="ct_window", window=(-175.0, 250.0),
                       scaled_range=(0.0, 1.0), orient_ras=True, crop_foreground=False)


def is_nifti(path: str | pathlib.Path) -> bool:
    """True for .nii / .nii.gz files."""
    name = pathlib.Path(path).name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def nifti_stem(path: str | pathlib.Path) -> str:
    """File name without .nii/.nii.gz."""
    name = pathlib.Path(path).name
    for s in (".nii.gz", ".nii"):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return pathlib.Path(path).stem


def preprocess_config(config: Any):
    """The run's PreprocessConfig (config.preprocess), or BTCV's for a converted checkpoint; never crops."""
    import dataclasses  # noqa: PLC0415

    from data_pipelines import preprocess3d  # noqa: PLC0415

    if "preprocess" in config:
        from lgmsnet_jax.training import seg3d  # noqa: PLC0415
        pcfg = seg3d.preprocess_config(config)
    else:
        pcfg = preprocess3d.PreprocessConfig(**BTCV_PREPROCESS)
    # The whole volume is predicted, so every input voxel gets a label; cropping would only save time.
    return dataclasses.replace(pcfg, crop_foreground=False)


def back_to_input_grid(labels: np.ndarray, ras_shape: tuple[int, ...], affine: np.ndarray,
                       spacing_ratio: np.ndarray | None) -> np.ndarray:
    """Inverse of reorient_to_ras + resample_to_spacing for a label map (nearest neighbour).

    Args:
      labels: (I', J', K') labels on the resampled RAS grid.
      ras_shape: shape of the volume after reorientation, before resampling.
      affine: the input file's affine (its orientation is restored).
      spacing_ratio: new/old voxel size per axis used by resample_to_spacing, or None if not resampled.

    Returns:
      (I, J, K) labels in the input file's voxel order.
    """
    from nibabel import orientations as nio  # noqa: PLC0415

    if spacing_ratio is not None and tuple(labels.shape) != tuple(ras_shape):
        # resample_to_spacing read input voxel o*ratio for output voxel o; going back reads o/ratio.
        labels = scipy.ndimage.affine_transform(labels, 1.0 / spacing_ratio, output_shape=tuple(ras_shape), order=0,
                                                mode="nearest", prefilter=False)
    start = nio.axcodes2ornt(("R", "A", "S"))
    back = nio.ornt_transform(start, nio.io_orientation(affine))
    return np.ascontiguousarray(nio.apply_orientation(labels, back))


def predict_nifti(model: Any, config: Any, path: str | pathlib.Path, *, overlap: float | None = None,
                  sw_batch_size: int | None = None):
    """Segments one NIfTI volume.

    Args:
      model: eval-mode 3D model (multi-class logits).
      config: the run's config (preprocess, sw) or a converted checkpoint's (image_size is the window).
      path: .nii or .nii.gz file, 3D (or 4D with one channel).
      overlap, sw_batch_size: sliding-window settings (default: the run's, else 0.5 and 4).

    Returns:
      (labels (I, J, K) uint8 on the input grid, the input nibabel image (for its affine and header)).
    """
    import nibabel as nib  # noqa: PLC0415

    from data_pipelines import preprocess3d  # noqa: PLC0415
    from lgmsnet_jax.inference import loading  # noqa: PLC0415
    from lgmsnet_jax.training import seg3d  # noqa: PLC0415

    img = nib.load(str(path))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume (or 4D with one channel), got shape {data.shape}")
    affine = np.asarray(img.affine, np.float64)
    pcfg = preprocess_config(config)
    x, ras_affine = data, affine
    if pcfg.orient_ras:
        x, _, ras_affine = preprocess3d.reorient_to_ras(x, None, affine)
    ras_shape = x.shape
    ratio = None
    if pcfg.spacing_mm is not None:
        old = np.linalg.norm(ras_affine[:3, :3], axis=0)
        ratio = np.asarray(pcfg.spacing_mm, np.float64) / old
        x, _, _ = preprocess3d.resample_to_spacing(x, None, ras_affine, pcfg.spacing_mm)
    x = preprocess3d.scale_intensity(x, pcfg)
    # A run's window is its validation window (config.sw); a converted checkpoint's is its image_size (96^3 default)
    # with the reference's settings (spec §6: overlap 0.5, constant weights, 4 windows per call).
    sw = config.sw if "sw" in config else {"roi_size": config.image_size, "overlap": 0.5, "mode": "constant",
                                           "sw_batch_size": 4}
    roi = tuple(int(s) for s in sw["roi_size"])
    graphdef, params, rest = loading.split_model(model)
    predict = seg3d.make_volume_predictor(
        graphdef, roi_size=roi, overlap=float(overlap if overlap is not None else sw["overlap"]), mode=sw["mode"],
        sw_batch_size=int(sw_batch_size or sw["sw_batch_size"]))
    labels = np.asarray(predict(params, rest, jnp.asarray(x[None, ..., None], jnp.float32)))[0]
    labels = back_to_input_grid(labels.astype(np.uint8), ras_shape, affine, ratio)
    if labels.shape != data.shape:
        raise AssertionError(f"{path}: label map {labels.shape} does not match the input {data.shape}")
    return labels, img


def save_labels(labels: np.ndarray, like: Any, path: str | pathlib.Path) -> None:
    """Writes a uint8 label NIfTI with the affine (and header fields) of the input image `like`."""
    import nibabel as nib  # noqa: PLC0415

    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(labels.astype(np.uint8), like.affine, header=header)
    out.header.set_slope_inter(1, 0)
    nib.save(out, str(path))
