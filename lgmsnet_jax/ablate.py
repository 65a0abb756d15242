r"""Run an ablation grid: `python -m lgmsnet_jax.ablate --config configs/ablations/<name>.py --workdir W`.

Each structural setting of the grid is one compile; its numeric members (seeds, learning rates, loss weights)
train as one vmapped ensemble, spread over the local devices. Re-running the same command resumes: finished
members are skipped, unfinished ones continue from their latest checkpoint. `--time_budget_s` stops starting new
epochs after that many seconds (for time-sliced jobs); `--only` runs a subset of settings (e.g. one per process).
Results: W/summary.md, W/summary.csv, W/summary_<metric>.png (mean ± std over seeds per setting).
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Ablation config, e.g. configs/ablations/tc_ratio.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Grid folder (created; re-run the same command to resume).")
_ONLY = flags.DEFINE_list("only", None, "Run only these settings now (comma-separated names).")
_TIME_BUDGET = flags.DEFINE_float("time_budget_s", None, "Start no new epoch after this many seconds; rerun resumes.")
_FORCE_CONFIG = flags.DEFINE_bool("force_config", False, "Continue settings whose saved config differs.")
_NUM_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into N devices (testing sharding).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import logging as std_logging

    import jax

    from lgmsnet_jax.training.writers import QuietLibraries

    std_logging.getLogger("absl").addFilter(QuietLibraries())
    if _NUM_CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _NUM_CPU_DEVICES.value)
    from lgmsnet_jax.ablation import runner
    from lgmsnet_jax.training import builders, checkpoint

    try:
        status = runner.run_grid(_CONFIG.value, _WORKDIR.value, only=_ONLY.value, time_budget_s=_TIME_BUDGET.value,
                                 force_config=_FORCE_CONFIG.value)
    except (builders.DataMissingError, checkpoint.WorkdirError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        raise SystemExit(2) from None
    for name, s in status.items():
        logging.info("setting %-20s %s", name, s)
    if any(s == "interrupted" for s in status.values()):
        print(f"Time budget reached: re-run the same command to continue ({_WORKDIR.value}).", flush=True)
    summary = f"{_WORKDIR.value}/summary.md"
    try:
        print(open(summary).read(), flush=True)
    except FileNotFoundError:
        pass


if __name__ == "__main__":
    app.run(main)
