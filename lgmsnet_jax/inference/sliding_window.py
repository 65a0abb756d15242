"""Sliding-window inference in JAX over a static window grid (MONAI `sliding_window_inference`).

The grid is computed in numpy from static shapes, windows are gathered with lax.dynamic_slice and
run through the model sw_batch_size at a time inside lax.scan, so memory is bounded by one batch of
windows plus the full-volume accumulators and the whole function jits once per volume shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def scan_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[list[int]]:
    """Window start offsets per spatial axis (MONAI `_get_scan_interval` + `dense_patch_slices`).

    The interval is int(roi * (1 - overlap)) (at least 1; the whole axis when roi == size); windows
    step by it until one reaches the end, and the last start is pulled back to end at the border.

    Args:
      image_size: spatial size, each >= the matching roi_size (pad first).
      roi_size: window size.
      overlap: fraction in [0, 1).

    Returns:
      One sorted list of starts per axis.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    out = []
    for n, r in zip(image_size, roi_size):
        if r > n:
            raise ValueError(f"roi {tuple(roi_size)} larger than image {tuple(image_size)}; pad first")
        interval = r if r == n else max(int(r * (1.0 - overlap)), 1)
        num = next((d for d in range(math.ceil(n / interval)) if d * interval + r >= n), 0) + 1
        out.append([i * interval - max(i * interval + r - n, 0) for i in range(num)])
    return out


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> np.ndarray:
    """All window starts, (P, ndim) int32, first axis slowest (MONAI's order)."""
    grids = np.meshgrid(*scan_starts(image_size, roi_size, overlap), indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1).astype(np.int32)


def importance_map(roi_size: Sequence[int], mode: str, sigma_scale: float | Sequence[float] = 0.125) -> np.ndarray:
    """Per-voxel weight of a window's prediction, (*roi_size) float32 with maximum 1.

    "constant": all ones (the reference's choice, §6). "gaussian": product of 1D Gaussians with
    sigma = sigma_scale * roi, centred at (roi - 1) / 2 so the map is symmetric (MONAI centres at
    roi // 2); zeros from underflow are raised to the smallest positive weight, as MONAI does.

    Args:
      roi_size: window size.
      mode: "constant" or "gaussian".
      sigma_scale: scalar or per-axis factor.

    Returns:
      The weight map.
    """
    if mode == "constant":
        return np.ones(tuple(roi_size), np.float32)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
    scales = np.broadcast_to(np.asarray(sigma_scale, np.float64), (len(roi_size),))
    w = np.ones((), np.float64)
    for r, s in zip(roi_size, scales):
        x = np.arange(r, dtype=np.float64) - (r - 1) / 2.0
        w = np.multiply.outer(w, np.exp(-0.5 * (x / max(s * r, 1e-12)) ** 2))
    w = (w / w.max()).astype(np.float32)
    if (w == 0).any():
        w[w == 0] = w[w > 0].min()
    return w


def sliding_window_inference(predict_fn: Callable[[jax.Array], jax.Array], volume: jax.Array,
                             roi_size: Sequence[int], *, overlap: float = 0.5, mode: str = "gaussian",
                             sigma_scale: float | Sequence[float] = 0.125, sw_batch_size: int = 4,
                             pad_value: float = 0.0) -> jax.Array:
    """Full-volume logits from a window-sized predictor, averaged over overlapping windows.

    Volumes smaller than roi_size are padded symmetrically with pad_value (MONAI's padding) and the
    result is cropped back. With mode="constant" this matches the reference's MONAI call (§6).
    Shapes are static, so wrapping this in jax.jit compiles once per volume shape.

    Args:
      predict_fn: (B, *roi_size, C) -> (B, *roi_size, K) logits, B = sw_batch_size.
      volume: (*spatial, C) or (N, *spatial, C) with len(spatial) == len(roi_size).
      roi_size: window size per spatial axis.
      overlap: window overlap fraction in [0, 1).
      mode: "gaussian" or "constant" weighting.
      sigma_scale: Gaussian sigma as a fraction of roi_size.
      sw_batch_size: windows per predict_fn call (the last batch is filled with dummy windows of weight 0).
      pad_value: value used to pad small volumes.

    Returns:
      (*spatial, K) or (N, *spatial, K) float32 logits, matching volume's batching.
    """
    roi = tuple(int(r) for r in roi_size)
    nd = len(roi)
    if volume.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"volume {volume.shape} must be (*spatial, C) or (N, *spatial, C) with {nd} spatial axes")
    batched = volume.ndim == nd + 2
    x = volume if batched else volume[None]
    n, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    before = [max(r - s, 0) // 2 for r, s in zip(roi, spatial)]
    after = [max(r - s, 0) - b for r, s, b in zip(roi, spatial, before)]
    if any(before) or any(after):
        x = jnp.pad(x, [(0, 0), *zip(before, after), (0, 0)], constant_values=jnp.asarray(pad_value, x.dtype))
    padded = x.shape[1:-1]

    starts = window_starts(padded, roi, overlap)
    total = n * len(starts)
    num_batches = -(-total // sw_batch_size)
    extra = num_batches * sw_batch_size - total
    # Window w covers volume w // P at starts[w % P]; dummy windows repeat the last real one with weight 0.
    vol_idx = np.concatenate([np.repeat(np.arange(n), len(starts)), np.full(extra, n - 1)]).astype(np.int32)
    win_start = np.concatenate([np.tile(starts, (n, 1)), np.repeat(starts[-1:], extra, 0)]).astype(np.int32)
    valid = np.concatenate([np.ones(total), np.zeros(extra)]).astype(np.float32)
    xs = (vol_idx.reshape(num_batches, sw_batch_size), win_start.reshape(num_batches, sw_batch_size, nd),
          valid.reshape(num_batches, sw_batch_size))

    out_shape = jax.eval_shape(predict_fn, jax.ShapeDtypeStruct((sw_batch_size, *roi, c), x.dtype))
    if tuple(out_shape.shape[:-1]) != (sw_batch_size, *roi):
        raise ValueError(f"predict_fn maps {(sw_batch_size, *roi, c)} to {out_shape.shape}; "
                         f"expected {(sw_batch_size, *roi)} + (K,)")
    k = out_shape.shape[-1]
    weight = jnp.asarray(importance_map(roi, mode, sigma_scale))[..., None]  # (*roi, 1)
    zero = jnp.zeros((), jnp.int32)

    def gather(i, s):
        return jax.lax.dynamic_slice(x, (i, *s, zero), (1, *roi, c))[0]

    def body(carry, batch):
        acc, norm = carry
        b_vol, b_start, b_valid = batch
        windows = jax.vmap(gather)(b_vol, b_start)
        logits = predict_fn(windows).astype(jnp.float32)
        for j in range(sw_batch_size):  # sequential adds: windows of one batch may overlap
            w = weight * b_valid[j]
            corner = (b_vol[j], *(b_start[j, a] for a in range(nd)), zero)
            cur = jax.lax.dynamic_slice(acc, corner, (1, *roi, k))
            acc = jax.lax.dynamic_update_slice(acc, cur + (logits[j] * w)[None], corner)
            cur = jax.lax.dynamic_slice(norm, corner, (1, *roi, 1))
            norm = jax.lax.dynamic_update_slice(norm, cur + w[None], corner)
        return (acc, norm), None

    init = (jnp.zeros((n, *padded, k), jnp.float32), jnp.zeros((n, *padded, 1), jnp.float32))
    (acc, norm), _ = jax.lax.scan(body, init, jax.tree.map(jnp.asarray, xs))
    out = acc / norm
    out = out[(slice(None), *(slice(b, b + s) for b, s in zip(before, spatial)), slice(None))]
    return out if batched else out[0]
