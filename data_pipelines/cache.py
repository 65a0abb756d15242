"""Decode-and-resize-once cache: uint8 arrays in .npy files, memory-mapped at training time.

A cache entry is keyed by the dataset listing (paths, sizes, mtimes), the image size and the resampling,
so editing a file or changing the size builds a new entry; the user's data folder is only read.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Sequence

import numpy as np
from PIL import Image

from data_pipelines.readers import Item
from data_pipelines.verify import Issue

log = logging.getLogger(__name__)

CACHE_VERSION = 1
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS,
            "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


def default_cache_dir() -> pathlib.Path:
    """$LGMSNET_CACHE, else ~/.cache/lgmsnet_jax."""
    env = os.environ.get("LGMSNET_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "lgmsnet_jax"


def _to_uint8_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float greyscale (some TIFFs): scale the observed range to 0..255.
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        return np.repeat(np.round(a).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def decode_image(path: pathlib.Path | str) -> np.ndarray:
    """Reads any PIL-readable image as uint8 (H, W, 3) RGB (L, RGBA, P and 16-bit are converted)."""
    with Image.open(path) as im:
        im.load()
        return _to_uint8_rgb(im)


def decode_mask(path: pathlib.Path | str) -> np.ndarray:
    """Reads a mask as bool (H, W): grey (L) value > 127, as the reference binarises (JPEG masks ring)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.asarray(im) > 127
        return np.asarray(im.convert("L")) > 127


def load_item(item: Item) -> tuple[np.ndarray | None, np.ndarray | None, list[Issue]]:
    """Decodes an item at native resolution: image uint8 (H, W, 3), mask bool (H, W) = union of its masks.

    Returns:
      (image, mask, issues); image/mask are None when an issue makes the item unusable.
    """
    if item.frame is not None:
        return _load_h5_item(item)
    try:
        image = decode_image(item.image)
    except Exception as e:  # noqa: BLE001 -- any decoder failure means "unreadable"
        return None, None, [Issue("unreadable", item.id, str(item.image), f"{type(e).__name__}: {e}")]
    issues, mask = [], np.zeros(image.shape[:2], bool)
    for m in item.masks:
        try:
            mk = decode_mask(m)
        except Exception as e:  # noqa: BLE001
            issues.append(Issue("unreadable", item.id, str(m), f"{type(e).__name__}: {e}"))
            continue
        if mk.shape != mask.shape:
            issues.append(Issue("size_mismatch", item.id, str(m),
                                f"mask is {mk.shape[1]}x{mk.shape[0]} (WxH), image {item.image.name} is "
                                f"{image.shape[1]}x{image.shape[0]}"))
            continue
        mask |= mk
    return (None, None, issues) if issues else (image, mask, [])


def _load_h5_item(item: Item) -> tuple[np.ndarray | None, np.ndarray | None, list[Issue]]:
    """Frame `item.frame` of an HDF5 file with `image` (N, H, W[, 3]) and `mask` (N, H, W) datasets (TUCC)."""
    import h5py

    try:
        with h5py.File(item.image, "r") as f:
            image, mask = np.asarray(f["image"][item.frame]), np.asarray(f["mask"][item.frame])
    except Exception as e:  # noqa: BLE001
        return None, None, [Issue("unreadable", item.id, f"{item.image}[{item.frame}]", f"{type(e).__name__}: {e}")]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = np.zeros(image.shape, np.uint8) if hi <= lo else np.round((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if mask.shape != image.shape[:2]:
        return None, None, [Issue("size_mismatch", item.id, f"{item.image}[{item.frame}]",
                                  f"mask {mask.shape} vs image {image.shape[:2]}")]
    # TUCC masks are 0/1 or 0/255; either way, a positive pixel is foreground.
    return image, (mask > 127) if mask.max() > 1 else (mask > 0), []


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int], resample: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Resizes image (H, W, 3) uint8 with `resample` and mask (H, W) bool/uint8 with nearest to size (h, w).

    Returns:
      image uint8 (h, w, 3), mask uint8 (h, w) in {0, 1}.
    """
    h, w = size
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), RESAMPLE[resample]))
    m = mask.astype(np.uint8)
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
    return image, m


def _listing_key(name: str, items: Sequence[Item], size: tuple[int, int], resample: str) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([CACHE_VERSION, name, list(size), resample]).encode())
    for it in items:
        for p in (it.image, *it.masks):
            st = p.stat()
            h.update(f"{it.id}\0{p.resolve()}\0{it.frame}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass
class CacheEntry:
    """A built cache: `path` holds images.npy (N, h, w, 3) uint8, masks.npy (N, h, w) uint8, meta.json."""

    path: pathlib.Path
    ids: list[str]
    ok: list[bool]
    issues: list[Issue]
    image_size: tuple[int, int]


def _read_entry(path: pathlib.Path) -> CacheEntry:
    meta = json.loads((path / "meta.json").read_text())
    return CacheEntry(path, meta["ids"], meta["ok"], [Issue(**i) for i in meta["issues"]],
                      tuple(meta["image_size"]))


def build_cache(name: str, items: Sequence[Item], *, image_size: tuple[int, int], resample: str,
                cache_dir: pathlib.Path | str | None = None, num_threads: int | None = None) -> CacheEntry:
    """Decodes, validates and resizes every item once into a cache entry (reused when already built).

    Args:
      name: dataset name (cache subfolder).
      items: the items to decode (typically the whole listing of the dataset folder).
      image_size: (h, w) of the stored arrays.
      resample: image resampling, a key of `RESAMPLE`; masks always use nearest.
      cache_dir: root of the cache (default `default_cache_dir()`); never the data folder.
      num_threads: decoding threads (PIL releases the GIL); default min(8, cpu count).

    Returns:
      The `CacheEntry`; `ok[i]` is False and `issues` explain items that failed to decode.
    """
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {resample!r}")
    image_size = (int(image_size[0]), int(image_size[1]))
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    items = sorted(items, key=lambda it: it.id)
    final = root / name / _listing_key(name, items, image_size, resample)
    if (final / "meta.json").is_file():
        return _read_entry(final)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    h, w = image_size
    n = len(items)
    images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (max(n, 0), h, w, 3))
    masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (max(n, 0), h, w))
    ok, issues = [False] * n, []

    def work(i: int):
        img, mk, iss = load_item(items[i])
        if img is not None:
            images[i], masks[i] = resize_pair(img, mk, image_size, resample)
        return i, img is not None, iss

    t0 = time.time()
    threads = num_threads or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for i, good, iss in pool.map(work, range(n)):
            ok[i] = good
            issues += iss
    images.flush(), masks.flush()
    del images, masks
    meta = {"ids": [it.id for it in items], "ok": ok, "issues": [dataclasses.asdict(i) for i in issues],
            "image_size": list(image_size), "resample": resample, "dataset": name,
            "files": [[str(it.image), *map(str, it.masks)] for it in items]}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        tmp.rename(final)
    except OSError:  # another process finished the same entry first; use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s: %d items at %dx%d in %.1fs -> %s", name, n, h, w, time.time() - t0, final)
    return _read_entry(final)


class CachedSource:
    """Random-access source over a cache entry: src[i] -> {"image", "mask", "id"} (a memcpy, no decode).

    Memory maps are opened lazily and dropped on pickling, so Grain worker processes reopen them instead of
    receiving a copy of the arrays.
    """

    def __init__(self, entry_path: pathlib.Path | str, rows: Sequence[int], ids: Sequence[str]):
        self.path = pathlib.Path(entry_path)
        self.rows = np.asarray(rows, np.int64)
        self.ids = list(ids)
        self._maps = None  # (images, masks) memory maps, published together (see _arrays)
        if len(self.rows) != len(self.ids):
            raise ValueError("rows and ids must have the same length")

    def _arrays(self):
        # Grain's reader threads call __getitem__ concurrently: open both maps, then publish them as one tuple,
        # so no thread can see the images map without the masks map (that race crashed GPU runs with 12 workers).
        maps = self._maps
        if maps is None:
            maps = (np.load(self.path / "images.npy", mmap_mode="r"), np.load(self.path / "masks.npy", mmap_mode="r"))
            self._maps = maps
        return maps

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self._arrays()[0].shape[1:3])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        images, masks = self._arrays()
        r = self.rows[i]
        # Read-only views of the memory map: the batch function copies them once, straight into the batch.
        return {"image": np.asarray(images[r]), "mask": np.asarray(masks[r]), "id": self.ids[i]}

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_maps"] = None
        return d

    def __repr__(self) -> str:
        return f"CachedSource({self.path}, n={len(self)})"
