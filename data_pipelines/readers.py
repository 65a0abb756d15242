"""Readers for each dataset's native folder layout: they list (id, image file, mask files) and never decode.

Structural problems (empty folder, image without mask, mask without image, duplicate ids) come back as
`Issue`s; decoding problems are found later by the cache builder. See README "Datasets" for the layouts.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable

from data_pipelines.verify import Issue

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Mask names that belong to image stem s besides s itself: BUSI's s_mask / s_mask_1, ISIC's s_segmentation,
# PH2's s_lesion, and Kvasir-style s_mask.
_MASK_SUFFIX = re.compile(r"^(?P<stem>.+?)(?:_mask(?:_\d+)?|_segmentation|_lesion|_Segmentation)$")


@dataclasses.dataclass(frozen=True)
class Item:
    """One example on disk.

    Attributes:
      id: stable id (file stem); split files list these.
      image: the image file.
      masks: one or more mask files; the target is their union.
      frame: for HDF5-backed items, the row in the file's `image`/`mask` datasets.
    """

    id: str
    image: pathlib.Path
    masks: tuple[pathlib.Path, ...]
    frame: int | None = None  # row of an HDF5 file (TUCC's dataset.hdf5): image and mask are that file


@dataclasses.dataclass
class Listing:
    """The items of a dataset folder and the structural problems found while listing it."""

    items: list[Item]
    issues: list[Issue]
    root: pathlib.Path


def _is_image(p: pathlib.Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def mask_owner(stem: str) -> str:
    """The image stem a mask file stem belongs to (`a_mask_1` -> `a`, `a` -> `a`)."""
    m = _MASK_SUFFIX.match(stem)
    return m.group("stem") if m else stem


def pair_folders(image_dir: pathlib.Path, mask_dir: pathlib.Path, *,
                 image_filter: Callable[[pathlib.Path], bool] | None = None) -> Listing:
    """Pairs images and masks by stem (any of png/jpg/bmp/tif, case-insensitive).

    A mask matches image stem `s` if its stem is `s`, `s_mask`, `s_mask_<n>`, `s_segmentation` or `s_lesion`;
    all matches are merged by union. A CMUNeXt-style `masks/0/` subfolder is used when `mask_dir` holds only it.

    Args:
      image_dir: folder of images.
      mask_dir: folder of masks (may equal `image_dir`, as in BUSI where masks sit next to images).
      image_filter: optional predicate selecting image files (default: all image files).

    Returns:
      A `Listing`; problems are reported, not raised.
    """
    issues: list[Issue] = []
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            return Listing([], [Issue("empty_folder", "", str(d), "folder does not exist")], image_dir)
    if (mask_dir / "0").is_dir() and not _files(mask_dir):
        mask_dir = mask_dir / "0"
    same = image_dir.resolve() == mask_dir.resolve()
    all_files = _files(image_dir)
    if same:
        images = [p for p in all_files if mask_owner(p.stem) == p.stem]
        masks = [p for p in all_files if mask_owner(p.stem) != p.stem]
    else:
        images, masks = all_files, _files(mask_dir)
    if image_filter is not None:
        images = [p for p in images if image_filter(p)]
    if not images:
        issues.append(Issue("empty_folder", "", str(image_dir), "no image files (png/jpg/bmp/tif)"))
        return Listing([], issues, image_dir)
    by_stem: dict[str, pathlib.Path] = {}
    for p in images:
        if p.stem in by_stem:
            issues.append(Issue("duplicate_id", p.stem, str(p), f"same stem as {by_stem[p.stem].name}"))
            continue
        by_stem[p.stem] = p
    owned: dict[str, list[pathlib.Path]] = {s: [] for s in by_stem}
    for m in masks:
        owner = m.stem if (not same and m.stem in owned) else mask_owner(m.stem)
        if owner in owned:
            owned[owner].append(m)
        else:
            issues.append(Issue("extra_mask", owner, str(m), "mask file has no matching image"))
    items = []
    for stem, img in by_stem.items():
        if not owned[stem]:
            issues.append(Issue("missing_mask", stem, str(img), f"no mask for this image in {mask_dir}"))
            continue
        items.append(Item(stem, img, tuple(sorted(owned[stem]))))
    return Listing(items, issues, image_dir)


def merge_listings(listings: list[Listing], root: pathlib.Path) -> Listing:
    """Concatenates listings (e.g. BUSI's class folders), reporting ids that occur in two of them."""
    seen: dict[str, Item] = {}
    issues: list[Issue] = []
    for lst in listings:
        issues += lst.issues
        for it in lst.items:
            if it.id in seen:
                issues.append(Issue("duplicate_id", it.id, str(it.image), f"same id as {seen[it.id].image}"))
            else:
                seen[it.id] = it
    return Listing(list(seen.values()), issues, root)


def _first_dir(root: pathlib.Path, candidates: tuple[str, ...]) -> pathlib.Path | None:
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return None


def _images_masks(root: pathlib.Path, image_names=("images",), mask_names=("masks",)) -> Listing | None:
    """The generic images/ + masks/ (or CMUNeXt masks/0/) layout, if present under root."""
    i, m = _first_dir(root, image_names), _first_dir(root, mask_names)
    return pair_folders(i, m) if i is not None and m is not None else None


def _descend(root: pathlib.Path, names: tuple[str, ...]) -> pathlib.Path:
    """Accepts both the dataset folder and its parent (e.g. data_dir or data_dir/Kvasir-SEG)."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root


def _missing_layout(root: pathlib.Path, expected: str) -> Listing:
    return Listing([], [Issue("empty_folder", "", str(root), f"expected layout not found: {expected}")], root)


def list_folder(root: pathlib.Path) -> Listing:
    """Generic layout: root/images/* + root/masks/* (or root/masks/0/*), paired by stem."""
    return _images_masks(root) or _missing_layout(root, "images/ and masks/")


def list_kvasir(root: pathlib.Path) -> Listing:
    """Kvasir-SEG release: Kvasir-SEG/{images,masks}/<stem>.jpg."""
    root = _descend(root, ("Kvasir-SEG", "kvasir-seg"))
    return _images_masks(root) or _missing_layout(root, "Kvasir-SEG/images/*.jpg + masks/*.jpg")


def list_busi(root: pathlib.Path, *, classes: tuple[str, ...] = ("benign", "malignant")) -> Listing:
    """BUSI (Dataset_BUSI_with_GT): <class>/<class> (N).png + <class> (N)_mask[_k].png; or CMUNeXt images/+masks/0/.

    The reference splits cover benign and malignant only; pass classes=(..., "normal") to include normal.
    """
    root = _descend(root, ("Dataset_BUSI_with_GT", "BUSI"))
    cmunext = _images_masks(root)
    if cmunext is not None:
        return cmunext
    found = [root / c for c in classes if (root / c).is_dir()]
    if not found:
        return _missing_layout(root, f"{'/, '.join(classes)}/ class folders with '<class> (N).png'")
    return merge_listings([pair_folders(d, d) for d in found], root)


def list_isic18(root: pathlib.Path) -> Listing:
    """ISIC 2018 Task 1: *Input/ISIC_<n>.jpg + *GroundTruth/ISIC_<n>_segmentation.png; or images/+masks/0/."""
    cmunext = _images_masks(root)
    if cmunext is not None:
        return cmunext
    in_dirs = sorted(d for d in root.iterdir() if d.is_dir() and "input" in d.name.lower()) if root.is_dir() else []
    gt_dirs = sorted(d for d in root.iterdir() if d.is_dir() and "groundtruth" in d.name.lower()) if root.is_dir() else []
    if not in_dirs or not gt_dirs:
        return _missing_layout(root, "ISIC2018_Task1-2_*_Input/ and ISIC2018_Task1_*_GroundTruth/ folders")
    # Task 1-2 input folders also hold ISIC_<n>_superpixels.png, which are not images of the task.
    jpg_only = lambda p: p.suffix.lower() in (".jpg", ".jpeg")  # noqa: E731
    return merge_listings([pair_folders(i, g, image_filter=jpg_only) for i, g in zip(in_dirs, gt_dirs)], root)


def list_tnscui(root: pathlib.Path) -> Listing:
    """TN-SCUI 2020 training set: image/<n>.PNG + mask/<n>.PNG; or images/+masks/0/."""
    root = _descend(root, ("tnscui2020_train", "TN-SCUI2020", "tnscui"))
    return (_images_masks(root, ("image", "images"), ("mask", "masks"))
            or _missing_layout(root, "image/*.PNG + mask/*.PNG"))


def list_polyp_test(root: pathlib.Path, names: tuple[str, ...]) -> Listing:
    """PraNet TestDataset/<name>/{images,masks}/*.png; CVC-ClinicDB also as Original/ + 'Ground Truth'/ (tif)."""
    root = _descend(root, names)
    return (_images_masks(root, ("images", "Original", "PNG/Original", "TIF/Original"),
                          ("masks", "Ground Truth", "GroundTruth", "PNG/Ground Truth", "TIF/Ground Truth"))
            or _missing_layout(root, "images/ + masks/ (PraNet) or Original/ + Ground Truth/"))


def list_ph2(root: pathlib.Path) -> Listing:
    """PH2: 'PH2 Dataset images'/IMD<n>/IMD<n>_Dermoscopic_Image/IMD<n>.bmp + IMD<n>_lesion/IMD<n>_lesion.bmp."""
    root = _descend(root, ("PH2Dataset", "PH2 Dataset images"))
    root = _descend(root, ("PH2 Dataset images",))
    cases = sorted(d for d in root.iterdir() if d.is_dir() and d.name.upper().startswith("IMD")) if root.is_dir() else []
    if not cases:
        return _images_masks(root) or _missing_layout(root, "PH2 Dataset images/IMD<n>/ case folders")
    items, issues = [], []
    for c in cases:
        imgs = sorted((c / f"{c.name}_Dermoscopic_Image").glob("*.bmp"))
        lesions = sorted((c / f"{c.name}_lesion").glob("*.bmp"))
        if not imgs:
            issues.append(Issue("empty_folder", c.name, str(c),
                                "no <case>_Dermoscopic_Image/*.bmp"))
        elif not lesions:
            issues.append(Issue("missing_mask", c.name, str(imgs[0]), "no <case>_lesion/*.bmp"))
        else:
            items.append(Item(c.name, imgs[0], tuple(lesions)))
    return Listing(items, issues, root)


def list_bus(root: pathlib.Path) -> Listing:
    """BUS (Yap et al. 2018, Dataset B): original/*.png + GT/*.png; or images/ + masks/."""
    root = _descend(root, ("BUS", "DatasetB", "Dataset B"))
    return (_images_masks(root, ("original", "images"), ("GT", "masks"))
            or _missing_layout(root, "original/*.png + GT/*.png"))


def list_tucc(root: pathlib.Path) -> Listing:
    """TUCC (Stanford AIMI thyroid ultrasound cine-clip): dataset.hdf5 with `image`, `mask` (N, H, W) and
    `annot_id`, `frame_num`; or frames exported as images/ + masks/."""
    root = _descend(root, ("TUCC", "tucc"))
    h5 = next((root / n for n in ("dataset.hdf5", "dataset.h5") if (root / n).is_file()), None)
    if h5 is None:
        return (_images_masks(root, ("images", "image"), ("masks", "mask"))
                or _missing_layout(root, "dataset.hdf5, or images/ + masks/"))
    import h5py  # only this layout needs it

    try:
        with h5py.File(h5, "r") as f:
            n, n_mask = f["image"].shape[0], f["mask"].shape[0]
            annot = [a.decode() if isinstance(a, bytes) else str(a) for a in f["annot_id"][:]] if "annot_id" in f else None
            frames = f["frame_num"][:].tolist() if "frame_num" in f else None
    except (OSError, KeyError) as e:
        return Listing([], [Issue("unreadable", "", str(h5), f"{type(e).__name__}: {e}")], root)
    if n_mask != n:
        return Listing([], [Issue("size_mismatch", "", str(h5), f"{n} images but {n_mask} masks")], root)
    ids = [f"{re.sub(r'[^A-Za-z0-9_.-]', '_', annot[i].strip())}_f{int(frames[i]):04d}" if annot and frames
           else f"frame{i:06d}" for i in range(n)]
    return Listing([Item(i, h5, (h5,), frame=k) for k, i in enumerate(ids)], [], root)


READERS: dict[str, Callable[[pathlib.Path], Listing]] = {
    "folder": list_folder,
    "kvasir": list_kvasir,
    "busi": list_busi,
    "isic18": list_isic18,
    "tnscui": list_tnscui,
    "cvc300": lambda r: list_polyp_test(r, ("CVC-300", "CVC300")),
    "cvc_clinicdb": lambda r: list_polyp_test(r, ("CVC-ClinicDB", "CVC_ClinicDB", "CVC-612")),
    "ph2": list_ph2,
    "bus": list_bus,
    "tucc": list_tucc,
}


def list_dataset(name: str, root: pathlib.Path | str) -> Listing:
    """Lists dataset `name` (a key of `READERS`) under `root`."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)} and 'synthetic'")
    return READERS[name](pathlib.Path(root))
