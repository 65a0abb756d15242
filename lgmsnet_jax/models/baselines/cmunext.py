"""CMUNeXt baseline (reference `src/network/conv_based/CMUNeXt.py::cmunext()`, baselines.md §3).

Large-kernel depthwise "ConvMixer" encoder blocks; its up and fusion blocks are LGMSNet's (`lgmsnet.UpBlock`,
`lgmsnet.FusionBlock`), as in the reference.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers
from lgmsnet_jax.models.baselines import _ops
from lgmsnet_jax.models.lgmsnet import FusionBlock, UpBlock


class CMUNeXtSubBlock(nnx.Module):
    """One ConvMixer repetition on C channels, k²C + 8C² + 18C params. # ref: CMUNeXt.py CMUNeXtBlock.block[r]

    x ← x + BN(GELU(dw k×k(x))); x ← BN(GELU(1×1 C→4C)(x)); x ← BN(GELU(1×1 4C→C)(x)). No outer residual;
    activation before BatchNorm throughout, all convs with bias.
    """

    def __init__(self, ch: int, kernel: int, *, rngs: nnx.Rngs):
        """Args: channels C; odd depthwise kernel size k; rngs."""
        kw = dict(use_bias=True, norm="batch", act="gelu", act_first=True, rngs=rngs)
        self.depthwise = layers.ConvNormAct(_ops.NDIM, ch, ch, kernel, groups=ch, **kw)
        self.expand = layers.ConvNormAct(_ops.NDIM, ch, 4 * ch, 1, **kw)
        self.reduce = layers.ConvNormAct(_ops.NDIM, 4 * ch, ch, 1, **kw)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, H, W, C) -> (N, H, W, C)."""
        x = x + self.depthwise(x, train)
        return self.reduce(self.expand(x, train), train)


class CMUNeXtBlock(nnx.Module):
    """`depth` sub-blocks on a channels, then conv_block a→b (Conv 3×3 bias → BN → ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, *, depth: int, kernel: int, rngs: nnx.Rngs):
        """Args: input channels a; output channels b; number of sub-blocks; depthwise kernel size; rngs."""
        self.blocks = nnx.List([CMUNeXtSubBlock(in_ch, kernel, rngs=rngs) for _ in range(depth)])
        self.up = _ops.ConvBNAct(in_ch, out_ch, 3, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, H, W, a) -> (N, H, W, b)."""
        for blk in self.blocks:
            x = blk(x, train)
        return self.up(x, train)


class CMUNeXt(nnx.Module):
    """CMUNeXt: stem, 5 encoder blocks, 4 bilinear-up + fusion decoder levels, 1×1 head; returns raw logits.

    # ref: src/network/conv_based/CMUNeXt.py CMUNeXt (baselines.md §3)
    The default configuration has 3,149,185 parameters with 3 in / 1 class (paper "3.14M", truncated).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        *,
        dims: Sequence[int] = (16, 32, 128, 160, 256),
        depths: Sequence[int] = (1, 1, 1, 3, 1),
        kernels: Sequence[int] = (3, 3, 7, 7, 7),
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: input channels.
          num_classes: output channels (logits).
          dims: encoder widths (5).
          depths: sub-blocks per encoder block (5).
          kernels: depthwise kernel size per encoder block (5, odd).
          rngs: parameter RNG streams.
        """
        dims, depths, kernels = tuple(dims), tuple(depths), tuple(kernels)
        if not len(dims) == len(depths) == len(kernels) == 5:
            raise ValueError(f"CMUNeXt: dims, depths, kernels need 5 entries, got {dims}, {depths}, {kernels}")
        self.stem = _ops.ConvBNAct(in_channels, dims[0], 3, rngs=rngs)
        ins = (dims[0],) + dims[:-1]
        self.encoders = nnx.List([CMUNeXtBlock(a, b, depth=d, kernel=k, rngs=rngs)
                                  for a, b, d, k in zip(ins, dims, depths, kernels)])
        self.ups = nnx.List([UpBlock(_ops.NDIM, dims[i + 1], dims[i], norm="batch", rngs=rngs)
                             for i in reversed(range(4))])
        self.decoders = nnx.List([FusionBlock(_ops.NDIM, 2 * dims[i], dims[i], norm="batch", rngs=rngs)
                                  for i in reversed(range(4))])
        self.head = layers.Conv(_ops.NDIM, dims[0], num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """Segments a batch.

        Args:
          x: (N, H, W, in_channels) float, H and W multiples of 16.
          train: None uses the module mode (model.train()/eval()); True/False overrides it.

        Returns:
          (N, H, W, num_classes) logits.
        """
        x = self.stem(x, train)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else layers.max_pool2x(x), train)
            skips.append(x)
        d = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            d = dec(jnp.concatenate([skips.pop(), up(d, train)], axis=-1), train)  # cat(skip, up)
        return self.head(d)
