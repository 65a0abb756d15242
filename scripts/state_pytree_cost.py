"""Host time per train step spent flattening and rebuilding the TrainState pytree (no device work at all).

    python scripts/state_pytree_cost.py [--ndim 2] [--calls 50]

A jitted train step flattens its state argument and rebuilds the returned state on every call. Our TrainState
holds `nnx.Variable` containers, whose pytree functions run in Python; the same arrays as plain nested dicts are
handled in C++. Prints both, median per call, in ms (BENCHMARKS.md, "What remains for the 2D train row").
"""
import argparse

import jax
from flax import nnx

from lgmsnet_jax.benchmark import SETTINGS, time_calls, timing_stats
from lgmsnet_jax.models import build_model
from lgmsnet_jax.training import optim
from lgmsnet_jax.training import state as state_lib


def per_call_ms(fn, calls: int) -> float:
    """Median ms of `fn`; it returns None so that the timer's block_until_ready adds no tree walk of its own."""
    return timing_stats(time_calls(lambda: fn() and None, warmup=1, steps=calls))["median_ms"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args()
    s = SETTINGS[args.ndim]  # the benchmark's recipe: model size, optimizer and its state, as the train step has them
    model = build_model("lgmsnet", ndim=args.ndim, in_channels=s.in_channels, num_classes=s.num_classes, seed=0)
    schedule = optim.build_schedule(s.schedule, lr=s.lr, steps_per_epoch=1000, epochs=1000)
    tx = optim.build_optimizer(s.optimizer, schedule, weight_decay=s.weight_decay)
    _, state = state_lib.create_train_state(model, tx, seed=0)
    is_state = lambda t: isinstance(t, nnx.State)  # noqa: E731
    pure = {"step": state.step, "params": nnx.to_pure_dict(state.params),
            "model_state": nnx.to_pure_dict(state.model_state),
            "opt_state": [nnx.to_pure_dict(t) if is_state(t) else t
                          for t in jax.tree.leaves(state.opt_state, is_leaf=is_state)],
            "key": state.key}
    for name, tree in (("TrainState (nnx.Variable leaves)", state), ("the same arrays as plain dicts", pure)):
        leaves, treedef = jax.tree.flatten(tree)
        flat = per_call_ms(lambda: jax.tree.flatten(tree), args.calls)  # noqa: B023
        unflat = per_call_ms(lambda: jax.tree.unflatten(treedef, leaves), args.calls)  # noqa: B023
        print(f"{name}: {len(leaves)} arrays, flatten {flat:.3f} ms, unflatten {unflat:.3f} ms, "
              f"sum {flat + unflat:.3f} ms per call")


if __name__ == "__main__":
    main()
