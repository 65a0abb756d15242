"""LGMSNet encoder stages for other networks: block(a) then the 1×1 transition a→b (Table 6, baselines.md §4).

"lms" is exactly LGMSNet's encoder1-3 stage (`lms.EncoderStage`); "gms" puts a GMS block (a→a, T:S = 3:1) where
the LMS block would be. How these stages are placed in U-Net/TinyU-Net is a reconstruction: see `migrations.py`.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from lgmsnet_jax.models import layers
from lgmsnet_jax.models.gms import GMSBlock
from lgmsnet_jax.models.lms import EncoderStage

STAGE_KINDS = ("lms", "gms")
_NDIM = 2


class GMSStage(nnx.Module):
    """GMS(a→a; T = 3a/4, S = a/4; MLP M) then Conv 1×1 (a→b, no bias) → BN → SiLU."""

    def __init__(self, in_ch: int, out_ch: int, *, mlp_dim: int, rngs: nnx.Rngs):
        """Args: stage input width a (divisible by 4); output width b; transformer MLP width M; rngs."""
        if in_ch % 4:
            raise ValueError(f"GMS stage needs its input width divisible by 4 (T:S = 3:1), got {in_ch}")
        self.gms = GMSBlock(_NDIM, in_ch, in_ch, split=(3 * in_ch // 4, in_ch // 4), mlp_dim=mlp_dim, rngs=rngs)
        self.transition = layers.ConvNormAct(_NDIM, in_ch, out_ch, 1, use_bias=False, norm="batch", act="silu",
                                             rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, H, W, a) -> (N, H, W, b); H, W even (2×2 sub-lattice tokens)."""
        return self.transition(self.gms(x, train), train)


def encoder_stage(kind: str, in_ch: int, out_ch: int, *, kernels: Sequence[int] = (3, 5, 7, 9),
                  gms_mlp_ratio: float = 1.0, rngs: nnx.Rngs) -> nnx.Module:
    """Builds one LGMSNet-style encoder stage a→b.

    Args:
      kind: "lms" (LMS(a) + transition, params 2.5a² + 46.5a + ab + 2b with kernels (3, 5, 7, 9)) or "gms"
        (GMS(a→a) + transition).
      in_ch: a, divisible by 4 (and by len(kernels) for "lms").
      out_ch: b.
      kernels: LMS depthwise kernel group.
      gms_mlp_ratio: GMS MLP width as a multiple of a (1.0 is the U-Net+GMS candidate of baselines.md §4.2).
      rngs: parameter RNG streams.

    Returns:
      A module called as `stage(x, train)`: (N, H, W, a) -> (N, H, W, b).
    """
    if kind == "lms":
        return EncoderStage(_NDIM, in_ch, out_ch, kernels=kernels, norm="batch", depthwise_impl="xla", rngs=rngs)
    if kind == "gms":
        return GMSStage(in_ch, out_ch, mlp_dim=int(round(gms_mlp_ratio * in_ch)), rngs=rngs)
    raise ValueError(f"unknown encoder stage kind {kind!r}; expected one of {STAGE_KINDS} (or the network's own)")
