"""Ablation grids: structural settings as separate compiles, numeric members as one vmapped ensemble each.

Entry point: `python -m lgmsnet_jax.ablate --config configs/ablations/<name>.py --workdir W`.
"""
from lgmsnet_jax.ablation.grid import NUMERIC_AXES, Grid, Member, Setting, parse_grid
from lgmsnet_jax.ablation.report import aggregate, collect, write_report
from lgmsnet_jax.ablation.runner import run_grid

__all__ = ["Grid", "Member", "NUMERIC_AXES", "Setting", "aggregate", "collect", "parse_grid", "run_grid",
           "write_report"]
