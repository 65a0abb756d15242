"""Numpy/PIL augmentations reproducing the reference recipes, plus normalisation.

Each augmentation takes (image uint8 (H, W, 3), mask uint8 (H, W), rng: np.random.Generator) and returns the
same types, so it runs inside a Grain `random_map` whose rng is derived from (seed, position in the stream).
Warps run in PIL's C code (numpy gather-based bilinear remaps cost ~12 ms per 256x256 image here, PIL ~2 ms).
The Kvasir recipe resamples each image once (flips, affine and elastic affine composed, reflect-101 folded in,
`folded_warp`) and by default through PIL's fixed-point nearest path on a 2x linear upsample (`sample`), which
is bilinear interpolation at positions rounded to the nearest half pixel, ~1/8 of PIL's bilinear cost.
"""
from __future__ import annotations

import functools
import threading

import numpy as np
from PIL import Image
from scipy import ndimage

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


def _invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _then(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(2, 3) affine map x -> second(first(x))."""
    return np.hstack([second[:, :2] @ first[:, :2], second[:, :2] @ first[:, 2:] + second[:, 2:]])


def flip_matrix(h: int, w: int, flip_x: bool, flip_y: bool) -> np.ndarray:
    """(2, 3) map (PIL coordinates) from a flipped image to the unflipped one: x -> w - x, y -> h - y."""
    return np.array([[-1.0 if flip_x else 1.0, 0.0, w if flip_x else 0.0],
                     [0.0, -1.0 if flip_y else 1.0, h if flip_y else 0.0]])


def affine_matrix(rng: np.random.Generator, h: int, w: int, scale=(0.5, 1.5), translate=0.125,
                  rotate=90.0) -> np.ndarray:
    """Forward (2, 3) map (PIL pixel coordinates) of albumentations Affine(scale, translate_percent, rotate).

    Scale is drawn independently for x and y (keep_ratio=False), translation per axis as a fraction of the
    size, rotation about the image centre.
    """
    sx, sy = rng.uniform(*scale, size=2)
    tx, ty = rng.uniform(-translate, translate, size=2) * (w, h)
    r = np.deg2rad(rng.uniform(-rotate, rotate))
    lin = np.array([[sx * np.cos(r), -sy * np.sin(r)], [sx * np.sin(r), sy * np.cos(r)]])
    c = np.array([w / 2.0, h / 2.0])
    return np.hstack([lin, (c - lin @ c + (tx, ty))[:, None]])


def elastic_affine_matrix(rng: np.random.Generator, h: int, w: int, alpha_affine: float = 50.0) -> np.ndarray:
    """Forward (2, 3) map (PIL coordinates) of ElasticTransform's random affine: three points jittered by
    U(-alpha_affine, alpha_affine) px (albumentations 1.x `elastic_transform`)."""
    c = np.array([h // 2, w // 2], np.float64)  # sic: albumentations builds (h, w) and uses it as (x, y)
    s = min(h, w) // 3
    p1 = np.array([c + s, [c[0] + s, c[1] - s], c - s])
    p2 = p1 + rng.uniform(-alpha_affine, alpha_affine, size=p1.shape)
    # Solve p2 = A p1 + b (cv2.getAffineTransform), in cv2 pixel-centre coordinates, then shift by 0.5 to PIL's.
    a = np.hstack([p1, np.ones((3, 1))])
    m = np.linalg.solve(a, p2).T
    m[:, 2] += 0.5 - m[:, :2] @ np.array([0.5, 0.5])
    return m


def displacement_field(rng: np.random.Generator, gy: np.ndarray, gx: np.ndarray, h: int, w: int,
                       alpha: float = 1.0, sigma: float = 50.0, step: int = 8, tolerance: float = 0.0
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """ElasticTransform's smooth displacement (alpha * gaussian_filter(U(-1,1), sigma)) at points (gy, gx).

    Drawn on a grid `step` times coarser and read off with bilinear interpolation; the field is smooth at scale
    sigma, so little is lost, at a fraction of the cost. A Gaussian of width sigma/step sums step**2 fewer
    samples than one of width sigma, each weighted step**2 more, so the coarse noise is divided by `step` to keep
    the full-resolution field's variance (alpha**2 / (3 * 4 * pi * sigma**2) per component).

    Returns:
      (dy, dx) float64 shaped like gy, or None when every coarse value is below `tolerance` in magnitude (the
      interpolated values cannot exceed the coarse ones, so the whole field is then below it).
    """
    ch, cw = h // step + 2, w // step + 2
    fields = [ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (ch, cw)) / step, sigma / step, mode="reflect") * alpha
              for _ in range(2)]
    if max(np.abs(f).max() for f in fields) < tolerance:
        return None
    dy, dx = (ndimage.map_coordinates(f, [gy / step, gx / step], order=1, mode="nearest") for f in fields)
    return dy, dx


# Below this many pixels the elastic displacement is dropped and the warp is the affine alone: at the recipe's
# alpha=1, sigma=50 the field's standard deviation is ~0.003 px, so the mesh warp (~2x the cost) changes nothing.
DISPLACEMENT_TOLERANCE_PX = 0.05
# Reflect-101 reaches at most this many image sizes beyond each edge (0 further out): only near-singular
# elastic affines reach that far, and the padded copy grows with the square of the reach.
REFLECT_REACH = 2


def _fold_runs(lo: int, hi: int, n: int) -> list[tuple[int, int, int, bool]]:
    """Reflect-101 (cv2) source index runs for padded positions lo..hi-1 of an axis of length n >= 2.

    Returns:
      (destination offset from lo, first source index, length, reversed) per run of consecutive indices.
    """
    period = 2 * (n - 1)
    idx = np.arange(lo, hi) % period
    idx = np.where(idx < n, idx, period - idx)
    starts = [0, *(np.flatnonzero(np.diff(idx, 2) != 0) + 2).tolist(), len(idx)]  # a run ends at each fold
    return [(s, int(idx[s]), e - s, bool(e - s > 1 and idx[s + 1] < idx[s])) for s, e in zip(starts, starts[1:])]


def _reflect_pad(im: Image.Image, x0: int, y0: int, x1: int, y1: int) -> Image.Image:
    """im extended by reflect-101 to cover pixels [x0, x1) x [y0, y1) of its own grid (pastes of flipped crops;
    numpy reversal of 3-byte pixels is ~10x slower than PIL's transpose)."""
    w, h = im.size
    for axis, lo, hi, n in ((0, x0, x1, w), (1, y0, y1, h)):
        if lo == 0 and hi == n:
            continue
        size = (hi - lo, im.size[1]) if axis == 0 else (im.size[0], hi - lo)
        out = Image.new(im.mode, size)
        flipped = None
        for dst, first, length, rev in _fold_runs(lo, hi, n):
            a = first - length + 1 if rev else first  # lowest source index of the run
            if rev:
                if flipped is None:
                    flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT if axis == 0 else Image.Transpose.FLIP_TOP_BOTTOM)
                src, a = flipped, n - 1 - first
            else:
                src = im
            box = (a, 0, a + length, im.size[1]) if axis == 0 else (0, a, im.size[0], a + length)
            out.paste(src.crop(box), (dst, 0) if axis == 0 else (0, dst))
        im = out
    return im


def _fold_matrix(k: int, n: int) -> tuple[float, float]:
    """(scale, offset) of reflect-101 on PIL coordinates in fold tile k of an axis of n pixels: tile k holds
    pixel-centre coordinates [k (n - 1), (k + 1) (n - 1)] and maps onto the image mirrored when k is odd."""
    return (1.0, -k * (n - 1.0)) if k % 2 == 0 else (-1.0, (k + 1) * (n - 1.0) + 1.0)


def folded_warp(image: Image.Image, mask: Image.Image, inverse: np.ndarray, to_source: np.ndarray | None = None,
                *, upsampled: bool = False) -> tuple[Image.Image, Image.Image]:
    """One resampling pass of out(p) = S(to_source(R(inverse(p)))), R = reflect-101 onto the (W, H) frame.

    This is a reflect-101 affine warp of an intermediate image I = S o to_source (e.g. a flipped and affinely
    warped source, 0 outside S), computed without building I or a padded copy: R is affine on each fold tile,
    so the output is the main tile's affine warp plus, for each other tile the output reaches, a warp of that
    tile's pixels pasted over it. Bilinear interpolation of a reflect-101 extension is itself mirror-symmetric
    about the folds, so this equals the two-pass result up to the second pass's resampling blur, and reflects
    to any distance (cv2's BORDER_REFLECT_101).

    Args:
      image: RGB source S, or with `upsampled` its `upsample2` version; mask: L source (nearest).
      inverse: (2, 3) map from output to intermediate-frame coordinates (PIL coordinates: pixel (i, j) is
        the unit square at (i, j), sampled at its centre).
      to_source: (2, 3) map from intermediate-frame to source coordinates (None: identity). The frame and the
        output have the source's (the mask's) size.
      upsampled: sample `image` as `sample` does.

    Returns:
      (image of `image`'s mode, L mask) of the mask's size.
    """
    w, h = mask.size
    g = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)) if to_source is None else tuple(map(tuple, np.asarray(to_source).tolist()))
    e = tuple(map(tuple, np.asarray(inverse).tolist()))
    corners = np.array([[0.5, 0.5], [w - 0.5, 0.5], [0.5, h - 0.5], [w - 0.5, h - 0.5]]) @ np.array(e)[:, :2].T + np.array(e)[:, 2]
    (kx0, ky0), (kx1, ky1) = [np.floor((f(corners, axis=0) - 0.5) / (np.array([w, h]) - 1.0)).astype(int).tolist()
                              for f in (np.min, np.max)]

    def tile_map(i: int, j: int, x0: int = 0, y0: int = 0) -> np.ndarray:
        """to_source o fold(i, j) o inverse o shift(x0, y0), in plain floats (this runs per tile)."""
        (sx, tx), (sy, ty) = _fold_matrix(i, w), _fold_matrix(j, h)
        f = ((sx * e[0][0], sx * e[0][1], sx * (e[0][2] + e[0][0] * x0 + e[0][1] * y0) + tx),
             (sy * e[1][0], sy * e[1][1], sy * (e[1][2] + e[1][0] * x0 + e[1][1] * y0) + ty))
        return np.array([[g[r][0] * f[0][c] + g[r][1] * f[1][c] + (g[r][2] if c == 2 else 0.0) for c in range(3)]
                         for r in range(2)])

    main = (min(max(0, kx0), kx1), min(max(0, ky0), ky1))
    out_i = sample(image, (w, h), tile_map(*main), upsampled)
    out_m = _transform(mask, (w, h), tile_map(*main), Image.Resampling.NEAREST)
    if (kx0, ky0) == (kx1, ky1):
        return out_i, out_m
    rows = np.arange(h, dtype=np.float64) + 0.5
    y_tiles = {j: _tile_columns(e[1], rows, j, h, w) for j in range(ky0, ky1 + 1)}
    for i in range(kx0, kx1 + 1):
        xa, xb = _tile_columns(e[0], rows, i, w, w)
        for j in range(ky0, ky1 + 1):
            if (i, j) == main:
                continue
            ya, yb = y_tiles[j]
            start, stop = np.maximum(xa, ya), np.minimum(xb, yb)  # per output row: pixels [start, stop) in the tile
            hit = np.flatnonzero(stop > start)
            if not len(hit):
                continue
            y0, y1 = int(hit[0]), int(hit[-1]) + 1
            x0, x1 = int(start[hit].min()), int(stop[hit].max())
            cols = np.arange(x0, x1)
            paste = Image.fromarray((cols >= start[y0:y1, None]) & (cols < stop[y0:y1, None]))  # mode "1": a copy, no blend
            m = tile_map(i, j, x0, y0)
            out_i.paste(sample(image, (x1 - x0, y1 - y0), m, upsampled), (x0, y0), paste)
            out_m.paste(_transform(mask, (x1 - x0, y1 - y0), m, Image.Resampling.NEAREST), (x0, y0), paste)
    return out_i, out_m


def _tile_columns(row_map: np.ndarray, rows: np.ndarray, k: int, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output row, the output columns [start, stop) whose pixel centres fall in fold tile k of one axis.

    Args:
      row_map: (3,) one row (a, b, c) of the output -> frame map, u = a x + b y + c - 0.5 in pixel-centre units.
      rows: float64 (H,) output row centres y.
      k: fold tile index; n: the frame's length along this axis; width: the output's width.
    """
    a, b, c = row_map
    r = b * rows + c - 0.5 + 0.5 * a  # u at column x is a * x + r
    lo, hi = k * (n - 1.0) - r, (k + 1) * (n - 1.0) - r  # want lo <= a x < hi
    if abs(a) < 1e-12:
        inside = (lo <= 0) & (0 < hi)
        return np.zeros(len(rows), np.int64), np.where(inside, width, 0).astype(np.int64)
    if a > 0:
        start, stop = np.ceil(lo / a), np.ceil(hi / a)
    else:
        start, stop = np.floor(hi / a) + 1, np.floor(lo / a) + 1
    return np.clip(start, 0, width).astype(np.int64), np.clip(stop, 0, width).astype(np.int64)


def _transform(im: Image.Image, size: tuple[int, int], inverse: np.ndarray, resample) -> Image.Image:
    return im.transform(size, Image.Transform.AFFINE, tuple(inverse.ravel().tolist()), resample)


_LOW7 = np.uint32(0x7F7F7F7F)


def upsample2(image: np.ndarray, out: np.ndarray | None = None) -> Image.Image:
    """uint8 RGB (H, W, 3) -> RGBX PIL image (2W-1, 2H-1): the pixels at even positions, linear midpoints between.

    Midpoints are byte-wise averages of packed RGBX words ((a | b) - ((a ^ b) >> 1 & 0x7f..): rounds half
    up along x; (a & b) + ((a ^ b) >> 1 & 0x7f..): half down along y), so exact to the rounding.

    Args:
      image: uint8 (H, W, 3).
      out: optional uint32 (2H-1, 2W-1) buffer to fill; the image then shares its memory. A fresh 1 MB
        buffer per call costs ~250 page faults (~1 ms, more than the upsampling), so augment_kvasir reuses one.
    """
    h, w, _ = image.shape
    x = np.frombuffer(Image.fromarray(np.ascontiguousarray(image)).tobytes("raw", "RGBX"), np.uint32).reshape(h, w)
    if out is None:
        out = np.empty((2 * h - 1, 2 * w - 1), np.uint32)
    elif out.shape != (2 * h - 1, 2 * w - 1) or out.dtype != np.uint32:
        raise ValueError(f"out must be uint32 {(2 * h - 1, 2 * w - 1)}, got {out.dtype} {out.shape}")
    even = out[0::2]
    even[:, 0::2] = x
    a, b = x[:, :-1], x[:, 1:]
    even[:, 1::2] = (a | b) - ((a ^ b) >> 1 & _LOW7)
    a, b = out[0:-1:2], out[2::2]
    out[1::2] = (a & b) + ((a ^ b) >> 1 & _LOW7)
    return Image.frombuffer("RGBX", (2 * w - 1, 2 * h - 1), out, "raw", "RGBX", 0, 1)


_SCRATCH = threading.local()  # per-thread upsampling buffer (Grain maps records in several threads)


def _scratch_u32(shape: tuple[int, int]) -> np.ndarray:
    buf = getattr(_SCRATCH, "u32", None)
    if buf is None or buf.shape != shape:
        buf = _SCRATCH.u32 = np.empty(shape, np.uint32)
    return buf


def sample(image: Image.Image, size: tuple[int, int], inverse: np.ndarray, upsampled: bool) -> Image.Image:
    """Affine resampling of `image` at the output pixel centres mapped by `inverse` (PIL coordinates), 0 outside.

    upsampled=False: PIL bilinear. upsampled=True: `image` is `upsample2(source)` and each output pixel takes the
    nearest of its samples, i.e. the source's bilinear interpolant at the position rounded to the nearest half
    pixel (<= 0.25 px off per axis), through PIL's fixed-point nearest path: ~1/8 of the bilinear cost.
    """
    if not upsampled:
        return _transform(image, size, inverse, Image.Resampling.BILINEAR)
    m = 2.0 * inverse  # source pixel-centre coordinate u = q - 0.5 sits at upsampled index 2u = 2q - 1
    m[:, 2] -= 0.5     # nearest index: floor(2q - 1 + 0.5)
    return _transform(image, size, m, Image.Resampling.NEAREST)


def _warp_pil(image: Image.Image, mask: Image.Image, inverse: np.ndarray, *, reflect: bool,
              disp: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
              ) -> tuple[Image.Image, Image.Image]:
    """`warp` on PIL images (RGB, L) of the output size."""
    w, h = mask.size
    if disp is None:
        gy, gx = np.meshgrid([0.0, float(h)], [0.0, float(w)], indexing="ij")
        py, px = gy, gx
    else:
        gy, gx = disp[0], disp[1]
        py, px = gy + disp[2], gx + disp[3]
    sx = inverse[0, 0] * px + inverse[0, 1] * py + inverse[0, 2]
    sy = inverse[1, 0] * px + inverse[1, 1] * py + inverse[1, 2]
    x0 = y0 = 0
    if reflect:
        # Extend only the sides and amounts the output grid reads: the jittered affine often reaches far
        # outside on one side only.
        x0, x1 = max(int(np.floor(sx.min())) - 2, -REFLECT_REACH * w), min(int(np.ceil(sx.max())) + 2, (REFLECT_REACH + 1) * w)
        y0, y1 = max(int(np.floor(sy.min())) - 2, -REFLECT_REACH * h), min(int(np.ceil(sy.max())) + 2, (REFLECT_REACH + 1) * h)
        x0, y0, x1, y1 = min(x0, 0), min(y0, 0), max(x1, w), max(y1, h)
        image, mask = _reflect_pad(image, x0, y0, x1, y1), _reflect_pad(mask, x0, y0, x1, y1)
    if disp is None:
        m = inverse.copy()
        m[:, 2] -= (x0, y0)
        args = (Image.Transform.AFFINE, tuple(m.ravel().tolist()))
    else:
        sx, sy = sx - x0, sy - y0
        mesh = []
        for i in range(gy.shape[0] - 1):
            for j in range(gy.shape[1] - 1):
                box = (int(gx[i, j]), int(gy[i, j]), int(gx[i + 1, j + 1]), int(gy[i + 1, j + 1]))
                quad = (sx[i, j], sy[i, j], sx[i + 1, j], sy[i + 1, j],                  # NW, SW
                        sx[i + 1, j + 1], sy[i + 1, j + 1], sx[i, j + 1], sy[i, j + 1])  # SE, NE
                mesh.append((box, tuple(float(v) for v in quad)))
        args = (Image.Transform.MESH, mesh)
    return (image.transform((w, h), *args, Image.Resampling.BILINEAR),
            mask.transform((w, h), *args, Image.Resampling.NEAREST))


def warp(image: np.ndarray, mask: np.ndarray, inverse: np.ndarray, *, reflect: bool,
         disp: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Warps image (bilinear) and mask (nearest) by the inverse affine `inverse` (output -> source, PIL coords).

    Args:
      image: uint8 (H, W, 3); mask: uint8 (H, W).
      inverse: (2, 3) map from output pixel coordinates to source coordinates.
      reflect: False fills outside the source with 0 (cv2.BORDER_CONSTANT); True reflects (BORDER_REFLECT_101)
        as far as the mapped output grid reaches (up to REFLECT_REACH image sizes beyond each edge; 0 further out).
      disp: optional (gy, gx, dy, dx): a displacement (dy, dx) in output pixels known at grid points (gy, gx) of
        a regular grid of output cells; applied with PIL's MESH transform (bilinear between grid points).

    Returns:
      (image uint8 (H, W, 3), mask uint8 (H, W)).
    """
    out_i, out_m = _warp_pil(Image.fromarray(np.ascontiguousarray(image)), Image.fromarray(np.ascontiguousarray(mask)),
                             inverse, reflect=reflect, disp=disp)
    return np.asarray(out_i), np.asarray(out_m)


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
    aff = _invert(affine_matrix(rng, h, w)) if rng.random() < 0.5 else None
    elastic, disp = None, None
    if rng.random() < 0.5:
        elastic = _invert(elastic_affine_matrix(rng, h, w, elastic_alpha_affine))
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
    first = flip if aff is None else _then(aff, flip)  # output of the affine -> flipped image -> source
    mk = Image.fromarray(np.ascontiguousarray(mask))
    if disp is None:
        up = not exact_bilinear
        im = upsample2(image, _scratch_u32((2 * h - 1, 2 * w - 1))) if up else Image.fromarray(np.ascontiguousarray(image))
        if elastic is None:
            im, mk = sample(im, (w, h), first, up), _transform(mk, (w, h), first, Image.Resampling.NEAREST)
        else:
            im, mk = folded_warp(im, mk, elastic, first, upsampled=up)  # affine and elastic in one pass
        return np.frombuffer(im.tobytes("raw", "RGB"), np.uint8).reshape(h, w, 3), np.asarray(mk)
    # A visible elastic displacement field (non-default alpha): bilinear, then the mesh warp.
    im = Image.fromarray(np.ascontiguousarray(image))
    if aff is not None:
        im, mk = _transform(im, (w, h), first, Image.Resampling.BILINEAR), _transform(mk, (w, h), first, Image.Resampling.NEAREST)
        flip = None
    # Reflecting the flipped image equals flipping the reflected one, so the flip joins the map here too.
    im, mk = _warp_pil(im, mk, elastic if flip is None else _then(elastic, flip), reflect=True, disp=disp)
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
