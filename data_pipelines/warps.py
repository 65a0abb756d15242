"""Geometric warps for the augmentations: affine maps, the elastic displacement field, reflect-101 folding and the
one-pass resampling of `data_pipelines.transforms`'s Kvasir recipe.

Affine maps are (2, 3) arrays in PIL coordinates mapping output pixels to source pixels ("inverse" maps), as PIL's
`Image.transform(AFFINE)` takes them. Warps run in PIL's C code (numpy gather-based bilinear remaps cost ~12 ms per
256x256 image here, PIL ~2 ms); by default images are sampled through PIL's fixed-point nearest path on a 2x linear
upsample (`sample`): bilinear interpolation at positions rounded to the nearest half pixel, ~1/8 of PIL's bilinear.
"""
from __future__ import annotations

import threading

import numpy as np
from PIL import Image
from scipy import ndimage


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
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
    out_m = pil_affine(mask, (w, h), tile_map(*main), Image.Resampling.NEAREST)
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
            out_m.paste(pil_affine(mask, (x1 - x0, y1 - y0), m, Image.Resampling.NEAREST), (x0, y0), paste)
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


def pil_affine(im: Image.Image, size: tuple[int, int], inverse: np.ndarray, resample) -> Image.Image:
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


def scratch_u32(shape: tuple[int, int]) -> np.ndarray:
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
        return pil_affine(image, size, inverse, Image.Resampling.BILINEAR)
    m = 2.0 * inverse  # source pixel-centre coordinate u = q - 0.5 sits at upsampled index 2u = 2q - 1
    m[:, 2] -= 0.5     # nearest index: floor(2q - 1 + 0.5)
    return pil_affine(image, size, m, Image.Resampling.NEAREST)


def warp_image(image: Image.Image, mask: Image.Image, inverse: np.ndarray, *, reflect: bool,
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
    out_i, out_m = warp_image(Image.fromarray(np.ascontiguousarray(image)), Image.fromarray(np.ascontiguousarray(mask)),
                             inverse, reflect=reflect, disp=disp)
    return np.asarray(out_i), np.asarray(out_m)
