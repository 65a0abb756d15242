"""Does our Kvasir augmentation produce what the reference's albumentations pipeline produces? A distribution check.

The reference (`main_kvasir.py`, spec §5.3) augments with albumentations 1.1.0; ours (`data_pipelines.transforms.
augment_kvasir`) re-implements it with other interpolation (bilinear instead of Lanczos4) and its own random streams,
so single outputs cannot be compared, but the distributions of what the augmentation does to an image can. Both
augment the same cached 256x256 training images (after the reference's Resize) `--reps` times; per output we record
the mask's foreground fraction, its IoU with the un-augmented mask (how far the geometry moved it), the fraction of
black pixels (border fill), the mean-intensity ratio and the mean absolute pixel change.

albumentations and OpenCV are not dependencies of this project: run the `albu` step in a separate environment
(Python 3.11 works) with `pip install albumentations==1.1.0 "numpy<2" "opencv-python-headless<4.9"`.

    python scripts/augmentation_vs_albumentations.py export --data_dir ../shared/data/Kvasir-SEG --out /tmp/aug
    python scripts/augmentation_vs_albumentations.py ours --out /tmp/aug
    /path/to/albu-env/bin/python scripts/augmentation_vs_albumentations.py albu --out /tmp/aug
    python scripts/augmentation_vs_albumentations.py compare --out /tmp/aug
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

STATS = ("foreground fraction", "IoU with the un-augmented mask", "black-pixel fraction", "mean-intensity ratio",
         "mean |pixel change|")


def _stats(img0: np.ndarray, m0: np.ndarray, img: np.ndarray, m: np.ndarray) -> list[float]:
    a, b = m0 > 0, np.asarray(m) > 0
    img = np.asarray(img)
    return [b.mean(), (a & b).sum() / max((a | b).sum(), 1), (img.max(axis=-1) == 0).mean(),
            img.astype(np.float32).mean() / img0.mean(), np.abs(img.astype(np.float32) - img0).mean()]


def _albumentations():
    import albumentations as A  # noqa: PLC0415  (only in the separate environment)
    import cv2  # noqa: PLC0415

    # main_kvasir.py's train transforms after Resize(256, 256) (spec §5.3), without Normalize/ToTensorV2.
    t = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5),
                   A.ColorJitter(p=0.5, brightness=(0.6, 1.6), contrast=0.2, saturation=0.1, hue=0.01),
                   A.Affine(p=0.5, scale=(0.5, 1.5), translate_percent=0.125, rotate=90,
                            interpolation=cv2.INTER_LANCZOS4),
                   A.ElasticTransform(p=0.5, interpolation=cv2.INTER_LANCZOS4)])
    np.random.seed(0)  # albumentations 1.1.0 draws from `random` and numpy's global state
    __import__("random").seed(0)

    def aug(k, img, m):
        del k
        out = t(image=img, mask=m)
        return out["image"], out["mask"]
    return aug


def _repo_on_path() -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _ours():
    _repo_on_path()
    from data_pipelines.transforms import augment_kvasir  # noqa: PLC0415
    return lambda k, img, m: augment_kvasir(img, m, np.random.default_rng([7, k]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("export", "ours", "albu", "compare"))
    p.add_argument("--out", required=True, help="folder for the cached images and the statistics")
    p.add_argument("--data_dir", help="Kvasir-SEG folder (export)")
    p.add_argument("--reps", type=int, default=4, help="augmentations per image")
    a = p.parse_args()
    out = pathlib.Path(a.out)
    if a.step == "export":
        _repo_on_path()
        import data_pipelines as dp  # noqa: PLC0415
        src = dp.load_source("kvasir", a.data_dir, "train", seed=41)  # configs/kvasir.py's training split
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "train256.npz", image=np.stack([src[i]["image"] for i in range(len(src))]),
                 mask=np.stack([src[i]["mask"] for i in range(len(src))]))
        print(f"{len(src)} training images -> {out / 'train256.npz'}")
        return
    if a.step == "compare":
        res = {w: np.load(out / f"stats_{w}.npy") for w in ("albu", "ours")}
        print(f"{'statistic':32s} {'albumentations 1.1.0 mean (s.e.)':>34s} {'ours mean (s.e.)':>20s}   "
              "quantiles 5/25/50/75/95: albumentations | ours")
        for j, name in enumerate(STATS):
            cells = []
            for w in ("albu", "ours"):
                x = res[w][:, j]
                cells.append(f"{x.mean():.4f} ({x.std(ddof=1) / np.sqrt(len(x)):.4f})")
            q = [" ".join(f"{v:.3f}" for v in np.percentile(res[w][:, j], (5, 25, 50, 75, 95))) for w in ("albu", "ours")]
            print(f"{name:32s} {cells[0]:>34s} {cells[1]:>20s}   {q[0]} | {q[1]}")
        for w in ("albu", "ours"):
            print(f"{w}: n={len(res[w])}, geometry left the mask unchanged (IoU > 0.999) in "
                  f"{(res[w][:, 1] > 0.999).mean():.3f} of outputs")
        return
    d = np.load(out / "train256.npz")
    aug = _albumentations() if a.step == "albu" else _ours()
    rows, k = [], 0
    for _ in range(a.reps):
        for img0, m0 in zip(d["image"], d["mask"]):
            img, m = aug(k, img0, m0)
            rows.append(_stats(img0, m0, img, m))
            k += 1
    np.save(out / f"stats_{a.step}.npy", np.array(rows))
    print(f"{a.step}: {len(rows)} augmented images -> {out / f'stats_{a.step}.npy'}")


if __name__ == "__main__":
    main()
