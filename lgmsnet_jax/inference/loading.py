"""Load a trained model for inference: a train.py workdir (best/latest/step checkpoint) or a converted reference
checkpoint (`python -m lgmsnet_jax.convert` output: model.json + model/), with the settings inference needs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections
from flax import nnx

CONVERTED_MARKER = "model.json"


@dataclasses.dataclass
class Loaded:
    """A model ready for inference and what it needs to see its inputs as in training.

    Attributes:
      model: the NNX model in eval mode.
      config: the run's config (locked), or a minimal one for a converted checkpoint (task, ndim, image_size,
        normalize, in_channels, num_classes; dataset None).
      step: the checkpoint's optimizer step (None for a converted checkpoint).
      source: human-readable description ("runs/x step 40 (best)" or "converted reference checkpoint DIR").
    """

    model: nnx.Module
    config: ml_collections.ConfigDict
    step: int | None
    source: str


def is_converted(path: str | pathlib.Path) -> bool:
    """True when `path` is a converted reference checkpoint folder (has model.json)."""
    return (pathlib.Path(path) / CONVERTED_MARKER).is_file()


def resolve_step(workdir: str | pathlib.Path, which: str | int) -> int:
    """The checkpoint step `which` ("best", "latest" or a step number) names in `workdir`; clear errors otherwise."""
    from lgmsnet_jax.training import checkpoint  # noqa: PLC0415  orbax import is slow; only when needed

    ckpt_dir = pathlib.Path(workdir) / checkpoint.CKPT_DIR
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{workdir} is neither a train.py workdir (no {checkpoint.CKPT_DIR}/) nor a converted "
                                f"reference checkpoint (no {CONVERTED_MARKER})")
    mngr = checkpoint.make_manager(workdir, create=False)
    try:
        steps = sorted(mngr.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
        if which == "latest":
            return int(mngr.latest_step())
        if which == "best":
            step = checkpoint.best_step(mngr)
            if step is None:
                raise FileNotFoundError(f"{workdir} has no evaluated (best) checkpoint yet; use --checkpoint latest "
                                        f"(available steps: {steps})")
            return int(step)
        try:
            step = int(which)
        except ValueError:
            raise ValueError(f"--checkpoint must be best, latest or a step number, got {which!r}") from None
        if step not in steps:
            raise FileNotFoundError(f"{workdir} has no checkpoint at step {step}; available: {steps}")
        return step
    finally:
        mngr.close()


def _converted_config(meta: dict, image_size: Sequence[int] | None, normalize: str | None,
                      ) -> ml_collections.ConfigDict:
    ndim = int(meta.get("ndim", 2))
    num_classes = int(meta.get("num_classes", 1 if ndim == 2 else 14))
    default_size = (256, 256) if ndim == 2 else (96, 96, 96)
    c = ml_collections.ConfigDict({
        "dataset": None, "data_dir": None, "cache_dir": None, "fold": None, "ndim": ndim,
        "task": "binary_seg_2d" if ndim == 2 else "seg_3d",
        "in_channels": int(meta.get("in_channels", 3 if ndim == 2 else 1)), "num_classes": num_classes,
        "image_size": tuple(int(s) for s in (image_size or default_size)),
        "normalize": normalize or "imagenet", "model_name": meta.get("name", "lgmsnet"),
    })
    c.lock()
    return c


def _check_run_settings(config: ml_collections.ConfigDict, image_size: Sequence[int] | None,
                        normalize: str | None) -> None:
    if image_size is not None and tuple(image_size) != tuple(config.image_size):
        raise ValueError(f"--image_size {tuple(image_size)} differs from the run's config.image_size "
                         f"{tuple(config.image_size)}; a trained run is evaluated on its own grid")
    if normalize is not None and normalize != config.normalize:
        raise ValueError(f"--normalize {normalize!r} differs from the run's config.normalize {config.normalize!r}")


def _exported_config(run_config: dict, image_size: Sequence[int] | None, normalize: str | None
                     ) -> ml_collections.ConfigDict:
    from lgmsnet_jax.training import builders  # noqa: PLC0415

    config = builders.fix_config_types(ml_collections.ConfigDict(run_config))
    _check_run_settings(config, image_size, normalize)
    config.lock()
    return config


def load_for_inference(path: str | pathlib.Path, which: str | int = "best", *,
                       image_size: Sequence[int] | None = None, normalize: str | None = None) -> Loaded:
    """Loads a workdir checkpoint or a converted reference checkpoint for evaluation/prediction.

    Args:
      path: a train.py workdir, or a `lgmsnet_jax.convert --out` folder.
      which: workdir only: "best", "latest" or a step number.
      image_size: converted checkpoints only: the network grid (default 256x256 in 2D); for a workdir the run's
        own `config.image_size` is used and a different value is refused.
      normalize: converted checkpoints only: input normalisation (default "imagenet"; the reference's BUSI/ISIC18/
        TNSCUI weights expect "reference_bgr").

    Returns:
      A `Loaded`.
    """
    path = pathlib.Path(path)
    if is_converted(path):
        from lgmsnet_jax import convert  # noqa: PLC0415

        meta = json.loads((path / CONVERTED_MARKER).read_text())
        model = convert.load_converted(path)
        model.eval()
        if "run_config" in meta:  # an exported train.py checkpoint (lgmsnet_jax.export) carries its run's config
            config = _exported_config(meta["run_config"], image_size, normalize)
            prov = meta.get("provenance", {})
            return Loaded(model, config, None, f"exported checkpoint {path} (run {prov.get('run', '?')} step "
                                               f"{prov.get('step', '?')})")
        return Loaded(model, _converted_config(meta, image_size, normalize), None,
                      f"converted reference checkpoint {path}")
    from lgmsnet_jax.training import builders  # noqa: PLC0415

    step = resolve_step(path, which)
    model, config = builders.restore_model(path, step)
    _check_run_settings(config, image_size, normalize)
    label = f" ({which})" if which in ("best", "latest") else ""
    return Loaded(model, config, step, f"{path} step {step}{label}")


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, params, other variables) of an eval-mode model, for jitted pure functions."""
    return nnx.split(model, nnx.Param, ...)
