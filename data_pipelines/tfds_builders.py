"""TFDS builders (ArrayRecord, manual_dir, no TensorFlow) storing decoded, resized uint8 arrays.

Each builder validates and decodes the raw folder (its `manual_dir`) once through `load_source` and writes raw
arrays, so reading a record is a copy, never a JPEG decode. Usage:

    b = Busi(data_dir=tfds_dir, config=Seg2DConfig.make(image_size=(256, 256)))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=busi_folder))
    src = TfdsSource(b.as_data_source("train1"))   # or load_source(..., backend="tfds")
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath


@dataclasses.dataclass(eq=False)
class Seg2DConfig(tfds.core.BuilderConfig):
    """Build options: stored size, split seed, bad-input policy, where the decode cache lives."""

    image_size: tuple[int, int] = (256, 256)
    seed: int = 0
    on_bad: str = "error"
    cache_dir: str | None = None
    resample: str | None = None

    @classmethod
    def make(cls, image_size=(256, 256), seed: int = 0, on_bad: str = "error", cache_dir=None, resample=None):
        """Config named '<h>x<w>_seed<seed>' (the name keys the TFDS output folder)."""
        h, w = (int(s) for s in image_size)
        return cls(name=f"{h}x{w}_seed{seed}" + (f"_{resample}" if resample else ""), version="1.0.0",
                   image_size=(h, w), seed=int(seed), on_bad=on_bad,
                   cache_dir=None if cache_dir is None else str(cache_dir), resample=resample)


class _Seg2DBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common builder: subclasses set DATASET and SPLITS {tfds split name: (split, fold)}."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [Seg2DConfig.make()]
    DATASET = ""
    SPLITS: dict[str, tuple[str, int | None]] = {}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point manual_dir at the dataset folder in its native layout (README, Datasets)."

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 resolves a packaged builder's file through `importlib_resources` (not installed without TF's
        # extras) and fails; the path only serves to look for checksums.tsv, which manual_dir builders lack.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = self.builder_config.image_size
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
            "mask": tfds.features.Tensor(shape=(h, w), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
            "id": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        root = pathlib.Path(dl_manager.manual_dir)
        return {name: self._generate_examples(root, split, fold) for name, (split, fold) in self.SPLITS.items()}

    def _generate_examples(self, root: pathlib.Path, split: str, fold: int | None):
        from data_pipelines.sources import load_source  # late: sources imports this module lazily too

        cfg = self.builder_config
        cache = pathlib.Path(cfg.cache_dir) if cfg.cache_dir else None
        report = pathlib.Path(self.data_dir) / f"skipped-{split}{fold or ''}.json"
        src = load_source(self.DATASET, root, split, fold=fold, seed=cfg.seed, image_size=cfg.image_size,
                          cache_dir=cache, on_bad=cfg.on_bad, report_path=report, resample=cfg.resample)
        for i in range(len(src)):
            ex = src[i]
            yield ex["id"], {"image": ex["image"], "mask": ex["mask"], "id": ex["id"]}


_FOLDS = {f"{s}{k}": (s, k) for k in (1, 2, 3) for s in ("train", "val")}
_SEEDED = {"train": ("train", None), "val": ("val", None), "test": ("test", None)}


class KvasirSeg(_Seg2DBuilder, skip_registration=True):
    """Kvasir-SEG: PraNet test (100) and a seeded 90/10 train/val carve of PraNet train (810/90)."""

    name = "lgmsnet_kvasir"
    DATASET, SPLITS = "kvasir", dict(_SEEDED)


class Busi(_Seg2DBuilder, skip_registration=True):
    """BUSI benign+malignant: the reference's train1..3 / val1..3 (452 / 195)."""

    name = "lgmsnet_busi"
    DATASET, SPLITS = "busi", dict(_FOLDS)


class Isic18(_Seg2DBuilder, skip_registration=True):
    """ISIC 2018 Task 1: the reference's train1..3 / val1..3 (1,815 / 779)."""

    name = "lgmsnet_isic18"
    DATASET, SPLITS = "isic18", dict(_FOLDS)


class Tnscui(_Seg2DBuilder, skip_registration=True):
    """TN-SCUI 2020: the reference's train1..3 / val1..3 (2,550 / 1,094)."""

    name = "lgmsnet_tnscui"
    DATASET, SPLITS = "tnscui", dict(_FOLDS)


class ImageMaskFolder(_Seg2DBuilder, skip_registration=True):
    """A user folder images/ + masks/: seeded 80/10/10 train/val/test."""

    name = "lgmsnet_folder"
    DATASET, SPLITS = "folder", dict(_SEEDED)


def _zero_shot(name: str, doc: str):
    # Explicit names and no registration: TFDS's global registry would clash with its own catalogue names.
    return type(f"ZeroShot_{name}", (_Seg2DBuilder,), {"name": f"lgmsnet_{name}", "DATASET": name,
                                                        "SPLITS": {"test": ("test", None)}, "__doc__": doc,
                                                        "__module__": __name__}, skip_registration=True)


Cvc300 = _zero_shot("cvc300", "CVC-300 (PraNet TestDataset): test = all images.")
CvcClinicDb = _zero_shot("cvc_clinicdb", "CVC-ClinicDB: test = all images.")
Ph2 = _zero_shot("ph2", "PH2: test = all images.")
Bus = _zero_shot("bus", "BUS (Dataset B): test = all images.")
Tucc = _zero_shot("tucc", "TUCC frames: test = all images.")

BUILDERS = {"kvasir": KvasirSeg, "busi": Busi, "isic18": Isic18, "tnscui": Tnscui, "folder": ImageMaskFolder,
            "cvc300": Cvc300, "cvc_clinicdb": CvcClinicDb, "ph2": Ph2, "bus": Bus, "tucc": Tucc}


class TfdsSource:
    """Adapts a TFDS ArrayRecord data source to the `load_source` record format (id as str)."""

    def __init__(self, tfds_source):
        self._src = tfds_source
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        ex = self._src[i]
        rid = ex["id"]
        return {"image": ex["image"], "mask": ex["mask"], "id": rid.decode() if isinstance(rid, bytes) else rid}

    @property
    def ids(self) -> list[str]:
        """Record ids in stored order (TFDS orders records by key hash, not by file name)."""
        if self._ids is None:
            self._ids = [self[i]["id"] for i in range(len(self))]
        return self._ids


def build(name: str, raw_dir, tfds_dir, *, image_size=(256, 256), seed: int = 0, on_bad: str = "error",
          cache_dir=None, resample: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds (once) and returns the TFDS builder of dataset `name` from its raw folder `raw_dir`.

    Args:
      name: a key of `BUILDERS`.
      raw_dir: the dataset folder in its native layout (TFDS manual_dir; only read).
      tfds_dir: TFDS data_dir for the ArrayRecord output.
      image_size, seed, on_bad, cache_dir, resample: as in `load_source`.

    Returns:
      The prepared builder (`.as_data_source(split)` for random access).
    """
    if name not in BUILDERS:
        raise ValueError(f"no TFDS builder for {name!r}; known: {sorted(BUILDERS)}")
    cfg = Seg2DConfig.make(image_size, seed, on_bad, cache_dir, resample)
    b = BUILDERS[name](data_dir=str(tfds_dir), config=cfg, file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
    return b


def tfds_source(name: str, raw_dir, tfds_dir, split: str, fold: int | None = None, **kw) -> TfdsSource:
    """`load_source`-style source backed by the TFDS build of `name` (built on first use)."""
    b = build(name, raw_dir, tfds_dir, **kw)
    split_name = f"{split}{fold}" if name in ("busi", "isic18", "tnscui") else split
    if split_name not in b.info.splits:
        raise ValueError(f"{name}: TFDS build has splits {sorted(b.info.splits)}, not {split_name!r}")
    return TfdsSource(b.as_data_source(split_name))
