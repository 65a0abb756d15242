"""2D prediction on images of any size: fit to the network grid (resize, or pad to a size multiple), predict,
map probabilities back to the original size, threshold, and draw the prediction's contour over the image.

numpy + PIL on the host; one jitted forward per grid shape on the device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
from flax import nnx
from PIL import Image

from lgmsnet_jax import xla_options
from lgmsnet_jax import packing

FIT_MODES = ("resize", "pad")
CONTOUR_RGB = (0, 255, 0)  # bright green reads well on endoscopy, dermoscopy and ultrasound images


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A network input and how to map its output back to the original image.

    Attributes:
      x: (h, w, C) float32 normalised network input.
      original_hw: (H, W) of the input image.
      crop: (h0, w0) region of `x` holding the image (pad mode), or None (resize mode: the whole grid).
    """

    x: np.ndarray
    original_hw: tuple[int, int]
    crop: tuple[int, int] | None


def prepare(image: np.ndarray, *, fit: str, grid: Sequence[int], size_multiple: int, normalize: str,
            resample: str = "bilinear") -> Prepared:
    """Brings a uint8 RGB image to the network's input.

    Args:
      image: (H, W, 3) uint8 RGB.
      fit: "resize": resample to `grid` (what training saw; default). "pad": keep the native resolution and
        zero-pad (after normalisation) at the bottom/right to the next multiple of `size_multiple`.
      grid: (h, w) training grid (config.image_size).
      size_multiple: the model's spatial multiple (LGMSNet: 32).
      normalize: data_pipelines normalisation name (the run's config.normalize).
      resample: PIL filter name for "resize" ("bilinear" or "lanczos", as the run's cache used).

    Returns:
      A `Prepared`.
    """
    import data_pipelines as dp  # noqa: PLC0415
    from data_pipelines import cache  # noqa: PLC0415

    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    h, w = image.shape[:2]
    if fit == "resize":
        gh, gw = int(grid[0]), int(grid[1])
        if (h, w) != (gh, gw):
            image = np.asarray(Image.fromarray(image).resize((gw, gh), cache.RESAMPLE[resample]))
        return Prepared(dp.normalize(np.ascontiguousarray(image), normalize), (h, w), None)
    m = max(int(size_multiple), 1)
    ph, pw = -(-h // m) * m, -(-w // m) * m
    x = np.zeros((ph, pw, image.shape[2]), np.float32)
    x[:h, :w] = dp.normalize(np.ascontiguousarray(image), normalize)
    return Prepared(x, (h, w), (h, w))


def make_predictor(model: nnx.Module):
    """Jitted (images (N, h, w, C) f32) -> per-pixel probabilities (N, h, w, K) f32 of an eval-mode model.

    K == 1 (binary): sigmoid of the logit; K > 1: softmax over classes.
    """
    graphdef, state = nnx.split(model)
    packed, spec = packing.pack(state)  # a few call arguments instead of hundreds

    @functools.partial(jax.jit, compiler_options=xla_options.inference(2))  # convs in CUDA graphs too
    def forward(packed, x):
        logits = nnx.merge(graphdef, spec.unpack(packed))(x, train=False).astype(jnp.float32)
        return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)

    return lambda x: forward(packed, jnp.asarray(x))


def to_original(prob: np.ndarray, prep: Prepared) -> np.ndarray:
    """(h, w, K) probabilities on the network grid -> (H, W, K) on the original image (bilinear, or crop)."""
    if prep.crop is not None:
        return prob[: prep.crop[0], : prep.crop[1]]
    oh, ow = prep.original_hw
    if prob.shape[:2] == (oh, ow):
        return prob
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(prob[..., k], np.float32), mode="F")
                        .resize((ow, oh), Image.Resampling.BILINEAR)) for k in range(prob.shape[-1])]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0)


def to_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W, K) probabilities -> (H, W) uint8: 0/255 for binary (prob > threshold), class ids for K > 1."""
    if prob.shape[-1] == 1:
        return np.where(prob[..., 0] > threshold, np.uint8(255), np.uint8(0))
    return np.argmax(prob, axis=-1).astype(np.uint8)


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boundary pixels of a boolean (H, W) region: inside pixels with a 4-neighbour outside, grown inward."""
    inner = scipy.ndimage.binary_erosion(mask, iterations=max(int(thickness), 1), border_value=0)
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray, *, color: Sequence[int] = CONTOUR_RGB,
            thickness: int | None = None) -> np.ndarray:
    """The image with the contour of every predicted region drawn in a bright colour.

    Args:
      image: (H, W, 3) uint8 RGB.
      mask: (H, W) uint8 from `to_mask` (0/255, or class ids with one hue per class).
      color: RGB of the binary contour.
      thickness: contour width in pixels (default about 1/200 of the shorter side, at least 1).

    Returns:
      (H, W, 3) uint8.
    """
    out = np.array(image, np.uint8, copy=True)
    t = thickness or max(1, round(min(mask.shape) / 200))
    classes = [255] if set(np.unique(mask)) <= {0, 255} else [c for c in np.unique(mask) if c != 0]
    for i, c in enumerate(classes):
        rgb = color if len(classes) == 1 else _hue(i, len(classes))
        out[contour(mask == c, t)] = rgb
    return out


def _hue(i: int, n: int) -> tuple[int, int, int]:
    import colorsys  # noqa: PLC0415
    r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 1.0, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def predict_images(predictor: Any, images: Sequence[np.ndarray], *, fit: str, grid: Sequence[int],
                   size_multiple: int, normalize: str, resample: str = "bilinear", batch_size: int = 8):
    """Yields (H, W, K) probability maps on each image's original grid, in order.

    Resize mode runs fixed-shape batches of `batch_size` (the last one padded, so one compile); pad mode runs one
    image at a time (one compile per distinct padded size).
    """
    if fit == "pad":
        for img in images:
            prep = prepare(img, fit=fit, grid=grid, size_multiple=size_multiple, normalize=normalize)
            yield to_original(np.asarray(predictor(prep.x[None]))[0], prep)
        return
    for start in range(0, len(images), batch_size):
        chunk = [prepare(img, fit=fit, grid=grid, size_multiple=size_multiple, normalize=normalize,
                         resample=resample) for img in images[start:start + batch_size]]
        x = np.zeros((batch_size, *chunk[0].x.shape), np.float32)
        x[: len(chunk)] = np.stack([c.x for c in chunk])
        probs = np.asarray(predictor(x))
        for j, prep in enumerate(chunk):
            yield to_original(probs[j], prep)
