r"""Train and evaluate LGMSNet: flags -> config -> `lgmsnet_jax.training.loop.train_and_evaluate`.

  python train.py --config configs/kvasir.py --workdir runs/kvasir [--config.epochs=10 ...]

Re-running the same command resumes from the workdir's latest checkpoint. This is the only module that reads
flags, sets jax.config and calls jax.distributed.initialize (STYLE.md).
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/kvasir.py[:ARG].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (created; re-run the same command to resume).")
_FORCE_CONFIG = flags.DEFINE_bool("force_config", False, "Continue a workdir whose saved config differs.")
_STOP_AFTER = flags.DEFINE_integer("stop_after_steps", None, "Train at most this many steps now, checkpoint, exit.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                  "Multi-process run with jax.distributed's cluster auto-detection (TPU pod slices, "
                                  "SLURM, Open MPI); the three explicit flags below override what it detects.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs (jax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100,
                                  "Multi-process runs: a process silent this long is declared dead and the others stop "
                                  "(instead of waiting in a collective forever); rerun the command to resume.")
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
    if _DISTRIBUTED.value or _COORDINATOR.value or _NUM_PROCESSES.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value, heartbeat_timeout_seconds=_HEARTBEAT.value)
    elif _NUM_PROCESSES.value is None and _PROCESS_ID.value is not None:
        raise app.UsageError("--process_id needs --coordinator_address and --num_processes")

    from lgmsnet_jax.training import builders, checkpoint, loop

    logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
    try:
        loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, force_config=_FORCE_CONFIG.value,
                                stop_after_steps=_STOP_AFTER.value)
    except (builders.DataMissingError, checkpoint.WorkdirError, loop.NonFiniteLossError) as e:
        # Expected, user-actionable stops: a clear message and exit code 2, without a traceback.
        logging.error("%s: %s", type(e).__name__, e)
        raise SystemExit(2) from None
    finally:
        if jax.process_count() > 1:
            jax.distributed.shutdown()


if __name__ == "__main__":
    app.run(main)
