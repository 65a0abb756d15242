"""Helpers for comparing our LGMSNet with the reference fixtures of ../shared/fixtures (spec §8.5)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lgmsnet_jax.convert import load_torch_checkpoint, reference_key_map

_PREFIXES = [  # reference module prefix -> our capture name (longest first)
    (r"^encoder([123])\.0", r"encoder\1.lms"),
    (r"^encoder([45])\.0", r"encoder\1"),
    (r"^Up_conv4\.0", "fusion4"),
    (r"^Up_conv4\.1", "decoder4"),
    (r"^Up_conv([2-5])", r"decoder\1"),
    (r"^Up([2-5])", r"up\1"),
]


def capture_name(fixture_name: str) -> str:
    """Reference module name of an `act.*` entry -> key of our `capture` dict."""
    name = fixture_name
    for pattern, repl in _PREFIXES:
        name, n = re.subn(pattern, repl, name)
        if n:
            break
    return name.replace("conv_spilt", "conv_branch")


def to_channels_last(a: np.ndarray) -> np.ndarray:
    """NC... -> N...C."""
    return np.moveaxis(a, 1, -1)


def run_fixture(path, ndim: int, in_channels: int, num_classes: int, *, train: bool = True, **model_kwargs):
    """Load a fixture's weights, run eval (with captures) and, optionally, one train-mode pass in one jit.

    Returns:
      dict with 'fixture' (the npz as dict), 'eval', 'capture', and with train=True 'train', 'running'
      (reference BN key + '.running_mean'/'.running_var' -> our updated statistic).
    """
    fixture = dict(np.load(path, allow_pickle=False))
    model = load_torch_checkpoint(path, ndim=ndim, in_channels=in_channels, num_classes=num_classes, **model_kwargs)
    graphdef, state = nnx.split(model)
    x = jnp.asarray(to_channels_last(fixture["input"]))

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        capture: dict = {}
        out = {"eval": m(x, train=False, capture=capture), "capture": capture}
        if train:
            out["train"] = m(x, train=True)
            out["state"] = nnx.state(m, nnx.BatchStat)
        return out

    with jax.default_matmul_precision("highest"):
        result = jax.device_get(jax.jit(forward)(state, x))
    result["fixture"] = fixture
    if train:
        flat = {p: v.get_value() for p, v in nnx.to_flat_state(result.pop("state"))}
        result["running"] = {key: np.asarray(flat[p]) for key, p, _ in reference_key_map(model)
                             if key.endswith((".running_mean", ".running_var"))}
    return result


def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference {b.shape}"
    return float(np.max(np.abs(a - b)))


def activation_errors(result: dict) -> dict[str, tuple[float, float]]:
    """For every act.* / actsub.* entry: (max |ours - ref|, allowed 1e-4 * max(1, max|ref|))."""
    fx, cap = result["fixture"], result["capture"]
    errors = {}
    for key, ref in fx.items():
        kind, _, name = key.partition(".")
        if kind not in ("act", "actsub"):
            continue
        ours = np.asarray(cap[capture_name(name)])
        if not name.endswith("transformer"):  # token arrays (B, P, N, T) compare as stored
            ref = to_channels_last(ref)
        if kind == "actsub":
            step = int(fx[f"meta.actsub_step.{name}"])
            ours = ours[(slice(None),) + (slice(None, None, step),) * (ours.ndim - 2)]
        errors[key] = (max_abs(ours, ref), 1e-4 * max(1.0, float(np.max(np.abs(ref)))))
    return errors


def running_stat_errors(result: dict) -> dict[str, tuple[float, float]]:
    """For every train_running.*.running_{mean,var}: (max |ours - ref|, allowed 1e-5 * max(1, max|ref|))."""
    errors = {}
    for key, ref in result["fixture"].items():
        if key.startswith("train_running.") and not key.endswith("num_batches_tracked"):
            ours = result["running"][key[len("train_running."):]]
            errors[key] = (max_abs(ours, ref), 1e-5 * max(1.0, float(np.max(np.abs(ref)))))
    return errors
