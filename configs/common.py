"""Fields every config shares, with the reference's 2D recipe as defaults (spec §5.1), and config-argument parsing.

Override any field from the command line: `--config.epochs=10 --config.batch_size=8 --config.data_dir=/data/x`.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# LGMSNet constructor defaults (the published 2D model: 2,321,393 parameters); see lgmsnet_jax/models/lgmsnet.py.
LGMSNET_DEFAULTS = dict(
    dims=(16, 32, 64, 128, 128), kernels=(3, 5, 7, 9), gms_splits=((96, 32), (96, 32), (96, 32), (48, 16)),
    mlp_dims=(256, 256, 256, 128), num_heads=4, head_dim=8, patch_size=2, dtype="float32", remat=False,
    depthwise_impl="xla", attention_impl="xla")

# A narrow LGMSNet (same topology, 8-16 channels, 3x3 depthwise) that compiles in seconds on CPU.
LGMSNET_NARROW = LGMSNET_DEFAULTS | dict(
    dims=(8, 8, 16, 16, 16), kernels=(3,), gms_splits=((8, 8),) * 4, mlp_dims=(16,) * 4, num_heads=2, head_dim=4)


def parse_arg(arg: str | None) -> dict[str, str | bool]:
    """"split=2,smoke" -> {"split": "2", "smoke": True} (the part after ':' in --config configs/x.py:ARG)."""
    out: dict[str, str | bool] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        out[key.strip()] = value.strip() if sep else True
    return out


def check_args(args: dict, allowed: tuple[str, ...], config_file: str) -> None:
    """Rejects unknown config arguments, naming the allowed ones."""
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(f"{config_file}: unknown config argument(s) {unknown}; allowed: {list(allowed)}")


def base_config() -> ml_collections.ConfigDict:
    """Every common field, set to the reference's BUSI/ISIC18/TNSCUI recipe (SGD 0.02, poly 0.9, batch 16, 500 ep)."""
    c = ml_collections.ConfigDict()
    # Data.
    c.dataset = "synthetic"  # data_pipelines.load_source name
    c.data_dir = config_dict.placeholder(str)
    c.cache_dir = config_dict.placeholder(str)  # decoded-data cache (default $LGMSNET_CACHE or ~/.cache/lgmsnet_jax)
    c.data_help = ""  # expected layout and download link, shown when data_dir is missing
    c.fold = config_dict.placeholder(int)  # reference split 1..3 (BUSI, ISIC18, TNSCUI)
    c.splits = ml_collections.ConfigDict({"train": "train", "val": "val", "test": config_dict.placeholder(str)})
    c.source_kwargs = ml_collections.ConfigDict()  # extra load_source arguments (split_scheme, val_fraction, ...)
    # Resuming: "exact" continues the input stream where it stopped (2D: from the step, with any process count;
    # 3D: from the saved iterator states, same process count); "restart" restores model, optimizer and step and
    # starts a reseeded input stream (e.g. to continue a 3D run with another process count).
    c.resume_data = "exact"
    c.on_bad = "error"  # bad data files: "error" = stop before training with the list; "skip" = drop them + report
    c.max_train_examples = 0  # 0 = all; >0 keeps the first N (smoke runs)
    c.max_eval_examples = 0
    c.image_size = (256, 256)
    c.augment = "busi"
    c.normalize = "imagenet"
    c.num_workers = 0  # Grain worker processes (0 = threads in this process)
    c.eval_cache_gib = 4.0  # keep eval sets up to this size (float32, all devices) on the devices between epochs
    # Model and task.
    c.task = "binary_seg_2d"
    c.model_name = "lgmsnet"
    c.ndim = 2
    c.in_channels = 3
    c.num_classes = 1
    c.model = ml_collections.ConfigDict(dict(LGMSNET_DEFAULTS))
    # Optimisation (spec §5.1).
    c.optim = ml_collections.ConfigDict(dict(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4, schedule="poly",
                                             power=0.9, warmup_epochs=50))
    c.epochs = 500
    c.batch_size = 16  # global, over all devices and processes
    c.eval_batch_size = 0  # 0 = batch_size
    c.grad_accum_steps = 1
    c.batchnorm = "global"  # or "per_device": BatchNorm statistics per device in data-parallel runs
    c.seed = 41
    # Evaluation, logging, checkpoints.
    c.eval_every = 1  # epochs
    # Also score the test split at every validation (logged as test/*, plus the best over epochs in summary.json);
    # monitoring only: selection stays on validation. The reference's Kvasir script does this.
    c.monitor_test = False
    c.log_every = 10  # steps
    c.max_run_seconds = 0.0  # >0: stop (and checkpoint) after this many seconds of this invocation; rerun to resume
    c.checkpoint_every_epochs = 1  # at evaluations: save a resume point every N epochs (a new best is always saved)
    c.checkpoint_every_steps = 0  # extra resume points between evaluations (0 = only at evaluations)
    c.num_pictures = 8
    c.picture_every_epochs = 10  # PNG grid of validation predictions (0 = never); also at the last epoch
    c.fast_compile = False  # lower XLA CPU optimisation: much faster compiles, for demos and tests
    return c


# The 2D models train.py can train besides LGMSNet (lgmsnet_jax/models/baselines; names as registered), and the
# narrow widths of their smoke variants (same topology; real runs use each model's published widths).
BASELINE_SMOKE_DIMS = {"unet": (4, 8, 8, 8, 8), "unet_lms": (4, 8, 8, 8, 8), "unet_gms": (4, 8, 8, 8, 8),
                       "tinyunet": (16, 16, 16, 16), "tinyunet_lms": (16, 16, 16, 16),
                       "cmunext": (8, 8, 16, 16, 16)}


def use_model(c: ml_collections.ConfigDict, name: str, config_file: str, *, smoke: bool) -> ml_collections.ConfigDict:
    """Config argument `model=NAME`: train a baseline with its published constructor defaults instead of LGMSNet.

    LGMSNet's keywords (c.model) mean nothing to another architecture, so they are replaced; a smoke config gets the
    baseline's narrow widths.
    """
    if name == "lgmsnet":
        return c
    if name not in BASELINE_SMOKE_DIMS:
        raise ValueError(f"{config_file}: model must be 'lgmsnet' or one of {sorted(BASELINE_SMOKE_DIMS)}, got {name!r}")
    c.model_name = name
    c.model = ml_collections.ConfigDict({"dims": BASELINE_SMOKE_DIMS[name]} if smoke else {})
    return c


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """big_vision's `runlocal`: a seconds-long run of the same pipeline (narrow model, 64x64, few examples)."""
    c.model = ml_collections.ConfigDict(dict(LGMSNET_NARROW))
    c.image_size = (64, 64)
    c.epochs = 1
    c.batch_size = 4
    c.max_train_examples = 8
    c.max_eval_examples = 4
    c.eval_every = 1
    c.log_every = 1
    c.fast_compile = True
    return c


def reference_split_config(dataset: str, data_dir: str, data_help: str, arg: str | None,
                           config_file: str) -> ml_collections.ConfigDict:
    """BUSI / ISIC18 / TNSCUI: the reference's `main.py` recipe on reference split `split=1|2|3` (default 1).

    No test split exists in the reference: selection and report are both on the validation list.
    """
    args = parse_arg(arg)
    check_args(args, ("split", "smoke", "model"), config_file)
    split = int(args.get("split", 1))
    if split not in (1, 2, 3):
        raise ValueError(f"{config_file}: split must be 1, 2 or 3, got {split}")
    c = base_config()
    c.dataset = dataset
    c.data_dir = data_dir
    c.data_help = data_help
    c.fold = split
    c.augment = "busi"
    c.normalize = "reference_bgr"  # the reference's BGR ImageNet normalisation followed by an extra /255
    if args.get("smoke"):
        shrink_for_smoke(c)
    return use_model(c, str(args.get("model", "lgmsnet")), config_file, smoke=bool(args.get("smoke")))
