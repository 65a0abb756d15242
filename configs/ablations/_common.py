"""Fields shared by the ablation configs: base recipe, shortened schedule, seeds, config arguments.

An ablation config is a ConfigDict with `base_config` (a training config file and argument), `base_overrides`
(applied to every setting), `settings` (name -> structural overrides), `order`, `members` (numeric axes whose
product is the vmapped ensemble of each setting), `report_metrics`, `title` and `min_setting_start_s`.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import common

REFERENCE_SEED = 41  # the reference scripts' seed (spec §5.2); members add 42, 43, ...
ARGS = ("dataset", "split", "epochs", "seeds", "smoke")
DATASETS = ("busi", "isic18", "tnscui", "kvasir")


def ablation_config(arg: str | None, config_file: str, *, epochs: int, eval_every: int) -> ml_collections.ConfigDict:
    """The common part of an ablation config.

    Arguments (comma-separated, after ':' in --config): dataset=busi|isic18|tnscui|kvasir (default busi),
    split=1|2|3 (reference split; default 1), epochs=N (default `epochs`), seeds=K (seeds 41..41+K-1; default 3),
    smoke (a seconds-long grid on generated data with narrow models, for tests).

    Args:
      arg: the config argument string.
      config_file: the ablation file, for error messages.
      epochs: default shortened schedule.
      eval_every: validation period in epochs (the best epoch is selected among these, reference protocol).

    Returns:
      ConfigDict without `settings`/`order`/`title` (the caller adds them).
    """
    args = common.parse_arg(arg)
    common.check_args(args, ARGS, config_file)
    dataset = str(args.get("dataset", "busi"))
    if dataset not in DATASETS:
        raise ValueError(f"{config_file}: dataset must be one of {DATASETS}, got {dataset!r}")
    split = int(args.get("split", 1))
    num_seeds = int(args.get("seeds", 3))
    if num_seeds < 1:
        raise ValueError(f"{config_file}: seeds must be >= 1, got {num_seeds}")
    c = ml_collections.ConfigDict()
    smoke = bool(args.get("smoke"))
    if smoke:
        c.base_config = "configs/demo.py:smoke"
    elif dataset == "kvasir":
        c.base_config = "configs/kvasir.py"
    else:
        c.base_config = f"configs/{dataset}.py:split={split}"
    c.base_overrides = ml_collections.ConfigDict()
    c.base_overrides.epochs = int(args.get("epochs", 2 if smoke else epochs))
    c.base_overrides.eval_every = 1 if smoke else eval_every
    if smoke:  # pinned here so the smoke grid does not depend on the demo config's sizes: 2 steps per epoch
        c.base_overrides.batch_size = 4
        c.base_overrides.source_kwargs = ml_collections.ConfigDict({"num_examples": 8})
    # Where the data lives on this machine: --config.base_overrides.data_dir=/path (unset keeps the base's).
    c.base_overrides.data_dir = config_dict.placeholder(str)
    c.base_overrides.cache_dir = config_dict.placeholder(str)  # decoded-data cache
    c.base_overrides.num_workers = config_dict.placeholder(int)  # Grain worker processes per member stream
    c.members = ml_collections.ConfigDict({"seed": tuple(REFERENCE_SEED + i for i in range(num_seeds))})
    c.report_metrics = ("iou", "f1")
    # Do not start a new setting with less time than this left (compile + one epoch on one H200, with margin).
    c.min_setting_start_s = 150.0
    # How one compiled step covers the members (lgmsnet_jax.ablation.ensemble.make_steps): "map" runs them one after
    # another inside the program, "vmap" batches them (each conv then sees per-member weights as feature groups).
    # Measured on one H200 (BUSI, batch 16, fp32, 3 members; BENCHMARKS.md "Ablation grids"): map 2.8 s per epoch,
    # vmap 7.5 s, so map is the default; both give every member the computation of a separate run (tested).
    c.member_loop = "map"
    c.smoke = smoke
    return c


def model_dims(smoke: bool) -> tuple[int, ...]:
    """LGMSNet widths of the grid's base model (the published ones, or the narrow smoke ones)."""
    return tuple((common.LGMSNET_NARROW if smoke else common.LGMSNET_DEFAULTS)["dims"])
