"""The 3D segmentation task: cached volumes -> random patches for training, sliding-window validation
with per-class Dice (background excluded) and HD95 in mm (reference_lgmsnet.md §6, §7.2).

Registered as task "seg_3d"; the datasets are BTCV, KiTS23 and ACDC (data_pipelines.volumes). `Seg3DRun` is
its training-loop hooks (loop.train_and_evaluate): patch batches, whole-volume validation and the 3D report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from data_pipelines import patches, preprocess3d, volumes
from data_pipelines.pipeline import CheckedIterDataset
from lgmsnet_jax import xla_options
from lgmsnet_jax.inference import sliding_window_inference
from lgmsnet_jax.training import checkpoint, loop, losses, metrics3d, tasks

CLASS_NAMES = {
    "acdc": ("RV", "Myo", "LV"),
    # BTCV label ids 1..13 (Synapse multi-organ challenge order).
    "btcv": ("spleen", "kidney_r", "kidney_l", "gallbladder", "esophagus", "liver", "stomach", "aorta", "ivc",
             "portal_splenic_veins", "pancreas", "adrenal_r", "adrenal_l"),
    "kits23": ("kidney", "tumor", "cyst"),
}


# ----------------------------------------------------------------------------------------------
# Task: loss and patch-level metrics (pure, jit-safe)
# ----------------------------------------------------------------------------------------------

def _loss(logits: jax.Array, batch: dict) -> jax.Array:
    return losses.dice_ce_loss(logits, batch["mask"], weights=batch.get("valid"))


def patch_metrics(logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Per-patch hard foreground Dice, pooled over classes 1..K-1 (training-time logging only).

    Args:
      logits: (N, D, H, W, K) f32.
      batch: {"mask": (N, D, H, W, 1) int}.

    Returns:
      {"dice": (N,) f32}: 2 sum_c |P_c & G_c| / sum_c (|P_c| + |G_c|), 1 when both are empty.
    """
    k = logits.shape[-1]
    n = logits.shape[0]
    pred = jax.nn.one_hot(jnp.argmax(logits, axis=-1), k, dtype=jnp.float32)[..., 1:].reshape(n, -1)
    gt = jax.nn.one_hot(batch["mask"][..., 0].astype(jnp.int32), k, dtype=jnp.float32)[..., 1:].reshape(n, -1)
    inter = jnp.sum(pred * gt, axis=1)
    total = jnp.sum(pred, axis=1) + jnp.sum(gt, axis=1)
    return {"dice": jnp.where(total > 0, 2.0 * inter / jnp.maximum(total, 1.0), 1.0)}


def seg_3d() -> tasks.Task:
    """Multi-class 3D segmentation: MONAI DiceCE loss on softmax logits (spec §6)."""
    return tasks.Task(name="seg_3d", loss_fn=_loss, metrics_fn=patch_metrics, select_metric="dice",
                      to_picture=lambda z: jnp.argmax(z, axis=-1)[..., None].astype(jnp.float32)
                      / jnp.float32(max(z.shape[-1] - 1, 1)),
                      report_metrics=("dice", "dice_class_mean", "hd95"), make_run=Seg3DRun)


tasks.register_task("seg_3d", seg_3d)


# ----------------------------------------------------------------------------------------------
# Data: cache, split, train stream
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Seg3DData:
    """Cached 3D dataset ready for training and validation.

    Attributes:
      cache_dir: folder of the preprocessed cases.
      train_names: training case names.
      val_names: validation case names.
      class_names: names of classes 1..K-1.
      split_path: the file the split was read from or written to.
    """

    cache_dir: pathlib.Path
    train_names: list[str]
    val_names: list[str]
    class_names: tuple[str, ...]
    split_path: pathlib.Path


def preprocess_config(cfg: Any) -> preprocess3d.PreprocessConfig:
    """PreprocessConfig from the `config.preprocess` ConfigDict (tuples restored from JSON lists)."""
    p = cfg.preprocess
    return preprocess3d.PreprocessConfig(
        spacing_mm=None if p.spacing_mm is None else tuple(float(s) for s in p.spacing_mm),
        intensity=p.intensity, window=tuple(p.window), scaled_range=tuple(p.scaled_range),
        orient_ras=bool(p.orient_ras), crop_foreground=bool(p.crop_foreground),
        foreground_threshold=float(p.foreground_threshold))


def patch_config(cfg: Any) -> patches.PatchConfig:
    """PatchConfig from `config.patch`."""
    p = dict(cfg.patch)
    p["patch_size"] = tuple(int(s) for s in p["patch_size"])
    p["rot90_axes"] = tuple(int(a) for a in p["rot90_axes"])
    return patches.PatchConfig(**p)


def cache_root(cfg: Any) -> pathlib.Path:
    """config.cache_dir, else $LGMSNET_CACHE/3d, else ~/.cache/lgmsnet_jax/3d (the 2D cache's convention)."""
    if cfg.get("cache_dir"):
        return pathlib.Path(cfg.cache_dir)
    base = os.environ.get("LGMSNET_CACHE") or pathlib.Path.home() / ".cache" / "lgmsnet_jax"
    return pathlib.Path(base) / "3d"


def _resolve_split(cfg: Any, refs: Sequence[volumes.CaseRef], workdir: pathlib.Path | None
                   ) -> tuple[dict[str, list[str]], pathlib.Path]:
    names = [r.name for r in refs]
    if cfg.dataset == "btcv" and not cfg.split_file:
        # The Decathlon json carries the split: "training" is listed by the caller, "validation" here.
        val = [r.name for r in volumes.list_btcv(cfg.data_dir, split="validation")]
        return {"train": [n for n in names if n not in val], "val": val}, pathlib.Path(cfg.data_dir) / "dataset_0.json"
    if cfg.split_file:
        path = pathlib.Path(cfg.split_file)
        return volumes.read_split(path, available=names), path
    # No file given: a seeded split by case (by patient for ACDC), written next to the run for the record.
    if cfg.dataset == "acdc":
        split = volumes.acdc_patient_split(names, int(cfg.split_num_val), int(cfg.split_seed))
    else:
        perm = np.random.default_rng(int(cfg.split_seed)).permutation(len(names))
        val = {sorted(names)[i] for i in perm[: int(cfg.split_num_val)]}
        split = {"train": sorted(set(names) - val), "val": sorted(val)}
    path = pathlib.Path(workdir or cache_root(cfg)) / f"split_{cfg.dataset}_seed{cfg.split_seed}.json"
    volumes.write_split(path, split, seed=int(cfg.split_seed), num_val=int(cfg.split_num_val))
    return split, path


def prepare_data(cfg: Any, workdir: str | pathlib.Path | None = None, *, max_train: int | None = None,
                 max_val: int | None = None) -> Seg3DData:
    """Lists, validates (up front, all cases) and caches the dataset; resolves the split.

    Args:
      cfg: the run config (dataset, data_dir, cache_dir, split_*, num_classes, preprocess).
      workdir: where a generated split is written (default: the cache root).
      max_train, max_val: keep only the first cases of each part (smoke runs).

    Returns:
      Seg3DData. Raises volumes.BadVolumesError naming every bad case.
    """
    if cfg.dataset not in CLASS_NAMES:
        raise ValueError(f"config.dataset={cfg.dataset!r}; 3D datasets are {sorted(CLASS_NAMES)}")
    if len(CLASS_NAMES[cfg.dataset]) + 1 != cfg.num_classes:
        raise ValueError(f"{cfg.dataset} has {len(CLASS_NAMES[cfg.dataset]) + 1} classes, "
                         f"config.num_classes={cfg.num_classes}")
    kwargs = {"split": "training"} if cfg.dataset == "btcv" else {}
    refs = volumes.list_cases(cfg.dataset, cfg.data_dir, **kwargs)
    if cfg.dataset == "btcv" and not cfg.split_file:
        refs += volumes.list_btcv(cfg.data_dir, split="validation")
    split, split_path = _resolve_split(cfg, refs, None if workdir is None else pathlib.Path(workdir))
    train, val = split["train"][:max_train], split["val"][:max_val]
    keep = set(train) | set(val)
    refs = [r for r in refs if r.name in keep]
    pcfg = preprocess_config(cfg)
    cache_dir = preprocess3d.cache_dir_for(cache_root(cfg), cfg.dataset, pcfg)
    t0 = time.time()
    preprocess3d.build_cache(refs, cache_dir, pcfg, cfg.num_classes, workers=int(cfg.preprocess.workers))
    logging.info("3D data %s: %d train / %d val cases cached in %s (%.1f s)", cfg.dataset, len(train), len(val),
                 cache_dir, time.time() - t0)
    return Seg3DData(cache_dir, train, val, CLASS_NAMES[cfg.dataset], split_path)


def train_dataset(data: Seg3DData, cfg: Any, *, volumes_per_batch: int, seed_offset: int = 0, shard_index: int = 0,
                  shard_count: int = 1) -> grain.MapDataset:
    """This process's endless patch stream (data_pipelines.patches.patch_dataset).

    Args:
      data: from prepare_data.
      cfg: the run config (seed, patch).
      volumes_per_batch: volumes per batch on this process; rows = volumes_per_batch * patch.num_samples.
      shard_index, shard_count: this process and the process count.
    """
    return patches.patch_dataset(data.cache_dir, data.train_names, patch_config(cfg), seed=int(cfg.seed) + seed_offset,
                                 volumes_per_batch=volumes_per_batch, shard_index=shard_index,
                                 shard_count=shard_count)


# ----------------------------------------------------------------------------------------------
# Validation: sliding window over whole volumes on one fixed canvas, metrics on the host
# ----------------------------------------------------------------------------------------------

def canvas_shape(shapes: Sequence[Sequence[int]], roi_size: Sequence[int]) -> tuple[int, ...]:
    """Smallest shape holding every volume and the window: one compile for all validation volumes."""
    return tuple(int(max(max(s[a] for s in shapes), roi_size[a])) for a in range(len(roi_size)))


def make_volume_predictor(graphdef: nnx.GraphDef, *, roi_size: Sequence[int], overlap: float, mode: str,
                          sw_batch_size: int) -> Callable[[Any, Any, jax.Array], jax.Array]:
    """Jitted (params, model_state, volume (1, *canvas, C)) -> class ids (1, *canvas) int32.

    The model runs in eval mode on windows of roi_size; logits are averaged (mode "constant" is the
    reference's MONAI call, §6) and arg-maxed on the device, so only int labels come back to the host.
    """
    roi = tuple(int(r) for r in roi_size)

    @functools.partial(jax.jit, compiler_options=xla_options.CONV_NHWC)  # cuDNN's 3D convs without transposes
    def predict(params, model_state, volume):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()

        def window_fn(x):
            return model(x, train=False).astype(jnp.float32)

        logits = sliding_window_inference(window_fn, volume, roi, overlap=overlap, mode=mode,
                                          sw_batch_size=sw_batch_size)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return predict


def evaluate(predict: Callable, params: Any, model_state: Any, data: Seg3DData, *, num_classes: int,
             canvas: Sequence[int], with_hd95: bool = True, names: Sequence[str] | None = None
             ) -> tuple[dict[str, float], dict[str, dict[str, list[float]]]]:
    """Sliding-window validation of whole cached volumes.

    Each volume is zero-padded at its far end to `canvas` (so the predictor compiles once), predicted,
    cropped back and scored against its label on the preprocessed grid (spacing from the cache).

    Args:
      predict: from make_volume_predictor.
      params, model_state: TrainState.params / .model_state.
      data: Seg3DData.
      num_classes: K including background.
      canvas: from canvas_shape over the validation volumes.
      with_hd95: compute HD95 too.
      names: cases to evaluate (default data.val_names).

    Returns:
      (summary from metrics3d.summarize plus "num_cases", per-case {"dice": [...], "hd95": [...]}).
    """
    names = list(data.val_names if names is None else names)
    per_case, table = [], {}
    for name in names:
        case = preprocess3d.load_cached(data.cache_dir, name, mmap=False)
        image, label = case["image"], case["label"]
        if any(s > c for s, c in zip(image.shape, canvas)):
            raise ValueError(f"{name}: shape {image.shape} exceeds the validation canvas {tuple(canvas)}")
        padded = np.zeros((1, *canvas, 1), np.float32)
        padded[(0, *(slice(0, s) for s in image.shape), 0)] = image
        pred = np.asarray(predict(params, model_state, jnp.asarray(padded)))[0]
        pred = pred[tuple(slice(0, s) for s in image.shape)]
        res = metrics3d.evaluate_case(pred, label, num_classes, case["meta"]["spacing_mm"], with_hd95=with_hd95)
        per_case.append(res)
        table[name] = {k: [float(x) for x in v] for k, v in res.items()}
    summary = metrics3d.summarize(per_case, data.class_names)
    summary["num_cases"] = len(names)
    return summary, table


def validation_canvas(data: Seg3DData, roi_size: Sequence[int]) -> tuple[int, ...]:
    """canvas_shape over the cached validation volumes (read from their meta.json)."""
    shapes = [preprocess3d.load_cached(data.cache_dir, n)["meta"]["shape"] for n in data.val_names]
    return canvas_shape(shapes, roi_size)



# ----------------------------------------------------------------------------------------------
# Training-loop hooks (loop.train_and_evaluate with config.task == "seg_3d")
# ----------------------------------------------------------------------------------------------

class Seg3DRun(tasks.TaskRun):
    """Patch batches from cached volumes, sliding-window validation with HD95 on the host, the 3D report
    (summary.json with class names and split file, val_per_case.json)."""

    rate_key = "train/patches_per_s"

    def __init__(self, ctx: tasks.RunContext):
        self.ctx = ctx
        config, nproc = ctx.config, ctx.nproc
        self.data = prepare_data(config, ctx.workdir, max_train=config.max_train_examples or None,
                                 max_val=config.max_eval_examples or None)
        global_batch = int(config.batch_size)
        samples = int(config.patch.num_samples)
        if global_batch % (samples * nproc):
            raise ValueError(f"config.batch_size={global_batch} patches must be a multiple of patch.num_samples="
                             f"{samples} times the {nproc} processes")
        loop.check_batch(global_batch, ctx.mesh, config.grad_accum_steps)
        self.volumes_per_step = global_batch // samples
        # An epoch is one pass over the training volumes (MONAI: 24 steps of 4 patches for BTCV's 24 volumes).
        self.steps_per_epoch = math.ceil(len(self.data.train_names) / self.volumes_per_step)
        self.has_val = bool(self.data.val_names)
        self.last_eval: tuple[int, dict, dict] | None = None  # (step, summary, per-case) of the latest HD95 eval
        logging.info("3D %s: %d train / %d val volumes, %d patches of %s per step, %d steps/epoch, %d steps",
                     config.dataset, len(self.data.train_names), len(self.data.val_names), global_batch,
                     tuple(config.patch.patch_size), self.steps_per_epoch, self.steps_per_epoch * config.epochs)

    def train_iter(self, seed_offset: int = 0, start_step: int = 0):
        if start_step:
            raise ValueError("the 3D patch stream resumes from its saved iterator state, not from a step")
        ctx, config, data = self.ctx, self.ctx.config, self.data
        sw = config.sw
        self.predict = make_volume_predictor(ctx.graphdef, roi_size=tuple(sw.roi_size), overlap=float(sw.overlap),
                                             mode=sw.mode, sw_batch_size=int(sw.sw_batch_size))
        self.canvas = validation_canvas(data, tuple(sw.roi_size)) if data.val_names else None
        per_process_volumes = self.volumes_per_step // ctx.nproc
        ds = train_dataset(data, config, volumes_per_batch=per_process_volumes, seed_offset=seed_offset,
                           shard_index=ctx.pid, shard_count=ctx.nproc)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(config.get("read_threads", 2)),
                                                  prefetch_buffer_size=int(config.get("prefetch", 4))))
        if config.num_workers > 0:
            from data_pipelines import workers  # noqa: PLC0415
            from data_pipelines.pipeline import _mark_flags_parsed  # google/grain#1360
            _mark_flags_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.num_workers),
                                                             per_worker_buffer_size=2),
                                worker_init_fn=workers.ignore_foreign_stop_signals)
        settings = {"seed": int(config.seed) + seed_offset, "volumes_per_batch": per_process_volumes,
                    "num_volumes": len(data.train_names),
                    "patch": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config.patch).items()},
                    "shard_index": ctx.pid, "shard_count": ctx.nproc, "worker_count": int(config.num_workers)}
        return iter(CheckedIterDataset(it, json.loads(json.dumps(settings))))

    def _evaluate(self, st, with_hd95: bool) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        summary, per_case = evaluate(self.predict, st.params, st.model_state, self.data,
                                     num_classes=self.ctx.config.num_classes, canvas=self.canvas, with_hd95=with_hd95)
        logging.info("validated %d volumes in %.1f s", len(self.data.val_names), time.perf_counter() - t0)
        return summary, per_case

    def validate(self, state, step: int, epoch: int) -> dict:
        with_hd95 = bool(self.ctx.config.get("eval_hd95_every_eval", True))
        val, per_case = self._evaluate(state, with_hd95)
        if with_hd95:
            self.last_eval = (step, val, per_case)
        return val

    def val_scalars(self, val: dict) -> dict:
        return {k: v for k, v in val.items() if math.isfinite(v)}

    def format_val(self, val: dict) -> str:
        parts = [f"dice {val['dice']:.4f}"] + [f"{c} {val[f'dice/{c}']:.4f}" for c in self.data.class_names]
        if "hd95" in val:
            parts.append(f"hd95 {val['hd95']:.2f} mm")
        return " ".join(parts)

    def final_report(self, mngr, meta, last_state) -> dict:
        """Evaluates the best-by-validation checkpoint (with HD95); writes summary.json and per-case metrics.

        When the best checkpoint is the one this process just evaluated with HD95, those numbers are reused.
        """
        config, workdir, data, last_eval = self.ctx.config, self.ctx.workdir, self.data, self.last_eval
        best = meta.get("best_step")
        rows, per_case = {}, {}
        if best is not None and last_eval is not None and last_eval[0] == best:
            state, label = last_state, f"best validation dice (epoch {meta['best_epoch']}, step {best})"
            rows["val"], per_case = last_eval[1], last_eval[2]
        elif best is not None:
            state = checkpoint.restore_state_like(mngr, best, last_state)
            label = f"best validation dice (epoch {meta['best_epoch']}, step {best})"
        else:
            state, label = last_state, "last step (no validation cases)"
        if data.val_names and not rows:
            rows["val"], per_case = self._evaluate(state, True)
        protocol = "selected and reported on validation (the reference protocol, §6; no held-out test split)"
        summary = {"checkpoint": label, "protocol": protocol, "steps": int(jax.device_get(last_state.step)),
                   "epochs": config.epochs, "dataset": config.dataset, "split_file": str(data.split_path),
                   "class_names": list(data.class_names), "metrics": rows}
        if jax.process_index() == 0:
            (workdir / loop.SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            (workdir / loop.PER_CASE_FILE).write_text(json.dumps(per_case, indent=1) + "\n")
            if rows:
                v = rows["val"]
                head = "split     n  " + " ".join(f"{c:>8}" for c in ("mean", *data.class_names)) + "   HD95mm"
                dice = " ".join(f"{x:>8.4f}" for x in (v["dice"], *(v[f"dice/{c}"] for c in data.class_names)))
                print(f"LGMSNet 3D on {config.dataset}: {label}; {protocol}\n{head}\n"
                      f"val   {v['num_cases']:>3}  {dice}   {v.get('hd95', float('nan')):.2f}\n"
                      f"saved to {workdir / loop.SUMMARY_FILE}", flush=True)
        return summary
