r"""Ablation: LMS/GMS blocks migrated into TinyU-Net and U-Net (paper Table 6; paper_facts.md §5).

Settings: tinyunet (481,105 params), tinyunet_lms (690,937), unet (34,527,041), unet_lms (17,330,081), unet_gms
(19,182,113), plus lgmsnet (2,321,393) as the reference point. The migrated networks are NOT in the reference
repository: "+LMS" is a reconstruction that reproduces the paper's counts (baselines.md §4.1), "+GMS" for U-Net is
a TENTATIVE candidate (one of several that match 19.18M, §4.2), and TinyU-Net+GMS (0.71M) is UNRESOLVED and not
in the grid (models/baselines/migrations.py). Read the unet_gms row as ours, not as the paper's model.

Command (3 seeds per setting as one vmapped ensemble; resumable):
  JAX_COMPILATION_CACHE_DIR=.cache/jax python -m lgmsnet_jax.ablate \
      --config configs/ablations/migration.py --workdir runs/ablate_migration \
      --config.base_overrides.data_dir=data/BUSI --time_budget_s=420
Config arguments (`migration.py:ARGS`): dataset=busi|isic18|tnscui|kvasir (the paper: BUSI, ISIC18, Kvasir),
split=1|2|3, epochs=N (default 30), seeds=K (default 3), smoke.

Shortened schedule (stated): 30 epochs instead of 500, the reference BUSI recipe otherwise (SGD 0.02, poly, batch
16) for every network, as the paper trains its baselines with the same recipe. Runtime on one H200: not measured
(U-Net's 34.5M parameters make it the slowest setting).
"""
import ml_collections

from configs import common
from configs.ablations import _common

MODELS = ("lgmsnet", "tinyunet", "tinyunet_lms", "unet", "unet_lms", "unet_gms")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Table 6 grid; see the module docstring for arguments."""
    c = _common.ablation_config(arg, "configs/ablations/migration.py", epochs=30, eval_every=3)
    settings = {}
    for name in MODELS:
        if name == "lgmsnet":
            settings[name] = {}  # the base config's model
        elif c.smoke:
            settings[name] = {"model_name": name, "model": {"dims": common.BASELINE_SMOKE_DIMS[name]}}
        else:
            settings[name] = {"model_name": name}
    c.settings = ml_collections.ConfigDict(settings)
    c.order = MODELS
    c.title = "Table 6 migrations"
    return c
