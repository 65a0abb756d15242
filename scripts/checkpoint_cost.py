"""What one checkpoint write of the LGMSNet TrainState costs: the packed format train.py writes vs the old tree.

    python scripts/checkpoint_cost.py [--ndim 2] [--saves 5]

Times `checkpoint.save` (the blocking part, at the epoch boundary) and `wait_until_finished` after it (the part Orbax
does in background threads while the next epoch trains), medians over --saves writes after one untimed write, each
into a fresh temporary workdir. "tree" is the format of runs saved before the packed state (one Orbax array per
leaf). BENCHMARKS.md, session 11.
"""
import argparse
import statistics
import tempfile
import time

import orbax.checkpoint as ocp

from lgmsnet_jax.benchmark import SETTINGS
from lgmsnet_jax.models import build_model
from lgmsnet_jax.training import checkpoint, optim, state as state_lib


def _tree_save(mngr, step, state):
    mngr.save(step, args=ocp.args.Composite(**{checkpoint.TREE_ITEM: ocp.args.StandardSave(state),
                                               "config": ocp.args.JsonSave({}), "meta": ocp.args.JsonSave({})}))


def _packed_save(mngr, step, state):
    checkpoint.save(mngr, step, state, data_iter=None, config_dict={}, meta={})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    p.add_argument("--saves", type=int, default=5)
    args = p.parse_args()
    s = SETTINGS[args.ndim]  # the benchmark's recipe: model size, optimizer and its state
    model = build_model("lgmsnet", ndim=args.ndim, in_channels=s.in_channels, num_classes=s.num_classes, seed=0)
    tx = optim.build_optimizer(s.optimizer, optim.build_schedule(s.schedule, lr=s.lr, steps_per_epoch=1000, epochs=1000),
                               weight_decay=s.weight_decay)
    _, state = state_lib.create_train_state(model, tx, seed=0)
    for name, save in (("tree (before)", _tree_save), ("packed (train.py)", _packed_save)):
        with tempfile.TemporaryDirectory() as d:
            mngr = checkpoint.make_manager(d)
            blocking, background = [], []
            for step in range(args.saves + 1):
                t0 = time.perf_counter()
                save(mngr, step, state)
                t1 = time.perf_counter()
                mngr.wait_until_finished()
                if step:  # the first write compiles the packing and warms Orbax up
                    blocking.append(t1 - t0)
                    background.append(time.perf_counter() - t1)
            mngr.close()
        print(f"{name}: {len(state_lib.leaf_paths(state))} arrays, save blocking {statistics.median(blocking):.3f} s, "
              f"background {statistics.median(background):.3f} s (medians of {args.saves})")


if __name__ == "__main__":
    main()
