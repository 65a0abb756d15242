"""Random 3D training patches from the preprocessed .npy cache, as a Grain pipeline.

The random part of the UNETR/BTCV MONAI pipeline (reference_lgmsnet.md §6): RandCropByPosNegLabeld
(num_samples patches per volume, foreground-centred with probability pos_ratio), RandFlipd per axis,
RandRotate90d, RandScaleIntensityd, RandShiftIntensityd. Shapes are fixed: every batch is
(volumes_per_batch * num_samples, *patch_size, 1), so the train step compiles once.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import grain
import numpy as np

from data_pipelines import preprocess3d

# Rejection-sampling tries for a background centre before falling back to a full scan.
_BG_TRIES = 64


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Patch sampling and augmentation (defaults: the UNETR/BTCV recipe).

    Attributes:
      patch_size: (D, H, W) voxels of every patch.
      num_samples: patches drawn per volume visit (MONAI num_samples).
      pos_ratio: probability that a patch is centred on a foreground voxel (pos / (pos + neg)).
      image_threshold: background centres need image > this (MONAI image_threshold); None: any label-0 voxel.
      flip_prob: per-axis flip probability, axes 0, 1, 2 independently.
      rot90_prob: probability of a rot90 by k in {1, .., rot90_max_k} in the plane `rot90_axes`.
      rot90_max_k: largest number of quarter turns.
      rot90_axes: the two patch axes rotated; their sizes must be equal (fixed output shape).
      scale_prob, scale_range: x -> x * (1 + U(-r, r)) with probability p.
      shift_prob, shift_range: x -> x + U(-r, r) with probability p.
      pad_value: image value used where a patch reaches past the volume (label 0 there).
    """

    patch_size: tuple[int, int, int] = (96, 96, 96)
    num_samples: int = 4
    pos_ratio: float = 0.5
    image_threshold: float | None = 0.0
    flip_prob: float = 0.2
    rot90_prob: float = 0.2
    rot90_max_k: int = 3
    rot90_axes: tuple[int, int] = (0, 1)
    scale_prob: float = 0.1
    scale_range: float = 0.1
    shift_prob: float = 0.1
    shift_range: float = 0.1
    pad_value: float = 0.0

    def __post_init__(self):
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        if not 0.0 <= self.pos_ratio <= 1.0:
            raise ValueError(f"pos_ratio must be in [0, 1], got {self.pos_ratio}")
        a, b = self.rot90_axes
        if self.rot90_prob > 0 and self.patch_size[a] != self.patch_size[b]:
            raise ValueError(f"rot90 in axes {self.rot90_axes} needs equal patch sizes there, got "
                             f"{self.patch_size}; set rot90_prob=0 or make them equal")


# ----------------------------------------------------------------------------------------------
# Sampling (pure numpy; rng is a np.random.Generator)
# ----------------------------------------------------------------------------------------------

def pad_offset(shape: Sequence[int], patch_size: Sequence[int]) -> np.ndarray:
    """Voxels added before each axis when a volume smaller than the patch is padded symmetrically.

    Args:
      shape: (3,) volume shape.
      patch_size: (3,) patch shape.

    Returns:
      (3,) int64: max(p - n, 0) // 2 (MONAI SpatialPad "symmetric"); the padded size is max(n, p).
    """
    return np.maximum(np.asarray(patch_size) - np.asarray(shape), 0) // 2


def sample_centres(label: np.ndarray, fg_index: np.ndarray | None, image: np.ndarray | None,
                   config: PatchConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draws num_samples patch centres, each foreground with probability pos_ratio.

    A foreground centre is a uniform voxel of label > 0, a background one a uniform voxel of
    label == 0 (and image > image_threshold). When one kind is absent the other is used. Centres
    are then moved inside the padded volume so the patch fits (MONAI correct_crop_centers).

    Args:
      label: (I, J, K) uint8 label (unpadded).
      fg_index: flat indices of label > 0 (from the cache), or None to compute them.
      image: (I, J, K) image for the background threshold, or None.
      config: PatchConfig.
      rng: random generator.

    Returns:
      (centres (S, 3) int64 in padded-volume coordinates, is_fg (S,) bool as drawn).
    """
    shape = np.asarray(label.shape)
    if fg_index is None:
        fg_index = np.flatnonzero(np.asarray(label) > 0)
    patch = np.asarray(config.patch_size)
    padded = np.maximum(shape, patch)
    offset = pad_offset(shape, patch)
    centres, is_fg = [], []
    for _ in range(config.num_samples):
        want_fg = bool(rng.random() < config.pos_ratio)
        flat = None
        if want_fg and len(fg_index):
            flat = int(fg_index[rng.integers(len(fg_index))])
        else:
            flat = _background_voxel(label, image, config.image_threshold, rng)
            if flat is None:  # no background voxel at all
                if not len(fg_index):
                    raise ValueError("volume has neither foreground nor background voxels to centre on")
                flat = int(fg_index[rng.integers(len(fg_index))])
        c = np.asarray(np.unravel_index(flat, label.shape), np.int64)
        is_fg.append(bool(label.flat[flat] > 0))
        c = c + offset
        c = np.clip(c, patch // 2, padded - patch + patch // 2)
        centres.append(c)
    return np.stack(centres), np.asarray(is_fg)


def _background_voxel(label, image, threshold, rng) -> int | None:
    n = label.size
    for _ in range(_BG_TRIES):
        flat = int(rng.integers(n))
        if label.flat[flat] == 0 and (image is None or threshold is None or image.flat[flat] > threshold):
            return flat
    ok = np.asarray(label).ravel() == 0
    if image is not None and threshold is not None:
        ok &= np.asarray(image).ravel() > threshold
    cands = np.flatnonzero(ok)
    return int(cands[rng.integers(len(cands))]) if len(cands) else None


def crop_padded(arr: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value) -> np.ndarray:
    """arr[start : start + size] where out-of-range voxels take pad_value (reads only the overlap).

    Args:
      arr: (I, J, K) array (may be a memmap).
      start: (3,) start, may be negative.
      size: (3,) output size.
      pad_value: fill value.

    Returns:
      (size) array of arr's dtype.
    """
    out = np.full(tuple(size), pad_value, dtype=arr.dtype)
    src, dst = [], []
    for s, p, n in zip(start, size, arr.shape):
        lo, hi = max(s, 0), min(s + p, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def extract_patch(image: np.ndarray, label: np.ndarray, centre: np.ndarray, config: PatchConfig):
    """The patch around `centre` (padded-volume coordinates) of the padded volume.

    Args:
      image: (I, J, K) float32, unpadded.
      label: (I, J, K) uint8, unpadded.
      centre: (3,) from sample_centres.
      config: PatchConfig.

    Returns:
      (image (D, H, W) float32, label (D, H, W) uint8).
    """
    patch = np.asarray(config.patch_size)
    start = centre - patch // 2 - pad_offset(image.shape, patch)
    return (crop_padded(image, start, patch, np.float32(config.pad_value)),
            crop_padded(label, start, patch, np.uint8(0)))


def augment_patch(image: np.ndarray, label: np.ndarray, config: PatchConfig, rng: np.random.Generator):
    """Random flips, rot90, intensity scale and shift, in the MONAI recipe's order.

    Args:
      image: (D, H, W) float32.
      label: (D, H, W) uint8.
      config: PatchConfig.
      rng: random generator.

    Returns:
      (image, label) with the same shapes.
    """
    for axis in range(3):
        if rng.random() < config.flip_prob:
            image, label = np.flip(image, axis), np.flip(label, axis)
    if rng.random() < config.rot90_prob:
        k = int(rng.integers(1, config.rot90_max_k + 1))
        image, label = np.rot90(image, k, config.rot90_axes), np.rot90(label, k, config.rot90_axes)
    if rng.random() < config.scale_prob:
        image = image * np.float32(1.0 + rng.uniform(-config.scale_range, config.scale_range))
    if rng.random() < config.shift_prob:
        image = image + np.float32(rng.uniform(-config.shift_range, config.shift_range))
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label)


# ----------------------------------------------------------------------------------------------
# Grain pipeline
# ----------------------------------------------------------------------------------------------

class CachedVolumeSource:
    """Random-access source over cached cases; opens memmaps lazily so it pickles to workers cheaply.

    Args:
      cache_dir: folder written by preprocess3d.build_cache.
      names: case names, in index order.
    """

    def __init__(self, cache_dir: str | pathlib.Path, names: Sequence[str]):
        self.cache_dir = pathlib.Path(cache_dir)
        self.names = list(names)
        missing = [n for n in self.names if not (self.cache_dir / n / "meta.json").is_file()]
        if missing:
            raise FileNotFoundError(f"cases not in the 3D cache {self.cache_dir}: {missing[:10]}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        case = preprocess3d.load_cached(self.cache_dir, self.names[index], mmap=True)
        if case["label"] is None:
            raise ValueError(f"{self.names[index]}: no label in the cache; cannot train on it")
        case["index"] = int(index)
        return case


class SamplePatches(grain.transforms.RandomMap):
    """Grain RandomMap: one cached case -> num_samples augmented patches.

    Output: {"image": (S, D, H, W, 1) float32, "mask": (S, D, H, W, 1) int32,
    "volume_index": (S,) int32, "centre_is_fg": (S,) bool}.
    """

    def __init__(self, config: PatchConfig):
        self.config = config

    def random_map(self, case: dict, rng: np.random.Generator) -> dict:
        image, label = case["image"], case["label"]
        centres, is_fg = sample_centres(label, case["fg_index"], image, self.config, rng)
        images, labels = [], []
        for c in centres:
            im, lb = extract_patch(image, label, c, self.config)
            im, lb = augment_patch(im, lb, self.config, rng)
            images.append(im)
            labels.append(lb)
        s = len(centres)
        return {"image": np.stack(images)[..., None],
                "mask": np.stack(labels).astype(np.int32)[..., None],
                "volume_index": np.full((s,), case["index"], np.int32),
                "centre_is_fg": is_fg}


def _merge_volumes(batch: dict) -> dict:
    # (V, S, ...) -> (V * S, ...): the S patches of each volume become rows of one batch.
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def patch_dataset(cache_dir: str | pathlib.Path, names: Sequence[str], config: PatchConfig, *, seed: int,
                  volumes_per_batch: int = 1, shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
    """Endless, shuffled, sharded stream of patch batches.

    Each process takes the volumes `names[shard_index::shard_count]` (pass jax.process_index() and
    jax.process_count() from train.py); epochs are reshuffled; randomness depends only on
    (seed, position in the stream), so a restored iterator state reproduces the same batches.

    Args:
      cache_dir: folder written by preprocess3d.build_cache.
      names: training case names.
      config: PatchConfig.
      seed: pipeline seed.
      volumes_per_batch: volumes per batch on this process (batch = volumes_per_batch * num_samples).
      shard_index: this process's index.
      shard_count: number of processes.

    Returns:
      grain.MapDataset of {"image": (B, D, H, W, 1) f32, "mask": (B, D, H, W, 1) int32,
      "volume_index": (B,) int32 (index into names), "centre_is_fg": (B,) bool}.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    source = CachedVolumeSource(cache_dir, names)
    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if len(ds) < volumes_per_batch:
        raise ValueError(f"shard {shard_index}/{shard_count} has {len(ds)} volumes, fewer than "
                         f"volumes_per_batch={volumes_per_batch}")
    return (ds.seed(seed).shuffle().repeat(None)
            .random_map(SamplePatches(config))
            .batch(volumes_per_batch, drop_remainder=True)
            .map(_merge_volumes))
