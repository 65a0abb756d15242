"""Numpy/PIL augmentations reproducing the reference recipes, plus normalisation.

Each augmentation takes (image uint8 (H, W, 3), mask uint8 (H, W), rng: np.random.Generator) and returns the
same types, so it runs inside a Grain `random_map` whose rng is derived from (seed, position in the stream).
The Kvasir recipe resamples each image once (flips, affine and elastic affine composed, reflect-101 folded in),
with the geometry in `data_pipelines.warps`.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from data_pipelines.warps import (DISPLACEMENT_TOLERANCE_PX, affine_matrix, compose, displacement_field,
                                  elastic_affine_matrix, flip_matrix, folded_warp, invert_affine, pil_affine, sample,
                                  scratch_u32, upsample2, warp_image)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NORMALIZATIONS = ("imagenet", "reference_bgr", "unit")
_GREY = np.array([0.299, 0.587, 0.114], np.float32)  # cv2 RGB2GRAY weights, as albumentations uses


def normalize(image: np.ndarray, mode: str = "imagenet") -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float32 network input.

    Args:
      image: uint8 RGB, any leading dims.
      mode: "imagenet": (v/255 - mean)/std per RGB channel (Kvasir recipe, our default).
        "reference_bgr": the BUSI/ISIC/TNSCUI reference exactly: channels in **BGR** order (cv2.imread), ImageNet
        mean/std applied in that storage order (blue gets 0.485/0.229), then divided by 255 a second time.
        "unit": v/255.

    Returns:
      float32 (..., H, W, 3).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    if mode == "reference_bgr":
        image = image[..., ::-1]
    # One multiply-add per element with per-channel constants tiled along W*3: broadcasting against a
    # trailing axis of 3 runs numpy's inner loop 3 elements at a time and is ~10x slower.
    scale, offset = _norm_rows(mode, image.shape[-2])
    x = image.reshape(*image.shape[:-2], image.shape[-2] * 3).astype(np.float32)
    x *= scale
    x += offset
    return x.reshape(image.shape)


def normalize_into(out: np.ndarray, image: np.ndarray, mode: str = "imagenet") -> None:
    """Writes `normalize(image, mode)` into `out` without temporaries (used to fill a batch in place).

    Args:
      out: float32 (H, W, 3), C-contiguous (e.g. one row of a batch array).
      image: uint8 (H, W, 3), any strides (rot90/flip views are read directly).
      mode: as in `normalize`.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    h, w = out.shape[:2]
    np.copyto(out, image[..., ::-1] if mode == "reference_bgr" else image, casting="unsafe")
    scale, offset = _norm_rows(mode, w)
    rows = out.reshape(h, w * 3)
    rows *= scale
    rows += offset


@functools.lru_cache(maxsize=16)
def _norm_rows(mode: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    if mode == "unit":
        a, b = np.full(3, 1 / 255.0), np.zeros(3)
    else:
        a, b = 1.0 / (255.0 * IMAGENET_STD.astype(np.float64)), -IMAGENET_MEAN / IMAGENET_STD.astype(np.float64)
        if mode == "reference_bgr":
            # ref: main.py MedicalDataSets: albumentations Normalize() on a BGR array, then `/ 255` again.
            a, b = a / 255.0, b / 255.0
    return np.tile(a, width).astype(np.float32), np.tile(b, width).astype(np.float32)


def denormalize(x: np.ndarray, mode: str = "imagenet") -> np.ndarray:
    """Inverse of `normalize`: float32 (..., H, W, 3) -> uint8 RGB (for prediction grids)."""
    x = np.asarray(x, np.float32)
    if mode == "imagenet":
        v = x * IMAGENET_STD + IMAGENET_MEAN
    elif mode == "reference_bgr":
        v = (x * np.float32(255.0) * IMAGENET_STD + IMAGENET_MEAN)[..., ::-1]
    elif mode == "unit":
        v = x
    else:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    return np.clip(np.round(v * np.float32(255.0)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- BUSI / ISIC18 / TNSCUI recipe (main.py)

def augment_busi(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RandomRotate90(p=0.5, k in {0..3}) then Flip(p=0.5, vertical | horizontal | both), jointly.

    Returns views (no copy); they commute with the reference's later Resize, so running them on the cached,
    already-resized arrays is equivalent.
    """
    if rng.random() < 0.5:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k, (0, 1)), np.rot90(mask, k, (0, 1))
    if rng.random() < 0.5:
        d = int(rng.integers(-1, 2))  # cv2.flip code: 0 vertical, 1 horizontal, -1 both
        if d in (0, -1):
            image, mask = image[::-1], mask[::-1]
        if d in (1, -1):
            image, mask = image[:, ::-1], mask[:, ::-1]
    return image, mask


# ---------------------------------------------------------------- Kvasir recipe (main_kvasir.py)

def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness=(0.6, 1.6), contrast=(0.8, 1.2),
                 saturation=(0.9, 1.1), hue=(-0.01, 0.01)) -> np.ndarray:
    """albumentations ColorJitter on uint8 RGB: the four adjustments in random order, rounding to uint8 after each.

    Hue is rotated in YIQ space (a 3x3 matrix) instead of an HSV round trip; for the recipe's |hue| <= 0.01
    (3.6 degrees) the two agree to within about one grey level. Works on planar float32 (3, H*W) rows, where
    the 3x3 colour matrices are one small matmul and every other step a contiguous pass (~2x faster than
    (H*W, 3) rows).

    Args:
      image: uint8 (H, W, 3) RGB, any strides.
      rng: draws b, c, s, h (in that order) and then the order of the four steps.

    Returns:
      uint8 (H, W, 3), C-contiguous.
    """
    h_, w_ = image.shape[:2]
    b, c = rng.uniform(*brightness), rng.uniform(*contrast)
    s, h = rng.uniform(*saturation), rng.uniform(*hue)
    x = np.empty((3, h_ * w_), np.float32)
    for k in range(3):  # per-channel copies: a transposing copy of (H*W, 3) is ~4x slower
        x[k].reshape(h_, w_)[...] = image[..., k]
    for op in rng.permutation(4):
        # Clipping is skipped where the step cannot leave [0, 255]: brightness b <= 1, and contrast c <= 1 or
        # saturation s <= 1 (convex combinations of values in range).
        if op == 0:
            x *= np.float32(b)
            if b > 1:
                np.minimum(x, np.float32(255.0), out=x)  # x >= 0 here
            np.floor(x, out=x)  # the uint8 LUT truncates
        elif op == 1:
            mean = np.float32(_GREY @ x.mean(axis=1, dtype=np.float32))
            x *= np.float32(c)
            x += mean * np.float32(1 - c)
            _clip_to_uint8_range(x, np.floor, c > 1)
        else:
            # Saturation: s * rgb + (1 - s) * grey(rgb) (cv2.addWeighted with the grey image); hue: YIQ rotation.
            m = _saturation_matrix(s) if op == 2 else _hue_matrix(h)
            x = m.T @ x
            _clip_to_uint8_range(x, np.rint, op == 3 or s > 1)
    x8 = x.astype(np.uint8)
    out = np.empty((h_, w_, 3), np.uint8)
    for k in range(3):
        out[..., k] = x8[k].reshape(h_, w_)
    return out


def _clip_to_uint8_range(x: np.ndarray, rounding, clip: bool = True) -> None:
    if clip:
        np.clip(x, np.float32(0.0), np.float32(255.0), out=x)
    rounding(x, out=x)


def _saturation_matrix(s: float) -> np.ndarray:
    """(3, 3) float32 M with rgb @ M = s * rgb + (1 - s) * grey(rgb)."""
    return np.float32(s) * np.eye(3, dtype=np.float32) + np.float32(1 - s) * np.outer(_GREY, np.ones(3, np.float32))


_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
_FROM_YIQ = np.linalg.inv(_TO_YIQ)


def _hue_matrix(h: float) -> np.ndarray:
    """(3, 3) float32 M with rgb @ M = rgb rotated by 2*pi*h around the YIQ grey axis."""
    t = 2 * np.pi * h
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return (_FROM_YIQ @ rot @ _TO_YIQ).T.astype(np.float32)


def augment_kvasir(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, elastic_alpha: float = 1.0,
                   elastic_sigma: float = 50.0, elastic_alpha_affine: float = 50.0, cell: int = 32,
                   exact_bilinear: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """main_kvasir.py train transforms after Resize: HorizontalFlip(0.5), VerticalFlip(0.5), ColorJitter(0.5,
    (0.6, 1.6), 0.2, 0.1, 0.01), Affine(0.5, scale (0.5, 1.5), translate 12.5%, rotate +-90, constant 0 border),
    ElasticTransform(0.5, albumentations 1.x defaults alpha=1, sigma=50, alpha_affine=50, reflect-101 border).
    Masks use nearest sampling throughout, as in the reference.

    The random draws happen in the reference's order; the flips are applied as part of the first warp's
    coordinate map (or returned as views when no warp fires), and the colour jitter runs before the flips
    (it is per pixel plus a global mean, so it commutes with them).

    When both the affine and the elastic transform fire, the image is resampled once through the composed map
    (`folded_warp`; the reference resamples twice), so it is blurred once instead of twice.

    Deviations (speed; README "Augmentation"): image warps are bilinear, not Lanczos4, and by default sample
    the bilinear interpolant at positions rounded to the nearest half pixel (`sample`; measured on Kvasir-SEG
    images at 256x256: 1.05 grey levels mean absolute difference to exact bilinear, while exact bilinear is
    1.04 from Lanczos4 and the half-pixel result 1.28; 2.3x less CPU for the recipe); the elastic displacement
    is drawn on a coarse grid (`displacement_field`) and skipped below `DISPLACEMENT_TOLERANCE_PX`; hue via YIQ.

    Args:
      image: uint8 (H, W, 3) RGB; mask: uint8 (H, W).
      rng: the record's generator (all random choices come from it, in the reference's order).
      elastic_alpha, elastic_sigma, elastic_alpha_affine: ElasticTransform's parameters.
      cell: mesh cell (px) for a visible displacement field (elastic_alpha far above the default).
      exact_bilinear: sample with PIL's bilinear filter instead of the half-pixel rounding (~1.6x the CPU).

    Returns:
      image uint8 (H, W, 3), mask uint8 (H, W) in {0, 1}.
    """
    h, w = mask.shape
    flip_x, flip_y = rng.random() < 0.5, rng.random() < 0.5
    if rng.random() < 0.5:
        image = color_jitter(image, rng)
    aff = invert_affine(affine_matrix(rng, h, w)) if rng.random() < 0.5 else None
    elastic, disp = None, None
    if rng.random() < 0.5:
        elastic = invert_affine(elastic_affine_matrix(rng, h, w, elastic_alpha_affine))
        gy, gx = np.meshgrid(np.unique(np.append(np.arange(0, h, cell), h)).astype(np.float64),
                             np.unique(np.append(np.arange(0, w, cell), w)).astype(np.float64), indexing="ij")
        field = displacement_field(rng, gy, gx, h, w, elastic_alpha, elastic_sigma, tolerance=DISPLACEMENT_TOLERANCE_PX)
        if field is not None and max(np.abs(field[0]).max(), np.abs(field[1]).max()) >= DISPLACEMENT_TOLERANCE_PX:
            disp = (gy, gx, *field)
    if aff is None and elastic is None:
        if flip_x:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if flip_y:
            image, mask = image[::-1], mask[::-1]
        return image, mask
    flip = flip_matrix(h, w, flip_x, flip_y)
    first = flip if aff is None else compose(aff, flip)  # output of the affine -> flipped image -> source
    mk = Image.fromarray(np.ascontiguousarray(mask))
    if disp is None:
        up = not exact_bilinear
        im = upsample2(image, scratch_u32((2 * h - 1, 2 * w - 1))) if up else Image.fromarray(np.ascontiguousarray(image))
        if elastic is None:
            im, mk = sample(im, (w, h), first, up), pil_affine(mk, (w, h), first, Image.Resampling.NEAREST)
        else:
            im, mk = folded_warp(im, mk, elastic, first, upsampled=up)  # affine and elastic in one pass
        return np.frombuffer(im.tobytes("raw", "RGB"), np.uint8).reshape(h, w, 3), np.asarray(mk)
    # A visible elastic displacement field (non-default alpha): bilinear, then the mesh warp.
    im = Image.fromarray(np.ascontiguousarray(image))
    if aff is not None:
        im, mk = pil_affine(im, (w, h), first, Image.Resampling.BILINEAR), pil_affine(mk, (w, h), first, Image.Resampling.NEAREST)
        flip = None
    # Reflecting the flipped image equals flipping the reflected one, so the flip joins the map here too.
    im, mk = warp_image(im, mk, elastic if flip is None else compose(elastic, flip), reflect=True, disp=disp)
    return np.asarray(im), np.asarray(mk)


# "kvasir_exact": the Kvasir recipe with PIL bilinear sampling instead of half-pixel rounding (~1.4x the CPU).
RECIPES = {"busi": augment_busi, "kvasir": augment_kvasir,
           "kvasir_exact": functools.partial(augment_kvasir, exact_bilinear=True), "none": None}


def resize_example(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear image / nearest mask resize to (h, w) (only when the cache size differs from the training size)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, mask
    img = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.Resampling.BILINEAR))
    mk = np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize((w, h), Image.Resampling.NEAREST))
    return img, mk
