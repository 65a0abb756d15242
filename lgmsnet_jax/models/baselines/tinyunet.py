"""TinyU-Net baseline (MICCAI 2024; reference `network/Tinyunet.py::TinyUNet`, baselines.md §2).

CMRF blocks (cascaded multi-receptive-field depthwise chain), bicubic ×2 decoder, no bottleneck stage. The Table 6
"+LMS" variant swaps encoder CMRF blocks through `encoder_blocks` (see `migrations.py`).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers
from lgmsnet_jax.models.baselines import _ops
from lgmsnet_jax.models.baselines import stages

# TinyU-Net's `Conv` unit: no conv bias, BatchNorm(eps=1e-3, momentum=0.03) (baselines.md §2.1).
_UNIT = dict(bias=False, bn_eps=1e-3, bn_momentum=0.03)


class CMRF(nnx.Module):
    """Cascaded multi-receptive-field block, N = 8 groups, e = 0.5. # ref: Tinyunet.py CMRF

    pw 1×1 (c1 → c2/8) → interleaved split into E, O (c2/16 each) → chain of 7 depthwise 3×3 units starting
    from O → cat[E + O, y1..y7] (c2/2) → pw 1×1 (c2/2 → c2). Residual only if c1 == c2 (never in TinyU-Net).
    """

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        """Args: input channels c1; output channels c2 (divisible by 16); rngs."""
        if out_ch % 16:
            raise ValueError(f"CMRF: out_ch must be divisible by 16 (8 groups of even width), got {out_ch}")
        q, c = out_ch // 8, out_ch // 16
        self.pwconv1 = _ops.ConvBNAct(in_ch, q, 1, act="gelu", **_UNIT, rngs=rngs)
        self.chain = nnx.List([_ops.ConvBNAct(c, c, 3, act="none", groups=c, **_UNIT, rngs=rngs)
                               for _ in range(7)])
        self.pwconv2 = _ops.ConvBNAct(out_ch // 2, out_ch, 1, act="gelu", **_UNIT, rngs=rngs)
        self.residual = in_ch == out_ch

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, H, W, c1) -> (N, H, W, c2)."""
        z = self.pwconv1(x, train)
        even, odd = z[..., 0::2], z[..., 1::2]  # the reference splits channels interleaved, not in halves
        parts, y = [even + odd], odd
        for unit in self.chain:  # cascade: each unit reads the previous unit's output
            y = unit(y, train)
            parts.append(y)
        out = self.pwconv2(jnp.concatenate(parts, axis=-1), train)
        return out + x if self.residual else out


class TinyUNet(nnx.Module):
    """TinyU-Net: 4 CMRF encoders (skip taken before pooling), 4 bicubic-up CMRF decoders, 1×1 head; raw logits.

    # ref: network/Tinyunet.py TinyUNet (baselines.md §2)
    With 3 in / 1 class and dims (64, 128, 256, 512): 481,105 parameters.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        *,
        dims: Sequence[int] = (64, 128, 256, 512),
        encoder_blocks: Sequence[str] = ("cmrf",) * 4,
        kernels: Sequence[int] = (3, 5, 7, 9),
        gms_mlp_ratio: float = 1.0,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: input channels.
          num_classes: output channels (logits).
          dims: widths of the four encoder stages (multiples of 16).
          encoder_blocks: per encoder stage, "cmrf" (original) or an LGMSNet stage "lms" / "gms"
            (`stages.encoder_stage`: block on the input width a, then the 1×1 transition a→b).
          kernels: LMS depthwise kernel group of "lms" stages.
          gms_mlp_ratio: MLP width of "gms" stages as a multiple of their width a.
          rngs: parameter RNG streams.
        """
        dims, encoder_blocks = tuple(int(d) for d in dims), tuple(encoder_blocks)
        if len(dims) != 4 or len(encoder_blocks) != 4:
            raise ValueError(f"TinyUNet: dims and encoder_blocks need 4 entries, got dims={dims}, "
                             f"encoder_blocks={encoder_blocks}")
        ins = (in_channels,) + dims[:-1]
        self.encoders = nnx.List([
            CMRF(a, b, rngs=rngs) if kind == "cmrf"
            else stages.encoder_stage(kind, a, b, kernels=kernels, gms_mlp_ratio=gms_mlp_ratio, rngs=rngs)
            for kind, a, b in zip(encoder_blocks, ins, dims)])
        # decoder4 reads encoder4's pooled output up-sampled (dims[3]) plus its skip (dims[3]); decoder k < 4 reads
        # the previous decoder's output (dims[k]) plus skip k-1 (dims[k-1]).
        dec_in = [2 * dims[3]] + [dims[i + 1] + dims[i] for i in reversed(range(3))]
        dec_out = [dims[3]] + [dims[i] for i in reversed(range(3))]
        self.decoders = nnx.List([CMRF(a, b, rngs=rngs) for a, b in zip(dec_in, dec_out)])
        self.head = layers.Conv(_ops.NDIM, dims[0], num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """Segments a batch.

        Args:
          x: (N, H, W, in_channels) float, H and W multiples of 16.
          train: None uses the module mode (model.train()/eval()); True/False overrides it.

        Returns:
          (N, H, W, num_classes) logits.
        """
        skips = []
        for enc in self.encoders:
            s = enc(x, train)
            skips.append(s)
            x = layers.max_pool2x(s)
        for dec in self.decoders:
            x = dec(jnp.concatenate([_ops.upsample_bicubic2(x), skips.pop()], axis=-1), train)  # cat(up, skip)
        return self.head(x)
