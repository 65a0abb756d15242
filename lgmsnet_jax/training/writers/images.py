"""PNG grid of validation predictions next to ground truth (pillow only)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def prediction_grid(images: np.ndarray, masks: np.ndarray, probs: np.ndarray, max_rows: int = 8) -> np.ndarray:
    """One row per example: input | ground truth | prediction (p > 0.5) | overlay.

    The overlay shows true positives in yellow, false positives in red and false negatives in green on the input.

    Args:
      images: (N, H, W, 3) uint8 RGB.
      masks: (N, H, W, 1) ground truth in [0, 1].
      probs: (N, H, W, 1) predicted foreground probability.
      max_rows: at most this many examples.

    Returns:
      (rows*H + gaps, 4*W + gaps, 3) uint8 image.
    """
    n = min(len(images), max_rows)
    h, w = images.shape[1:3]
    gap = 2
    out = np.full((n * (h + gap) - gap, 4 * (w + gap) - gap, 3), 255, np.uint8)
    for r in range(n):
        img = images[r].astype(np.uint8)
        gt = masks[r, ..., 0] > 0.5
        pr = probs[r, ..., 0] > 0.5
        overlay = (0.6 * img).astype(np.uint8)
        overlay[gt & pr] = (255, 220, 0)
        overlay[pr & ~gt] = (230, 30, 30)
        overlay[gt & ~pr] = (30, 200, 30)
        gray = lambda m: np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=-1)  # noqa: E731
        tiles = [img, gray(gt), np.repeat((np.clip(probs[r], 0, 1) * 255).astype(np.uint8), 3, axis=-1), overlay]
        y = r * (h + gap)
        for c, t in enumerate(tiles):
            out[y:y + h, c * (w + gap):c * (w + gap) + w] = t
    return out


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
