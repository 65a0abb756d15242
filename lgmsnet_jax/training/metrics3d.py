"""3D segmentation metrics on the host (numpy/scipy): per-class Dice without background and HD95 in mm.

Follows MONAI's `DiceMetric(include_background=False)` and `compute_hausdorff_distance(percentile=95)`
(reference_lgmsnet.md §7.2): a class absent from the ground truth gives NaN and is left out of means.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.ndimage


def dice_per_class(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..K-1 between two label maps.

    Args:
      pred: (D, H, W) integer predicted classes.
      label: (D, H, W) integer ground-truth classes, same shape.
      num_classes: K, including background 0.

    Returns:
      (K-1,) float64: 2|P_c ∩ G_c| / (|P_c| + |G_c|); NaN where G_c is empty (MONAI ignore_empty).
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} differ")
    k = num_classes
    conf = np.bincount(label.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel(),
                       minlength=k * k)[: k * k].reshape(k, k)  # conf[g, p]
    inter = np.diag(conf)[1:].astype(np.float64)
    size_g = conf.sum(axis=1)[1:].astype(np.float64)
    size_p = conf.sum(axis=0)[1:].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * inter / (size_p + size_g)
    return np.where(size_g > 0, dice, np.nan)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (the volume border counts as outside).

    Args:
      mask: (D, H, W) bool.

    Returns:
      (D, H, W) bool edge map (MONAI get_mask_edges: mask XOR binary_erosion(mask)).
    """
    mask = np.asarray(mask, bool)
    return mask & ~scipy.ndimage.binary_erosion(mask, border_value=0)


def _directed(from_edges: np.ndarray, to_edges: np.ndarray, spacing) -> np.ndarray:
    # Distance of every `from` edge voxel to the nearest `to` edge voxel, in mm.
    dist = scipy.ndimage.distance_transform_edt(~to_edges, sampling=spacing)
    return dist[from_edges]


def hd95(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two binary masks, in mm.

    max(P95 of pred-surface -> gt-surface distances, P95 of gt -> pred), percentiles with
    numpy's linear interpolation, as MONAI computes it.

    Args:
      pred_mask: (D, H, W) bool.
      gt_mask: (D, H, W) bool.
      spacing_mm: voxel size per axis.

    Returns:
      The distance; NaN when gt is empty; the diagonal of the volume in mm when gt is present but
      the prediction is empty (MONAI returns inf there; a finite worst case keeps means usable).
    """
    pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
    spacing = np.asarray(spacing_mm, np.float64)
    if not gt_mask.any():
        return float("nan")
    if not pred_mask.any():
        return float(np.linalg.norm(np.asarray(gt_mask.shape) * spacing))
    # Work inside the bounding box of both masks plus one voxel: the distances are unchanged.
    both = pred_mask | gt_mask
    box = []
    for axis in range(both.ndim):
        hit = np.flatnonzero(both.any(axis=tuple(a for a in range(both.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    box = tuple(box)
    edges_p, edges_g = surface_voxels(pred_mask[box]), surface_voxels(gt_mask[box])
    d_pg = _directed(edges_p, edges_g, spacing)
    d_gp = _directed(edges_g, edges_p, spacing)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def evaluate_case(pred: np.ndarray, label: np.ndarray, num_classes: int, spacing_mm: Sequence[float],
                  *, with_hd95: bool = True) -> dict[str, np.ndarray]:
    """Per-class metrics of one volume.

    Args:
      pred: (D, H, W) integer predicted classes.
      label: (D, H, W) integer ground truth.
      num_classes: K including background.
      spacing_mm: voxel size of these arrays.
      with_hd95: also compute HD95 (the slower part).

    Returns:
      {"dice": (K-1,), "hd95": (K-1,)} float64 with NaN for classes absent from the label.
    """
    out = {"dice": dice_per_class(pred, label, num_classes)}
    if with_hd95:
        out["hd95"] = np.asarray([hd95(pred == c, label == c, spacing_mm) for c in range(1, num_classes)])
    return out


def summarize(per_case: Sequence[dict[str, np.ndarray]], class_names: Sequence[str]) -> dict[str, float]:
    """Means over cases.

    Args:
      per_case: outputs of evaluate_case, one per validation volume.
      class_names: names of classes 1..K-1 (e.g. ("RV", "Myo", "LV")).

    Returns:
      For each metric m: "m/<class>" = nanmean over cases, "m" = mean over cases of each case's
      nanmean over classes (MONAI's per-volume value, averaged over all volumes rather than
      the reference's last-volume quirk, §7.2), and "m_class_mean" = mean of the per-class means
      (the paper's table average).
    """
    if not per_case:
        raise ValueError("summarize: no cases")
    out: dict[str, float] = {}
    for metric in per_case[0]:
        table = np.stack([c[metric] for c in per_case])  # (cases, K-1)
        if table.shape[1] != len(class_names):
            raise ValueError(f"{len(class_names)} class names for {table.shape[1]} classes")
        with warnings.catch_warnings():  # an all-NaN column is a legitimate NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = np.nanmean(table, axis=0)
            out[metric] = float(np.nanmean(np.nanmean(table, axis=1)))
            out[f"{metric}_class_mean"] = float(np.nanmean(per_class))
        for name, v in zip(class_names, per_class):
            out[f"{metric}/{name}"] = float(v)
    return out
