"""Per-image 2D segmentation metrics of the reference (spec §7.1), computed in jit on padded batches.

Each function returns per-image values (N,); `masked_sums` turns them into sums over the real images of a batch
so that the host can average over the whole evaluation set (the reference's AverageMeter with n = 1 per image).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IOU_SMOOTH = 1e-5
RATIO_EPS = 1e-6


def binary_metrics_per_image(logits: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
    """IoU, Dice, F1, SE, PC, SP, ACC per image at threshold 0.5 (ref: utils/metrics.py::iou_score).

    P = sigmoid(z) > 0.5 (i.e. z > 0), G = t > 0.5, pooled over all pixels and channels of one image.
    IoU = (|P and G| + 1e-5)/(|P or G| + 1e-5); Dice = 2 IoU/(IoU + 1).
    For SE/PC/SP/ACC the reference re-binarises G' = (G == max(G)). Quirk (kept on purpose for parity): when G is
    empty, max(G) is False and G' is all True, so an empty ground truth is scored as if every pixel were foreground
    (SE = fraction predicted positive, PC = 1 if anything is predicted). IoU/Dice are not affected.

    Args:
      logits: (N, H, W, 1) (or any (N, ...)) raw scores.
      target: same shape, values in [0, 1].

    Returns:
      Dict of (N,) f32 arrays: iou, dice, f1, se, pc, sp, acc.
    """
    n = logits.shape[0]
    p = (logits.astype(jnp.float32) > 0.0).reshape(n, -1)
    g = (target.astype(jnp.float32) > 0.5).reshape(n, -1)
    f32 = jnp.float32
    inter = jnp.sum(p & g, axis=1).astype(f32)
    union = jnp.sum(p | g, axis=1).astype(f32)
    iou = (inter + IOU_SMOOTH) / (union + IOU_SMOOTH)
    dice = 2.0 * iou / (iou + 1.0)
    g_has_fg = jnp.any(g, axis=1, keepdims=True)
    g2 = jnp.where(g_has_fg, g, True)  # the empty-mask quirk
    tp = jnp.sum(p & g2, axis=1).astype(f32)
    fn = jnp.sum(~p & g2, axis=1).astype(f32)
    fp = jnp.sum(p & ~g2, axis=1).astype(f32)
    tn = jnp.sum(~p & ~g2, axis=1).astype(f32)
    se = tp / (tp + fn + RATIO_EPS)
    pc = tp / (tp + fp + RATIO_EPS)
    sp = tn / (tn + fp + RATIO_EPS)
    acc = (tp + tn) / f32(p.shape[1])
    f1 = 2.0 * se * pc / (se + pc + RATIO_EPS)
    return {"iou": iou, "dice": dice, "f1": f1, "se": se, "pc": pc, "sp": sp, "acc": acc}


def masked_sums(per_example: dict[str, jax.Array], valid: jax.Array) -> dict[str, jax.Array]:
    """Sums of per-example metrics over the real examples of a padded batch, plus their count under "count".

    Args:
      per_example: dict of (N,) f32 arrays.
      valid: (N,) f32, 1 for real examples and 0 for padding.

    Returns:
      Dict of f32 scalars (same keys) plus "count".
    """
    v = valid.astype(jnp.float32)
    out = {k: jnp.sum(jnp.where(v > 0, x.astype(jnp.float32), 0.0)) for k, x in per_example.items()}
    out["count"] = jnp.sum(v)
    return out


def finalize_means(sums: dict[str, float]) -> dict[str, float]:
    """Host-side: turn accumulated sums (with "count") into means over images."""
    count = float(sums["count"])
    if count <= 0:
        raise ValueError("finalize_means: no evaluated examples (count == 0)")
    return {k: float(v) / count for k, v in sums.items() if k != "count"} | {"count": int(round(count))}
