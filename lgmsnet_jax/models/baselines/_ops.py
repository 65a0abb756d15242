"""Small pieces shared by the baseline networks: conv→BN→act with configurable BatchNorm, ×2 up-sampling.

Built on `lgmsnet_jax.models.layers` (PyTorch-default init, PyTorch BatchNorm semantics); adds what the
baselines need beyond LGMSNet: BatchNorm eps/momentum (TinyU-Net), nearest and bicubic (A = -0.75) ×2.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers

NDIM = 2  # every baseline of the comparison is 2D (baselines.md header)


class BatchNorm(layers.BatchNorm):
    """`layers.BatchNorm` (PyTorch running-stat semantics) with a configurable epsilon.

    TinyU-Net's `Conv` unit uses eps 1e-3 and PyTorch momentum 0.03 (baselines.md §2.1); `layers.BatchNorm` fixes
    eps at 1e-5, so the forward is written out here with `self.eps` (and explicit broadcasting).
    """

    def __init__(self, num_features: int, *, eps: float = layers.EPS, momentum: float = 0.1,
                 use_running_average: bool = False):
        """Args: channels; epsilon; PyTorch momentum; initial train/eval flag."""
        super().__init__(num_features, momentum=momentum, use_running_average=use_running_average)
        self.eps = eps

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """Normalise (N, *spatial, C); `train` overrides the module flag for this call."""
        use_batch = (not self.use_running_average) if train is None else train
        xf = x.astype(jnp.float32)
        if use_batch:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - _bcast(mean, x.ndim)), axis=axes)
            n = math.prod(x.shape[:-1])
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * mean
            self.var[...] = (1.0 - m) * self.var[...] + m * var * (n / max(n - 1, 1))  # unbiased, as PyTorch
        else:
            mean, var = self.mean[...], self.var[...]
        scale = self.scale[...] * jax.lax.rsqrt(var + self.eps)
        y = (xf - _bcast(mean, x.ndim)) * _bcast(scale, x.ndim) + _bcast(self.bias[...], x.ndim)
        return y.astype(x.dtype)


def _bcast(v: jax.Array, ndim: int) -> jax.Array:
    """(C,) -> (1, ..., 1, C) so that broadcasting is explicit (tests run with rank promotion 'raise')."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


class ConvBNAct(nnx.Module):
    """Conv k×k (stride 1, pad k//2) → BatchNorm → activation, with BatchNorm eps/momentum as arguments."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, *, act: str = "relu", groups: int = 1,
                 bias: bool = True, bn_eps: float = layers.EPS, bn_momentum: float = 0.1, rngs: nnx.Rngs):
        """Builds the unit.

        Args:
          in_ch: input channels.
          out_ch: output channels.
          kernel: odd kernel size.
          act: "relu", "gelu" (exact), "silu" or "none".
          groups: conv feature groups (in_ch for depthwise).
          bias: conv bias.
          bn_eps: BatchNorm epsilon.
          bn_momentum: BatchNorm momentum in PyTorch convention.
          rngs: parameter RNG streams.
        """
        if act not in layers.ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {tuple(layers.ACTIVATIONS)}")
        self.conv = layers.Conv(NDIM, in_ch, out_ch, kernel, use_bias=bias, groups=groups, rngs=rngs)
        self.norm = BatchNorm(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = act

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, H, W, in_ch) -> (N, H, W, out_ch)."""
        return layers.ACTIVATIONS[self.act](self.norm(self.conv(x), train))


def upsample_nearest2(x: jax.Array) -> jax.Array:
    """Nearest ×2 (PyTorch `Upsample(scale_factor=2)`): out[2i+di, 2j+dj] = x[i, j]; (N,H,W,C)->(N,2H,2W,C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# PyTorch bicubic (A = -0.75) taps for an exact ×2 (baselines.md §2.4): even outputs read x[i-2..i+1],
# odd outputs read x[i-1..i+2]. jax.image 'cubic' uses A = -0.5 and other edge handling, so it is not used.
_BICUBIC_EVEN = ((-2, -0.03515625), (-1, 0.26171875), (0, 0.87890625), (1, -0.10546875))
_BICUBIC_ODD = ((-1, -0.10546875), (0, 0.87890625), (1, 0.26171875), (2, -0.03515625))


def _bicubic2_axis(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    xp = jnp.pad(x, pad, mode="edge")  # PyTorch clamps tap indices to [0, n-1]

    def taps(table) -> jax.Array:
        return sum(w * jax.lax.slice_in_dim(xp, 2 + o, 2 + o + n, axis=axis) for o, w in table)

    out = jnp.stack([taps(_BICUBIC_EVEN), taps(_BICUBIC_ODD)], axis=axis + 1)  # interleave even/odd outputs
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)


def upsample_bicubic2(x: jax.Array) -> jax.Array:
    """Bicubic ×2 with PyTorch semantics (A = -0.75, align_corners=False, replicate edges).

    Args:
      x: (N, H, W, C) float.

    Returns:
      (N, 2H, 2W, C) in x.dtype, applied separably along H then W.
    """
    return _bicubic2_axis(_bicubic2_axis(x, 1), 2)
