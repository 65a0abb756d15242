"""Segment new images with a trained run (or a converted reference checkpoint).

    python -m lgmsnet_jax.predict --workdir W --input FILE_OR_DIR --output DIR [--checkpoint best|latest|STEP]
        [--fit resize|pad] [--probabilities png|npy] [--no_overlay] [--threshold 0.5] [--overwrite]

2D: any PIL-readable image of any size -> <stem>_mask.png (0/255, the image's original size), <stem>_overlay.png
(the prediction's contour over the image) and, on request, <stem>_prob.png|npy. The image is resized to the run's
grid with its normalisation (or, with --fit pad, padded to the network's size multiple at native resolution), and
the probabilities are mapped back bilinearly before thresholding.
3D (a 3D run): .nii/.nii.gz in -> <stem>_labels.nii.gz with the input's affine, via sliding windows.
Existing outputs are never overwritten unless --overwrite is given (checked for every input before any work).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from lgmsnet_jax.inference import loading, predict2d, predict3d

log = logging.getLogger("lgmsnet_jax.predict")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_inputs(path: pathlib.Path, ndim: int) -> list[pathlib.Path]:
    """The files to segment: `path` itself, or the images (2D) / NIfTI volumes (3D) directly inside it, sorted."""
    want = predict3d.is_nifti if ndim == 3 else (lambda p: p.suffix.lower() in IMAGE_EXTS)
    kind = "NIfTI volumes (.nii, .nii.gz)" if ndim == 3 else f"images ({', '.join(IMAGE_EXTS)})"
    if path.is_file():
        if not want(path):
            raise ValueError(f"{path}: a {ndim}D model segments {kind}")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--input {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and want(p))
    if not files:
        raise FileNotFoundError(f"--input {path} holds no {kind}")
    return files


def output_paths(inputs: Sequence[pathlib.Path], out: pathlib.Path, ndim: int, *, probabilities: str | None,
                 overlay: bool) -> list[dict[str, pathlib.Path]]:
    """Output files per input ({"mask", "overlay", "prob"} in 2D, {"labels"} in 3D); duplicate stems are an error."""
    rows, seen = [], {}
    for p in inputs:
        stem = predict3d.nifti_stem(p) if ndim == 3 else p.stem
        if stem in seen:
            raise ValueError(f"{p} and {seen[stem]} would write the same outputs ({stem}_*); rename one")
        seen[stem] = p
        if ndim == 3:
            rows.append({"labels": out / f"{stem}_labels.nii.gz"})
            continue
        row = {"mask": out / f"{stem}_mask.png"}
        if overlay:
            row["overlay"] = out / f"{stem}_overlay.png"
        if probabilities:
            row["prob"] = out / f"{stem}_prob.{probabilities}"
        rows.append(row)
    return rows


def _write_2d(image: np.ndarray, prob: np.ndarray, paths: dict[str, pathlib.Path], threshold: float) -> None:
    mask = predict2d.to_mask(prob, threshold)
    Image.fromarray(mask).save(paths["mask"])
    if "overlay" in paths:
        Image.fromarray(predict2d.overlay(image, mask)).save(paths["overlay"])
    if "prob" in paths:
        p = prob[..., 0] if prob.shape[-1] == 1 else prob
        if paths["prob"].suffix == ".npy":
            np.save(paths["prob"], p.astype(np.float32))
        else:
            if p.ndim == 3:
                raise ValueError("--probabilities png needs a binary model; use npy for multi-class maps")
            Image.fromarray(np.round(p * 255.0).astype(np.uint8)).save(paths["prob"])


def run(args: argparse.Namespace) -> list[dict[str, str]]:
    """Predicts every input; returns [{"input", "output kind": path, ...}] in input order."""
    size = None if args.image_size is None else tuple(args.image_size) * (2 if len(args.image_size) == 1 else 1)
    loaded = loading.load_for_inference(args.workdir, args.checkpoint, image_size=size, normalize=args.normalize)
    cfg, model = loaded.config, loaded.model
    ndim = int(cfg.get("ndim", 2))
    inputs = list_inputs(pathlib.Path(args.input), ndim)
    out = pathlib.Path(args.output)
    plan = output_paths(inputs, out, ndim, probabilities=args.probabilities, overlay=not args.no_overlay)
    existing = [str(p) for row in plan for p in row.values() if p.exists()]
    if existing and not args.overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise FileExistsError(f"{len(existing)} output file(s) exist: {shown}; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    log.info("%s: %d input(s) -> %s", loaded.source, len(inputs), out)
    report = []
    if ndim == 3:
        for src, paths in zip(inputs, plan):
            labels, img = predict3d.predict_nifti(model, cfg, src, overlap=args.overlap)
            predict3d.save_labels(labels, img, paths["labels"])
            report.append({"input": str(src)} | {k: str(v) for k, v in paths.items()})
        return report
    import data_pipelines as dp  # noqa: PLC0415

    predictor = predict2d.make_predictor(model)
    resample = (cfg.get("source_kwargs", {}) or {}).get("resample") or dp.sources.DEFAULT_RESAMPLE.get(
        cfg.get("dataset"), "bilinear")
    for start in range(0, len(inputs), args.batch_size):
        chunk = inputs[start:start + args.batch_size]
        images = [dp.decode_image(p) for p in chunk]
        probs = predict2d.predict_images(predictor, images, fit=args.fit, grid=cfg.image_size,
                                         size_multiple=getattr(model, "size_multiple", 1), normalize=cfg.normalize,
                                         resample=resample, batch_size=args.batch_size)
        for src, image, prob, paths in zip(chunk, images, probs, plan[start:start + args.batch_size]):
            _write_2d(image, prob, paths, args.threshold)
            report.append({"input": str(src)} | {k: str(v) for k, v in paths.items()})
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lgmsnet_jax.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="train.py workdir, or a converted reference checkpoint folder")
    p.add_argument("--checkpoint", default="best", help="best (default), latest or a step number")
    p.add_argument("--input", required=True, help="an image / NIfTI file, or a folder of them")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--fit", default="resize", choices=predict2d.FIT_MODES,
                   help="2D: resize to the run's grid (default) or pad to the network's size multiple")
    p.add_argument("--probabilities", default=None, choices=("png", "npy"),
                   help="2D: also write probability maps (png: 0-255; npy: float32)")
    p.add_argument("--no_overlay", action="store_true", help="2D: skip the contour overlay pictures")
    p.add_argument("--threshold", type=float, default=0.5, help="2D binary: mask = probability > threshold")
    p.add_argument("--batch_size", type=int, default=8, help="2D images per device call")
    p.add_argument("--overlap", type=float, default=None, help="3D: sliding-window overlap (default: the run's)")
    p.add_argument("--image_size", type=int, nargs="+", default=None, help="converted checkpoints: network grid")
    p.add_argument("--normalize", default=None, help="converted checkpoints: imagenet | reference_bgr | unit")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    if not 0.0 < args.threshold < 1.0:
        p.error("--threshold must be in (0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        report = run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in report:
        print(" ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
