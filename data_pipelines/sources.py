"""`load_source`: dataset name + folder + split -> validated, cached random-access source.

Each source returns {"image": uint8 (H, W, 3), "mask": uint8 (H, W) in {0, 1}, "id": str} at the cached size.
"""
from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence

import numpy as np

from data_pipelines import cache as cache_lib
from data_pipelines import readers, splitting
from data_pipelines.verify import DataError, Issue, resolve_issues

log = logging.getLogger(__name__)

REFERENCE_SPLIT_SETS = ("busi", "isic18", "tnscui")
ZERO_SHOT_SETS = ("cvc300", "cvc_clinicdb", "ph2", "bus", "tucc")
DATASETS = ("kvasir", *REFERENCE_SPLIT_SETS, "folder", "synthetic", *ZERO_SHOT_SETS)
# The reference resizes Kvasir with Lanczos4 and the others with bilinear (spec §5.2/§5.3).
DEFAULT_RESAMPLE = {"kvasir": "lanczos"}
_FOLDER_LEVEL = ("empty_folder", "extra_mask")


class SyntheticSource:
    """Tiny generated data (noisy background + one bright ellipse = the mask), deterministic per (seed, index).

    Args:
      num_examples: length.
      image_size: (h, w).
      seed: generation seed; different splits use different seeds.
    """

    def __init__(self, num_examples: int = 32, image_size: tuple[int, int] = (64, 64), seed: int = 0):
        self.num_examples, self.image_size, self.seed = int(num_examples), tuple(image_size), int(seed)
        self.ids = [f"synthetic_{seed}_{i:05d}" for i in range(self.num_examples)]

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_examples:
            raise IndexError(i)
        rng = np.random.default_rng((self.seed, i))
        h, w = self.image_size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = rng.uniform(0.25, 0.75, 2) * (h, w)
        ry, rx = rng.uniform(0.1, 0.3, 2) * (h, w)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        base = rng.integers(30, 90, 3).astype(np.float32)
        fg = rng.integers(150, 230, 3).astype(np.float32)
        noise = rng.normal(0.0, 12.0, (h, w, 3)).astype(np.float32)
        img = np.where(mask[..., None], fg, base) + noise
        return {"image": np.clip(np.round(img), 0, 255).astype(np.uint8), "mask": mask.astype(np.uint8),
                "id": self.ids[i]}


def _split_ids(name: str, data_dir: pathlib.Path, split: str, fold: int | None, seed: int,
               all_ids: Sequence[str], split_root: pathlib.Path, scheme: str, val_fraction: float,
               split_file: pathlib.Path | None) -> tuple[list[str], str]:
    """Ids of `split` and a description of where they came from (a file path)."""
    if split == "all":
        return sorted(all_ids), "all items"
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
    if scheme == "reference" and name in REFERENCE_SPLIT_SETS:
        # The reference evaluates on its val lists; there is no separate test list, so test == val.
        part = "train" if split == "train" else "val"
        f = splitting.reference_split_file(name, part, fold, data_dir)
        return splitting.read_ids(f), str(f)
    if scheme == "reference" and name == "kvasir":
        if split == "test":
            f = splitting.reference_split_file("kvasir", "pranet_test", None, data_dir)
            return splitting.read_ids(f), str(f)
        f = splitting.reference_split_file("kvasir", "pranet_train", None, data_dir)
        train_ids = splitting.read_ids(f)
        path = split_file or split_root / f"kvasir-pranet_train-val{val_fraction:g}-seed{seed}.json"
        parts = splitting.load_or_make_split(path, train_ids, seed=seed, fractions=(1 - val_fraction, val_fraction),
                                             names=("train", "val"), dataset=name, source=str(f))
        return parts[split], str(path)
    if scheme == "reference" and name in ZERO_SHOT_SETS and split == "test":
        return sorted(all_ids), "all items (zero-shot test set)"
    if scheme not in ("reference", "seeded"):
        raise ValueError(f"split_scheme must be 'reference' or 'seeded', got {scheme!r}")
    # Seeded 80/10/10 (DUCK-Net style) for everything else; written once so a run repeats exactly.
    path = split_file or split_root / f"{name}-{splitting.ids_digest(all_ids)}-seed{seed}-80-10-10.json"
    parts = splitting.load_or_make_split(path, all_ids, seed=seed, fractions=(0.8, 0.1, 0.1),
                                         names=("train", "val", "test"), dataset=name, data_dir=str(data_dir))
    return parts[split], str(path)


def load_source(name: str, data_dir: str | pathlib.Path | None, split: str, *, fold: int | None = None,
                seed: int = 0, image_size: Sequence[int] = (256, 256), cache_dir: str | pathlib.Path | None = None,
                on_bad: str = "error", report_path: str | pathlib.Path | None = None,
                split_scheme: str = "reference", val_fraction: float = 0.1,
                split_file: str | pathlib.Path | None = None, resample: str | None = None,
                backend: str = "npy", num_examples: int = 32, classes: Sequence[str] | None = None):
    """Validated random-access source of one split, decoded and resized once into a cache.

    Splits ("train" | "val" | "test" | "all"):
      * busi / isic18 / tnscui: the reference's three splits, `fold` 1..3 (data_pipelines/splits/, or
        `<data_dir>/splits/` if present); "test" is the reference's val list (it has no other).
      * kvasir: "test" = PraNet's 100 test images; "train"/"val" carve a seeded `val_fraction` (default 10%:
        810/90) out of PraNet's 900 training images, written to a split file. split_scheme="seeded" gives a
        DUCK-Net-style seeded 80/10/10 of all 1000 instead.
      * zero-shot sets: "test" = every image; folder (and split_scheme="seeded" for any set): seeded 80/10/10.
      Seeded splits are written to `split_file` (default `<cache_dir>/splits/...json`) and read back next time.

    Args:
      name: one of `DATASETS`.
      data_dir: the dataset folder (native layout; see readers.py). Only read, never written.
      split: see above.
      fold: reference split index 1..3 (busi/isic18/tnscui).
      seed: seed of seeded splits (Kvasir's val carve, 80/10/10) and of synthetic data. This is a *split* seed:
        keep it fixed across training seeds so runs are compared on one split.
      image_size: (h, w) of the cached arrays.
      cache_dir: cache root (default $LGMSNET_CACHE or ~/.cache/lgmsnet_jax).
      on_bad: "error" (raise `DataError` listing every problem) or "skip" (drop them, write `report_path`).
      report_path: JSON report of skipped items (default `<cache_dir>/reports/<name>-<split>.json`).
      split_scheme: "reference" or "seeded".
      val_fraction: Kvasir's validation share of PraNet train.
      split_file: explicit seeded-split file (read if it exists, else written).
      resample: image resampling for the cache (default: lanczos for kvasir, bilinear otherwise).
      backend: "npy" (memory-mapped arrays) or "tfds" (an ArrayRecord TFDS build of the same arrays).
      num_examples: synthetic only.
      classes: busi only: class folders to include (default benign, malignant).

    Returns:
      A source with len(), [i] -> {"image": uint8 (H, W, 3), "mask": uint8 (H, W) {0,1}, "id": str}, `.ids`.

    Raises:
      DataError: bad input (unless on_bad="skip"), or nothing usable left.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    cache_root = pathlib.Path(cache_dir) if cache_dir is not None else cache_lib.default_cache_dir()
    if name == "synthetic":
        offset = {"train": 0, "val": 1, "test": 2, "all": 3}[split]
        return SyntheticSource(num_examples, image_size, seed * 10 + offset)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {DATASETS}")
    if data_dir is None or not pathlib.Path(data_dir).is_dir():
        raise DataError(f"{name}: data folder {data_dir} does not exist",
                        [Issue("empty_folder", "", str(data_dir), "folder does not exist")])
    data_dir = pathlib.Path(data_dir).resolve()
    for what, path in (("cache_dir", cache_root), ("report_path", report_path),
                       ("split_file", None if split_file is None or pathlib.Path(split_file).is_file() else split_file)):
        if path is not None and pathlib.Path(path).resolve().is_relative_to(data_dir):
            raise ValueError(f"{what} {path} is inside the data folder {data_dir}, which is never written")
    listing = (readers.list_busi(data_dir, classes=tuple(classes)) if name == "busi" and classes
               else readers.list_dataset(name, data_dir))
    by_id = {it.id: it for it in listing.items}
    listed_ids = set(by_id) | {i.item_id for i in listing.issues if i.kind == "missing_mask"}
    ids, origin = _split_ids(name, data_dir, split, fold, seed, sorted(listed_ids), cache_root / "splits",
                             split_scheme, val_fraction, pathlib.Path(split_file) if split_file else None)
    wanted = set(ids)
    issues = [i for i in listing.issues if i.kind in _FOLDER_LEVEL or i.item_id in wanted]
    issues += [Issue("missing_id", i, origin, f"split id {i!r} has no image in {data_dir}")
               for i in ids if i not in listed_ids]
    entry = cache_lib.build_cache(name, listing.items, image_size=image_size,
                                  resample=resample or DEFAULT_RESAMPLE.get(name, "bilinear"), cache_dir=cache_root)
    issues += [i for i in entry.issues if i.item_id in wanted]
    if not ids:
        issues.append(Issue("empty_folder", "", origin, f"split {split!r} is empty"))
    tag = f"{split}{fold}" if fold else split
    dropped = resolve_issues(
        issues, on_bad=on_bad, dataset=name, split=tag, item_ids=ids,
        report_path=report_path or cache_root / "reports" / f"{name}-{tag}.json")
    if not ids:
        raise DataError(f"{name}/{split}: no items", issues)
    row = {i: r for r, i in enumerate(entry.ids)}
    keep = [i for i in ids if i not in dropped]
    if backend == "npy":
        return cache_lib.CachedSource(entry.path, [row[i] for i in keep], keep)
    if backend == "tfds":
        from data_pipelines import tfds_builders  # lazy: tfds import costs ~1 s
        if split == "all":
            raise ValueError("backend='tfds' stores the named splits only, not 'all'")
        return tfds_builders.tfds_source(name, data_dir, cache_root / "tfds", split, fold, image_size=image_size,
                                         seed=seed, on_bad=on_bad, cache_dir=cache_root, resample=resample)
    raise ValueError(f"backend must be 'npy' or 'tfds', got {backend!r}")
