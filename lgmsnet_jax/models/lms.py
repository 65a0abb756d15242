"""The LMS block (local multi-scale depthwise convolutions) and the encoder stage built around it.

Dimension-generic: `ndim` 2 or 3 picks 2D/3D kernels; parity with the reference is spec §2.2 / §3.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers

LMS_DEPTHWISE_IMPLS = layers.DEPTHWISE_IMPLS + ("grouped_padded",)
# Impls that run the block's chunks as one depthwise conv over kernels zero-padded to the largest size, and which
# `depthwise_conv` impl that conv uses.
PADDED_IMPLS = {"grouped_padded": "xla", "fft": "fft"}


def _pad_kernel(kernel: jax.Array, size: int) -> jax.Array:
    """Zero-pad a (*k, 1, c) depthwise kernel symmetrically to (*size, 1, c); same result with padding size//2."""
    ndim = kernel.ndim - 2
    p = (size - kernel.shape[0]) // 2
    return jnp.pad(kernel, [(p, p)] * ndim + [(0, 0), (0, 0)])


class LMSBlock(nnx.Module):
    """Lightweight multi-scale block: per-chunk depthwise convs, inner residual, GN+GELU, squeeze/expand, residual.

    # ref: network/CMUNeXt_new.py CMUNeXtBlock_MK_resiual2 (spec §2.2)
    a = GELU(GN4(cat(dw_k1(x_1), ..., dw_km(x_m)) + x));  out = SiLU(N(conv3(SiLU(N(conv1x1(a)))))) + x
    with m = len(kernels) contiguous chunks of C/m channels; the squeeze width is C/4 (GroupNorm has 4 groups)
    whatever m is, as in the reference (m = 4 there).
    """

    def __init__(self, ndim: int, channels: int, *, kernels: Sequence[int] = (3, 5, 7, 9), norm: str = "batch",
                 depthwise_impl: str = "xla", rngs: nnx.Rngs):
        """Args:
          ndim: 2 or 3.
          channels: C (kept); must be divisible by 4 and by len(kernels).
          kernels: odd depthwise kernel sizes, one per contiguous channel chunk.
          norm: 'batch' (2D) or 'instance' (3D) for the two conv+norm steps.
          depthwise_impl: one of layers.DEPTHWISE_IMPLS (per-chunk `depthwise_conv`), or 'grouped_padded' (all
            chunks in one depthwise conv whose kernels are zero-padded to the largest size). 'fft' also runs all
            chunks at once, padded: its cost does not depend on the kernel size.
          rngs: parameter init keys.
        """
        kernels = tuple(int(k) for k in kernels)
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"LMS kernels must be odd positive sizes, got {kernels}")
        if channels % 4:
            raise ValueError(f"LMS block needs channels divisible by 4 (GroupNorm(4), squeeze C/4); got {channels}")
        if channels % len(kernels):
            raise ValueError(f"LMS block: {channels} channels not divisible by the {len(kernels)} kernels {kernels}")
        if depthwise_impl not in LMS_DEPTHWISE_IMPLS:
            raise ValueError(f"unknown depthwise_impl {depthwise_impl!r}; expected one of {LMS_DEPTHWISE_IMPLS}")
        chunk = channels // len(kernels)
        self.kernels = kernels
        self.chunk = chunk
        self.depthwise_impl = depthwise_impl
        per_chunk_impl = "xla" if depthwise_impl in PADDED_IMPLS else depthwise_impl
        self.dwconvs = nnx.List([
            layers.DepthwiseConv(ndim, chunk, k, use_bias=True, impl=per_chunk_impl, rngs=rngs) for k in kernels])
        self.norm = layers.GroupNorm(4, channels)
        squeeze = channels // 4
        self.squeeze = layers.ConvNormAct(ndim, channels, squeeze, 1, use_bias=False, norm=norm, act="silu",
                                          rngs=rngs)
        self.expand = layers.ConvNormAct(ndim, squeeze, channels, 3, use_bias=False, norm=norm, act="silu",
                                         rngs=rngs)

    def _multiscale(self, x: jax.Array) -> jax.Array:
        if self.depthwise_impl in PADDED_IMPLS:
            # One depthwise conv instead of len(kernels): fewer, larger kernels (zero taps cost FLOPs, not accuracy;
            # with 'fft' they cost nothing).
            size = max(self.kernels)
            kernel = jnp.concatenate([_pad_kernel(dw.kernel[...], size) for dw in self.dwconvs], axis=-1)
            bias = jnp.concatenate([dw.bias[...] for dw in self.dwconvs])
            return layers.depthwise_conv(x, kernel, bias, impl=PADDED_IMPLS[self.depthwise_impl])
        chunks = layers.split_channels(x, [self.chunk] * len(self.kernels))
        return jnp.concatenate([dw(c) for dw, c in zip(self.dwconvs, chunks)], axis=-1)

    def __call__(self, x: jax.Array, train: bool | None = None, capture: dict | None = None) -> jax.Array:
        """(N, *spatial, C) -> (N, *spatial, C). `capture` (dict or None) receives 'norm_act'."""
        a = layers.gelu(self.norm(self._multiscale(x) + x))
        if capture is not None:
            capture["norm_act"] = a
        return self.expand(self.squeeze(a, train), train) + x


class EncoderStage(nnx.Module):
    """LMS block on the input width, then the 1x1 conv+norm+SiLU transition to the output width (spec §2.3)."""

    def __init__(self, ndim: int, in_features: int, out_features: int, *, kernels: Sequence[int],
                 norm: str, depthwise_impl: str, rngs: nnx.Rngs):
        self.lms = LMSBlock(ndim, in_features, kernels=kernels, norm=norm, depthwise_impl=depthwise_impl, rngs=rngs)
        self.transition = layers.ConvNormAct(ndim, in_features, out_features, 1, use_bias=False, norm=norm,
                                             act="silu", rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None, capture: dict | None = None) -> jax.Array:
        """(N, *spatial, C_in) -> (N, *spatial, C_out). `capture` receives 'lms', 'lms.norm_act'."""
        sub = {} if capture is not None else None
        y = self.lms(x, train, sub)
        if capture is not None:
            capture["lms"] = y
            capture["lms.norm_act"] = sub["norm_act"]
        return self.transition(y, train)
