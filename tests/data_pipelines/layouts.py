"""Small synthetic dataset folders laid out like each dataset's public download (for reader tests)."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def disc_mask(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """bool (h, w) disc."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def write_pair(img_path: pathlib.Path, mask_paths: list[pathlib.Path], *, seed: int, size=(40, 48),
               image_mode: str = "RGB", mask_mode: str = "L") -> np.ndarray:
    """Writes a random image and one disc mask per mask path; returns the union mask bool (H, W)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img)
    im = im.convert(image_mode) if image_mode != "RGB" else im
    im.save(img_path)
    union = np.zeros((h, w), bool)
    for k, mp in enumerate(mask_paths):
        m = disc_mask(h, w, h * (0.3 + 0.2 * k), w * (0.3 + 0.2 * k), min(h, w) * 0.2)
        union |= m
        mp.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(m.astype(np.uint8) * 255).convert(mask_mode).save(mp)
    return union


def make_layout(name: str, root: pathlib.Path, n: int = 5) -> dict[str, np.ndarray]:
    """Creates dataset `name` with n images under root in its native layout; returns {id: union mask}."""
    masks = {}
    for i in range(n):
        if name == "folder":
            ext = [".png", ".jpg", ".bmp", ".tif", ".png"][i % 5]
            sid = f"case {i}"  # spaces in names, as in BUSI
            masks[sid] = write_pair(root / "images" / f"{sid}{ext}", [root / "masks" / f"{sid}.png"], seed=i)
        elif name == "kvasir":
            sid = f"cju{i:04d}"
            masks[sid] = write_pair(root / "Kvasir-SEG" / "images" / f"{sid}.jpg",
                                    [root / "Kvasir-SEG" / "masks" / f"{sid}.png"], seed=i)
        elif name == "busi":
            cls = "benign" if i % 2 == 0 else "malignant"
            sid = f"{cls} ({i + 1})"
            extra = [root / cls / f"{sid}_mask_1.png"] if i == 0 else []
            masks[sid] = write_pair(root / cls / f"{sid}.png", [root / cls / f"{sid}_mask.png", *extra], seed=i,
                                    image_mode="L" if i % 3 else "RGB")
        elif name == "isic18":
            sid = f"ISIC_{i:07d}"
            masks[sid] = write_pair(root / "ISIC2018_Task1-2_Training_Input" / f"{sid}.jpg",
                                    [root / "ISIC2018_Task1_Training_GroundTruth" / f"{sid}_segmentation.png"], seed=i)
            # Task 1-2 input folders ship superpixel PNGs that are not images of the task.
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
                root / "ISIC2018_Task1-2_Training_Input" / f"{sid}_superpixels.png")
        elif name == "tnscui":
            sid = str(i + 1)
            masks[sid] = write_pair(root / "tnscui2020_train" / "image" / f"{sid}.PNG",
                                    [root / "tnscui2020_train" / "mask" / f"{sid}.PNG"], seed=i, image_mode="L")
        elif name == "cvc300":
            sid = str(i + 1)
            masks[sid] = write_pair(root / "CVC-300" / "images" / f"{sid}.png",
                                    [root / "CVC-300" / "masks" / f"{sid}.png"], seed=i)
        elif name == "cvc_clinicdb":
            sid = str(i + 1)
            masks[sid] = write_pair(root / "CVC-ClinicDB" / "Original" / f"{sid}.tif",
                                    [root / "CVC-ClinicDB" / "Ground Truth" / f"{sid}.tif"], seed=i)
        elif name == "ph2":
            sid = f"IMD{i + 2:03d}"
            case = root / "PH2Dataset" / "PH2 Dataset images" / sid
            masks[sid] = write_pair(case / f"{sid}_Dermoscopic_Image" / f"{sid}.bmp",
                                    [case / f"{sid}_lesion" / f"{sid}_lesion.bmp"], seed=i)
        elif name == "bus":
            sid = f"{i + 1:06d}"
            masks[sid] = write_pair(root / "BUS" / "original" / f"{sid}.png", [root / "BUS" / "GT" / f"{sid}.png"],
                                    seed=i, image_mode="L")
        elif name == "tucc":
            sid = f"clip{i}_frame{i * 3}"
            masks[sid] = write_pair(root / "TUCC" / "images" / f"{sid}.png", [root / "TUCC" / "masks" / f"{sid}.png"],
                                    seed=i, image_mode="L")
        elif name == "tucc_h5":  # the Stanford AIMI release: one dataset.hdf5
            import h5py

            rng = np.random.default_rng(0)
            h, w = 40, 48
            imgs = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
            mks = np.stack([disc_mask(h, w, 10 + 3 * k, 12 + 4 * k, 6) for k in range(n)]).astype(np.uint8)
            (root / "TUCC").mkdir(parents=True, exist_ok=True)
            with h5py.File(root / "TUCC" / "dataset.hdf5", "w") as f:
                f["image"], f["mask"] = imgs, mks
                f["annot_id"] = np.array([f"{k // 2}_".encode() for k in range(n)])
                f["frame_num"] = np.arange(n) % 2
            return {f"{k // 2}__f{k % 2:04d}": mks[k].astype(bool) for k in range(n)}
        elif name == "cmunext":  # CMUNeXt/LGMSNet layout, accepted by busi/isic18/tnscui/folder
            sid = f"img{i}"
            masks[sid] = write_pair(root / "images" / f"{sid}.png", [root / "masks" / "0" / f"{sid}.png"], seed=i)
        else:
            raise ValueError(name)
    return masks


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root (to prove a folder was not modified)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
