"""The diagnostic scripts under scripts/ (run as files, not imported by the package)."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_augmentation_statistics_of_an_unchanged_and_a_shifted_output():
    aug = _load("augmentation_vs_albumentations")
    img = np.full((8, 8, 3), 100, np.uint8)
    img[:, :2] = 0
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 1
    assert aug._stats(img, mask, img, mask) == [0.25, 1.0, 0.25, 1.0, 0.0]
    shifted = np.roll(mask, 2, axis=1)  # 8 of 16 pixels still overlap: IoU 8 / 24
    fg, iou, *_ = aug._stats(img, mask, img, shifted)
    assert fg == 0.25 and abs(iou - 1 / 3) < 1e-12


def test_augmentation_script_runs_our_side_and_compares(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    mask = (rng.random((3, 32, 32)) > 0.7).astype(np.uint8)
    np.savez(tmp_path / "train256.npz", image=image, mask=mask)
    script = ROOT / "scripts" / "augmentation_vs_albumentations.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), *a, "--out", str(tmp_path), "--reps", "2"],
                                    capture_output=True, text=True, cwd=ROOT, timeout=120)
    ours = run("ours")
    assert ours.returncode == 0, ours.stderr[-2000:]
    stats = np.load(tmp_path / "stats_ours.npy")
    assert stats.shape == (6, 5) and np.isfinite(stats).all()
    np.save(tmp_path / "stats_albu.npy", stats)  # stands in for the albumentations environment's output
    cmp = run("compare")
    assert cmp.returncode == 0 and "IoU with the un-augmented mask" in cmp.stdout and "n=6" in cmp.stdout
