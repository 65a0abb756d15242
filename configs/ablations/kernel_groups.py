r"""Ablation: LMS depthwise kernel group (paper Fig. 7 left; paper_facts.md §6), LGMSNet on BUSI split 1.

The paper reports (3, 5, 7, 9) best and stable, about +1 % on average over a single-kernel convolution; it does not
list the other groups it tried. This grid compares the published group with single kernels of three sizes (the
same kernel in all four channel chunks): (3,3,3,3), (5,5,5,5), (7,7,7,7), (3,5,7,9). Everything else is the
published model (2,321,393 parameters for (3,5,7,9); the single-kernel variants differ only in depthwise weights).

Command (3 seeds per setting as one vmapped ensemble; resumable, re-run until it prints the table):
  JAX_COMPILATION_CACHE_DIR=.cache/jax python -m lgmsnet_jax.ablate \
      --config configs/ablations/kernel_groups.py --workdir runs/ablate_kernels \
      --config.base_overrides.data_dir=data/BUSI --time_budget_s=420
Config arguments (`kernel_groups.py:ARGS`): dataset=busi|isic18|tnscui|kvasir, split=1|2|3, epochs=N (default 30),
seeds=K (default 3: 41, 42, 43), smoke.

Shortened schedule (stated): 30 epochs instead of the reference's 500 (29 steps of batch 16 per epoch on BUSI,
poly decay over the 30 epochs, lr 0.02, SGD as the reference), validation every 3 epochs, best validation epoch
reported on validation (the reference protocol; BUSI has no test split). Absolute IoU is therefore below the
paper's 73.40; the comparison between settings is the point.
Runtime on one H200 (measured 2026-11-30, float32, member_loop=map): about 3 min per setting (57-71 s to compile
and reach epoch 3, then 2.8-3.0 s per epoch for the 3 members), ~12 min for the grid: two commands of
--time_budget_s=420. With member_loop=vmap an epoch took 7.5 s. Results of that run: RESULTS.md "Issue 10".
Results: runs/ablate_kernels/summary.md, summary.csv, summary_iou.png, summary_f1.png.
"""
import ml_collections

from configs.ablations import _common

KERNEL_GROUPS = {"k3333": (3, 3, 3, 3), "k5555": (5, 5, 5, 5), "k7777": (7, 7, 7, 7), "k3579": (3, 5, 7, 9)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Kernel-group grid; see the module docstring for arguments."""
    c = _common.ablation_config(arg, "configs/ablations/kernel_groups.py", epochs=30, eval_every=3)
    c.settings = ml_collections.ConfigDict({name: {"model": {"kernels": k}} for name, k in KERNEL_GROUPS.items()})
    c.order = tuple(KERNEL_GROUPS)
    c.title = "LMS kernel group"
    return c
