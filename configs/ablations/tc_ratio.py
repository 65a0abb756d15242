r"""Ablation: GMS transformer:conv channel ratio (paper Fig. 7 right; paper_facts.md §6), LGMSNet on BUSI split 1.

Five settings, as in the paper: pure conv 0:4, 1:3, 2:2, 3:1 (published), pure transformer 4:0, applied to all four
GMS blocks: (T, S) = (r/4·W, (4-r)/4·W) for block widths W = (128, 128, 128, 64). T = 0 drops the transformer
branch and S = 0 the depthwise conv branch (models/gms.py). The paper: pure conv worst on all three datasets, 3:1
best, pure transformer not best.

Command (3 seeds per setting as one vmapped ensemble; resumable, re-run until it prints the table):
  JAX_COMPILATION_CACHE_DIR=.cache/jax python -m lgmsnet_jax.ablate \
      --config configs/ablations/tc_ratio.py --workdir runs/ablate_tc \
      --config.base_overrides.data_dir=data/BUSI --time_budget_s=420
Config arguments (`tc_ratio.py:ARGS`): dataset=busi|isic18|tnscui|kvasir, split=1|2|3, epochs=N (default 30),
seeds=K (default 3: 41, 42, 43), smoke.

Shortened schedule (stated): 30 epochs instead of 500, validation every 3 epochs, best validation epoch reported on
validation (reference protocol); otherwise the reference BUSI recipe. Absolute IoU is below the paper's.
Runtime on one H200 (measured 2026-11-30, float32, member_loop=map): 2 min 42 s to 2 min 59 s per setting (2.3-2.9 s
per epoch for the 3 members), 15 min 2 s for the grid: three commands of --time_budget_s=420 at most. Results of
that run: RESULTS.md "Issue 10".
Results: runs/ablate_tc/summary.md, summary.csv, summary_iou.png, summary_f1.png.
"""
import ml_collections

from configs.ablations import _common

RATIOS = {"tc0_4": 0, "tc1_3": 1, "tc2_2": 2, "tc3_1": 3, "tc4_0": 4}  # quarters of the GMS width to the transformer


def gms_splits(dims: tuple[int, ...], quarters: int) -> tuple[tuple[int, int], ...]:
    """(T, S) of the four GMS blocks (encoder4, encoder5, decoder5, decoder4) for T:S = quarters:(4 - quarters)."""
    widths = (dims[3], dims[4], dims[3], dims[2])
    return tuple((w * quarters // 4, w - w * quarters // 4) for w in widths)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """T:C ratio grid; see the module docstring for arguments."""
    c = _common.ablation_config(arg, "configs/ablations/tc_ratio.py", epochs=30, eval_every=3)
    dims = _common.model_dims(c.smoke)
    c.settings = ml_collections.ConfigDict({name: {"model": {"gms_splits": gms_splits(dims, q)}}
                                            for name, q in RATIOS.items()})
    c.order = tuple(RATIOS)
    c.title = "GMS transformer:conv ratio"
    return c
