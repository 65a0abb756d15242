"""U-Net baseline of the LGMSNet comparison (reference `U_Net`, baselines.md §1), with optional LGMSNet stages.

Classic Ronneberger U-Net with BN after every conv, nearest ×2 up-sampling and cat(skip, up) skips. The Table 6
"+LMS"/"+GMS" variants swap encoder stages through `encoder_blocks` (see `migrations.py`).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers
from lgmsnet_jax.models.baselines import _ops
from lgmsnet_jax.models.baselines import stages


class ConvBlock(nnx.Module):
    """Two Conv 3×3 (bias) → BN → ReLU units, 9ab + 9b² + 6b params. # ref: U_Net.py conv_block"""

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        """Args: input channels a; output channels b; rngs."""
        self.conv1 = _ops.ConvBNAct(in_ch, out_ch, 3, rngs=rngs)
        self.conv2 = _ops.ConvBNAct(out_ch, out_ch, 3, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, H, W, a) -> (N, H, W, b)."""
        return self.conv2(self.conv1(x, train), train)


class UpConvNearest(nnx.Module):
    """Nearest ×2 → Conv 3×3 (bias) → BN → ReLU, 9ab + 3b params. # ref: U_Net.py up_conv"""

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        """Args: input channels a; output channels b; rngs."""
        self.conv = _ops.ConvBNAct(in_ch, out_ch, 3, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, H, W, a) -> (N, 2H, 2W, b)."""
        return self.conv(_ops.upsample_nearest2(x), train)


class UNet(nnx.Module):
    """U-Net: 5 encoder stages, 4 nearest-up decoder stages, 1×1 head; returns raw logits.

    # ref: src/network/conv_based/U_Net.py U_Net (baselines.md §1)
    With the paper's setting (3 in, 1 class, dims (64, 128, 256, 512, 1024)) it has 34,527,041 parameters.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        *,
        dims: Sequence[int] = (64, 128, 256, 512, 1024),
        encoder_blocks: Sequence[str] = ("conv",) * 5,
        kernels: Sequence[int] = (3, 5, 7, 9),
        gms_mlp_ratio: float = 1.0,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: input channels.
          num_classes: output channels (logits).
          dims: widths of the five encoder stages; the decoder mirrors them.
          encoder_blocks: per encoder stage, "conv" (the original double conv) or an LGMSNet stage "lms" /
            "gms" (block on the stage's input width a, then the 1×1 transition a→b; `stages.encoder_stage`).
          kernels: LMS depthwise kernel group of "lms" stages.
          gms_mlp_ratio: MLP width of "gms" stages as a multiple of their width a.
          rngs: parameter RNG streams.
        """
        dims, encoder_blocks = tuple(int(d) for d in dims), tuple(encoder_blocks)
        if len(dims) != 5 or len(encoder_blocks) != 5:
            raise ValueError(f"UNet: dims and encoder_blocks need 5 entries, got dims={dims}, "
                             f"encoder_blocks={encoder_blocks}")
        ins = (in_channels,) + dims[:-1]
        self.encoders = nnx.List([
            ConvBlock(a, b, rngs=rngs) if kind == "conv"
            else stages.encoder_stage(kind, a, b, kernels=kernels, gms_mlp_ratio=gms_mlp_ratio, rngs=rngs)
            for kind, a, b in zip(encoder_blocks, ins, dims)])
        # Decoder level i (deepest first): up dims[i+1] -> dims[i], then conv_block(2·dims[i] -> dims[i]).
        self.ups = nnx.List([UpConvNearest(dims[i + 1], dims[i], rngs=rngs) for i in reversed(range(4))])
        self.decoders = nnx.List([ConvBlock(2 * dims[i], dims[i], rngs=rngs) for i in reversed(range(4))])
        self.head = layers.Conv(_ops.NDIM, dims[0], num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """Segments a batch.

        Args:
          x: (N, H, W, in_channels) float, H and W multiples of 16 (of 32 with a "gms" stage at 1/8).
          train: None uses the module mode (model.train()/eval()); True/False overrides it.

        Returns:
          (N, H, W, num_classes) logits.
        """
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else layers.max_pool2x(x), train)
            skips.append(x)
        d = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            d = dec(jnp.concatenate([skips.pop(), up(d, train)], axis=-1), train)  # cat(skip, up)
        return self.head(d)
