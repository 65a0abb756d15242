"""Build the model, optimizer, data sources and TrainState from a config (the only place that reads config keys
for these), and restore a trained model from a workdir for inference.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
from flax import nnx

from lgmsnet_jax.training import checkpoint, optim
from lgmsnet_jax.training.state import TrainState, create_train_state


class DataMissingError(FileNotFoundError):
    """The dataset is not where the config says; the message shows the expected layout and where to get it."""


def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """`lgmsnet_jax.models.build_model(config.model_name, ..., **config.model)`; dtype strings become dtypes."""
    from lgmsnet_jax.models import build_model as _build  # models/ is imported lazily: configs stay light
    kwargs = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return _build(config.model_name, ndim=config.get("ndim", 2), in_channels=config.in_channels,
                  num_classes=config.num_classes, seed=config.seed, **kwargs)


def build_optimizer(config, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule) from `config.optim` for a run of `config.epochs` epochs."""
    o = config.optim
    schedule = optim.build_schedule(o.schedule, lr=o.lr, steps_per_epoch=steps_per_epoch, epochs=config.epochs,
                                    power=o.get("power", 0.9), warmup_epochs=o.get("warmup_epochs", 50))
    tx = optim.build_optimizer(o.name, schedule, momentum=o.get("momentum", 0.9),
                               weight_decay=o.weight_decay)
    return tx, schedule


def missing_data_message(config) -> str:
    """Why the data cannot be used, the expected layout and where to get it (from `config.data_help`)."""
    return (f"Dataset {config.dataset!r} not found at --config.data_dir={config.data_dir!r}.\n"
            f"{config.get('data_help', '')}\n"
            f"Point --config.data_dir at the folder (it is only read, never written).")


def check_data_dir(config) -> None:
    """Stops before anything is compiled when `config.data_dir` is missing (synthetic data needs none)."""
    if config.dataset == "synthetic":
        return
    if not config.data_dir or not pathlib.Path(config.data_dir).is_dir():
        raise DataMissingError(missing_data_message(config))


def load_sources(config) -> dict[str, Any]:
    """{"train", "val", "test" (or None)} random-access sources from data_pipelines.load_source."""
    import data_pipelines as dp
    check_data_dir(config)
    out = {}
    kw = dict(config.source_kwargs.to_dict()) if "source_kwargs" in config else {}
    # "error" stops before training with the list of bad files; "skip" drops them and writes a JSON report.
    kw.setdefault("on_bad", config.get("on_bad", "error"))
    for role in ("train", "val", "test"):
        split = config.splits.get(role)
        if split is None:
            out[role] = None
            continue
        try:
            out[role] = dp.load_source(config.dataset, config.data_dir, split, fold=config.get("fold"),
                                       seed=config.get("split_seed", config.seed),
                                       image_size=tuple(config.image_size), cache_dir=config.get("cache_dir"), **kw)
        except dp.DataError as e:
            raise DataMissingError(f"{e}\n\n{missing_data_message(config)}") from e
        # Read one record now: an unreadable cache fails before anything compiles, and sources that open files
        # lazily (memory maps) do so here, once, rather than racing in Grain's reader threads.
        out[role][0]
        limit = config.get("max_train_examples" if role == "train" else "max_eval_examples", 0)
        if limit and limit < len(out[role]):
            out[role] = Subset(out[role], limit)
    return out


class Subset:
    """The first `n` records of a random-access source (smoke runs)."""

    def __init__(self, src, n: int):
        self.src, self.n = src, int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.src[i]


def abstract_train_state(config, sharding: jax.sharding.Sharding | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState of ShapeDtypeStructs) for restoring a checkpoint of `config` (no data needed).

    Args:
      config: the run's config.
      sharding: placement of every restored leaf (default: the first local device).
    """
    # The schedule does not change the optimizer state's structure; a constant one avoids needing the data size.
    o = config.optim
    tx = optim.build_optimizer(o.name, optax.constant_schedule(o.lr), momentum=o.get("momentum", 0.9),
                               weight_decay=o.weight_decay)
    model = build_model(config)
    graphdef, state = create_train_state(model, tx, config.seed)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return graphdef, checkpoint.abstract_like(state, sharding)


def restore_model(workdir: str | os.PathLike, which: str | int = "best"):
    """Rebuilds a trained model from a workdir for inference.

    Args:
      workdir: a train.py workdir.
      which: "best" (highest validation score), "latest", or a step number.

    Returns:
      (model in eval mode, config as a locked ConfigDict).
    """
    mngr = checkpoint.make_manager(workdir, create=False)
    steps = mngr.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {pathlib.Path(workdir) / checkpoint.CKPT_DIR}")
    if which == "latest":
        step = mngr.latest_step()
    elif which == "best":
        step = checkpoint.best_step(mngr)
        if step is None:
            raise FileNotFoundError(f"{workdir} has no evaluated (best) checkpoint yet; use which='latest'")
    else:
        step = int(which)
        if step not in steps:
            raise FileNotFoundError(f"{workdir} has no checkpoint at step {step}; available: {sorted(steps)}")
    config = ml_collections.ConfigDict(checkpoint.restore_config(mngr, step))
    config = fix_config_types(config)
    graphdef, abstract = abstract_train_state(config)
    state, _, _ = checkpoint.restore(mngr, step, abstract, data_iter=None)
    mngr.close()
    model = nnx.merge(graphdef, state.params, state.model_state)
    model.eval()
    config.lock()
    return model, config


def fix_config_types(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """JSON turned tuples into lists; turn the ones the model/data need back into tuples."""
    def tup(x):
        return tuple(tup(v) for v in x) if isinstance(x, (list, tuple)) else x
    with config.unlocked():
        for k in list(config.model.keys()):
            if isinstance(config.model[k], list):
                config.model[k] = tup(config.model[k])
        config.image_size = tup(config.image_size)
    return config


def replicate(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Places host-identical leaves on a (possibly multi-process) `sharding`, e.g. replicated over the mesh.

    jax.device_put only accepts shardings of addressable devices; make_array_from_callback builds the global
    array from every process's identical copy. Typed PRNG keys travel as their raw key data.
    """
    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)
