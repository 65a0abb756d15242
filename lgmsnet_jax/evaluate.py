"""Evaluate a trained run (or a converted reference checkpoint) on any supported dataset or image/mask folder.

    python -m lgmsnet_jax.evaluate --workdir W [--checkpoint best|latest|STEP] [--dataset NAME --data_dir D]
        [--split val|test|train|all] [--out DIR] [--json]

Without --dataset the run's own dataset and split files are used (its validation metrics are reproduced exactly);
with another --dataset the model is evaluated zero-shot (e.g. Kvasir-SEG -> CVC-ClinicDB, or `--dataset folder`
for any images/ + masks/ folder). Metrics are the trainer's own per-image metrics (training/metrics.py, spec §7.1),
reported as mean and std over images, with a per-image CSV. 3D runs (task seg_3d) report per-class Dice and HD95.

Each mean comes with a 95 % confidence interval (percentile bootstrap over the images, fixed seed). It says how far
another test set of the same size, drawn from the same population, could move the number: on Kvasir's 100 test
images it is about +-3.5 IoU points, wider than the differences papers compare on.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lgmsnet_jax.inference import loading

log = logging.getLogger("lgmsnet_jax.evaluate")


def _batch_metrics(graphdef: nnx.GraphDef, task: Any, params: Any, model_state: Any, batch: dict) -> tuple:
    # Exactly eval_step's computation (training/step.py), returning the per-image values as well as the sums.
    from lgmsnet_jax.training import metrics as metrics_lib  # noqa: PLC0415

    model = nnx.merge(graphdef, params, model_state)
    logits = task.predict_fn(model, batch["image"]).astype(jnp.float32)
    per = task.metrics_fn(logits, batch)
    return per, metrics_lib.masked_sums(per, batch["valid"])


def evaluate_source(model: nnx.Module, task: Any, src: Any, *, batch_size: int, image_size: Sequence[int],
                    normalize: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per-image metrics of `model` over a 2D source, in the trainer's evaluation batches.

    Args:
      model: eval-mode model.
      task: the run's Task (metrics_fn, predict_fn).
      src: random-access source ({"image" uint8 (H, W, 3), "mask" uint8 (H, W), "id"}), e.g. dp.load_source.
      batch_size: images per jitted call (the last batch is padded and the padding ignored).
      image_size: network grid (h, w).
      normalize: the run's input normalisation.

    Returns:
      (means: the trainer's `finalize_means` of the summed metrics, with "count"; rows: one dict per image with
      "id" and every metric, in source order).
    """
    import data_pipelines as dp  # noqa: PLC0415
    from lgmsnet_jax.training import metrics as metrics_lib  # noqa: PLC0415

    graphdef, params, model_state = loading.split_model(model)
    fn = jax.jit(functools.partial(_batch_metrics, graphdef, task))
    ids = getattr(src, "ids", None)
    sums, rows = None, []
    for batch in dp.eval_dataset(src, batch_size=batch_size, image_size=tuple(image_size), normalize=normalize):
        per, s = fn(params, model_state, {k: jnp.asarray(batch[k]) for k in ("image", "mask", "valid")})
        sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
        per = jax.device_get(per)
        for j, (index, valid) in enumerate(zip(batch["index"], batch["valid"])):
            if valid > 0:
                i = int(index)
                row_id = ids[i] if ids is not None else src[i]["id"]
                rows.append({"id": row_id} | {k: float(v[j]) for k, v in per.items()})
    if sums is None:
        raise ValueError("evaluate_source: the source is empty")
    return metrics_lib.finalize_means(jax.device_get(sums)), rows


BOOTSTRAP_RESAMPLES = 4000


def bootstrap_ci95(values: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[float]:
    """95 % percentile-bootstrap interval of the mean of `values` (NaNs dropped; [nan, nan] if none are left)."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2**22 // v.size)  # bounded memory for large sets
    for i in range(0, resamples, chunk):
        idx = rng.integers(0, v.size, size=(min(chunk, resamples - i), v.size))
        means[i:i + len(idx)] = v[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def summarize_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{metric: {"mean", "std", "ci95"}} over per-image rows: population std (ddof 0) and the 95 % bootstrap
    interval of the mean over images (`bootstrap_ci95`); NaNs ignored."""
    out = {}
    for k in keys:
        v = np.asarray([r[k] for r in rows], np.float64)
        out[k] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "ci95": bootstrap_ci95(v)}
    return out


def write_csv(path: pathlib.Path, rows: Sequence[dict[str, Any]]) -> None:
    """One row per image (or case): id and every metric."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def default_split(config: Any, dataset: str) -> str:
    """The run's test split (else val) on its own dataset; every image of another (zero-shot) dataset."""
    import data_pipelines as dp  # noqa: PLC0415

    if dataset == config.get("dataset"):
        return "test" if config.splits.get("test") else "val"
    return "test" if dataset in dp.ZERO_SHOT_SETS else "all"


def load_2d_source(config: Any, dataset: str, data_dir: str | None, split: str, cache_dir: str | None,
                   fold: int | None) -> Any:
    """The source of `split`: through the trainer's own `load_sources` on the run's dataset (same split files,
    seeds and example limits), else `dp.load_source` on the new dataset."""
    import data_pipelines as dp  # noqa: PLC0415
    from lgmsnet_jax.training import builders  # noqa: PLC0415

    if dataset == config.get("dataset") and split in ("train", "val", "test") and fold in (None, config.get("fold")):
        with config.unlocked():
            if data_dir is not None:
                config.data_dir = data_dir
            if cache_dir is not None:
                config.cache_dir = cache_dir
        if config.splits.get(split) is None:
            raise ValueError(f"the run defines no {split!r} split (config.splits = {config.splits.to_dict()})")
        only = config.copy_and_resolve_references()
        with only.unlocked():
            only.splits = {r: (config.splits[r] if r == split else None) for r in ("train", "val", "test")}
        return builders.load_sources(only)[split]
    if dataset != "synthetic" and data_dir is None:
        raise ValueError(f"--data_dir is required to evaluate on dataset {dataset!r}")
    return dp.load_source(dataset, data_dir, split, fold=fold, image_size=tuple(config.image_size),
                          cache_dir=cache_dir or config.get("cache_dir"))


def evaluate_2d(loaded: loading.Loaded, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs the 2D evaluation for the CLI; returns the report and writes the per-image CSV."""
    from lgmsnet_jax.training import tasks  # noqa: PLC0415

    cfg = loaded.config
    dataset = args.dataset or cfg.get("dataset")
    if dataset is None:
        raise ValueError("--dataset is required for a converted reference checkpoint")
    split = args.split or default_split(cfg, dataset)
    src = load_2d_source(cfg, dataset, args.data_dir, split, args.cache_dir, args.fold)
    task = tasks.get_task(cfg.task)
    batch_size = args.batch_size or cfg.get("eval_batch_size") or cfg.get("batch_size") or 8
    means, rows = evaluate_source(loaded.model, task, src, batch_size=batch_size, image_size=cfg.image_size,
                                  normalize=cfg.normalize)
    keys = [k for k in rows[0] if k != "id"]
    # The mean is the trainer's own (float32 sums, as validation reports it); spread and interval from the rows.
    spread = summarize_rows(rows, keys)
    return {"dataset": dataset, "split": split, "count": means["count"],
            "metrics": {k: spread[k] | {"mean": means[k]} for k in keys},
            "report_metrics": list(task.report_metrics)}, rows


def evaluate_3d(loaded: loading.Loaded, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """3D runs: sliding-window prediction of whole cached volumes, per-class Dice and HD95 (seg3d.evaluate)."""
    from lgmsnet_jax.training import seg3d  # noqa: PLC0415

    cfg = loaded.config
    if "sw" not in cfg:
        raise ValueError("3D evaluation needs a 3D train.py workdir (config.sw, preprocess, split); a converted 3D "
                         "checkpoint can segment volumes with lgmsnet_jax.predict")
    with cfg.unlocked():
        for key, value in (("dataset", args.dataset), ("data_dir", args.data_dir), ("cache_dir", args.cache_dir)):
            if value is not None:
                cfg[key] = value
    split = args.split or "val"
    if split not in ("val", "train"):
        raise ValueError(f"3D runs are evaluated on their 'val' or 'train' cases, got --split {split!r}")
    # The run's own split, case limits (smoke runs) and generated-split location, as training prepares them.
    data = seg3d.prepare_data(cfg, None if loading.is_converted(args.workdir) else args.workdir,
                              max_train=cfg.get("max_train_examples") or None,
                              max_val=cfg.get("max_eval_examples") or None)
    names = data.val_names if split == "val" else data.train_names
    # The run's own validation settings (config.sw), as training validates.
    sw = cfg.sw
    roi = tuple(int(s) for s in sw.roi_size)
    graphdef, params, model_state = loading.split_model(loaded.model)
    predict = seg3d.make_volume_predictor(graphdef, roi_size=roi, overlap=float(sw.overlap), mode=sw.mode,
                                          sw_batch_size=int(sw.sw_batch_size))
    shapes = [seg3d.preprocess3d.load_cached(data.cache_dir, n)["meta"]["shape"] for n in names]
    summary, table = seg3d.evaluate(predict, params, model_state, data, num_classes=cfg.num_classes,
                                    canvas=seg3d.canvas_shape(shapes, roi), names=names)
    rows = []
    for name, res in table.items():
        row: dict[str, Any] = {"id": name}
        for metric, values in res.items():
            row |= {f"{metric}/{c}": v for c, v in zip(data.class_names, values)}
        rows.append(row)
    keys = [k for k in rows[0] if k != "id"]
    metrics = summarize_rows(rows, keys)
    for k in ("dice", "hd95", "dice_class_mean", "hd95_class_mean"):
        if k in summary:
            metrics[k] = {"mean": summary[k], "std": float("nan"), "ci95": [float("nan"), float("nan")]}
    return {"dataset": cfg.dataset, "split": split, "count": len(rows), "metrics": metrics,
            "report_metrics": ["dice", "hd95"]}, rows


def format_report(report: dict[str, Any]) -> str:
    """A few readable lines: what was evaluated, mean +- std of each metric, and the reported metrics' 95 % CIs."""
    keys = report["report_metrics"] + [k for k in report["metrics"] if k not in report["report_metrics"]]
    shown = [k for k in keys if k in report["metrics"] and "/" not in k]
    lines = [f"{report['model']} on {report['dataset']}/{report['split']}: {report['count']} images",
             "  ".join(f"{k.upper()} {report['metrics'][k]['mean']:.4f} +- {report['metrics'][k]['std']:.4f}"
                       for k in shown)]
    cis = [f"{k.upper()} [{lo:.4f}, {hi:.4f}]" for k in report["report_metrics"] if k in shown
           for lo, hi in [report["metrics"][k].get("ci95", (np.nan, np.nan))] if not np.isnan(lo)]
    if cis:
        lines.append("95% CI of the mean (bootstrap over images): " + "  ".join(cis))
    lines.append(f"per-image metrics: {report['csv']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lgmsnet_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="train.py workdir, or a converted reference checkpoint folder")
    p.add_argument("--checkpoint", default="best", help="best (default), latest or a step number")
    p.add_argument("--dataset", default=None, help="dataset name (default: the run's); see data_pipelines.DATASETS")
    p.add_argument("--data_dir", default=None, help="dataset folder (default: the run's config.data_dir)")
    p.add_argument("--split", default=None, help="train|val|test|all (default: the run's test, else val; "
                                                 "every image of another dataset)")
    p.add_argument("--fold", type=int, default=None, help="reference split 1..3 (BUSI, ISIC18, TNSCUI)")
    p.add_argument("--cache_dir", default=None, help="decoded-data cache (default: the run's)")
    p.add_argument("--batch_size", type=int, default=None, help="images per call (default: the run's eval batch)")
    p.add_argument("--image_size", type=int, nargs="+", default=None, help="converted checkpoints: network grid")
    p.add_argument("--normalize", default=None, help="converted checkpoints: imagenet | reference_bgr | unit")
    p.add_argument("--out", default=None, help="folder for the CSV and JSON (default: WORKDIR/eval)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluates per the parsed options; writes <out>/<tag>.csv and <tag>.json and returns the report."""
    size = None if args.image_size is None else tuple(args.image_size) * (2 if len(args.image_size) == 1 else 1)
    loaded = loading.load_for_inference(args.workdir, args.checkpoint, image_size=size, normalize=args.normalize)
    if loaded.config.get("task") == "seg_3d":
        report, rows = evaluate_3d(loaded, args)
    else:
        report, rows = evaluate_2d(loaded, args)
    ckpt = "converted" if loaded.step is None else f"step{loaded.step}"
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "eval"
    tag = f"{report['dataset']}-{report['split']}-{ckpt}"
    report = {"model": loaded.source, "checkpoint_step": loaded.step, **report,
              "csv": str(out / f"{tag}.csv"), "json": str(out / f"{tag}.json")}
    write_csv(out / f"{tag}.csv", rows)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    args = parse_args(argv)
    # Our progress at INFO; libraries (Orbax logs every restore) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        report = run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
