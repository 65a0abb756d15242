"""Table 6 migrations: LGMSNet's LMS/GMS blocks inside U-Net and TinyU-Net (paper_facts.md §5, baselines.md §4).

None of these networks exists in the reference repository; what is built here is labelled per model:

| name          | status                       | encoder stages                        | params     | paper  |
|---------------|------------------------------|---------------------------------------|------------|--------|
| unet_lms      | reconstruction (§4.1)        | conv, lms, lms, lms, lms              | 17,330,081 | 17.33M |
| tinyunet_lms  | reconstruction (§4.1)        | cmrf, lms, lms, lms                   | 690,937    | 0.69M  |
| unet_gms      | tentative candidate (§4.2)   | conv, lms, lms, gms (M = a), lms      | 19,182,113 | 19.18M |
| tinyunet_gms  | UNRESOLVED (§4.2): not built | —                                     | —          | 0.71M  |

Reconstruction rule (§4.1): every encoder stage except the first (3 input channels, not divisible by 4) becomes
LMS(a) followed by LGMSNet's 1×1 transition a→b; decoder and head unchanged. It reproduces both paper counts, and an
exhaustive search found it the only rule giving 0.69M for TinyU-Net, but the paper may have meant something else.
"+GMS" is cumulative on "+LMS" (a GMS stage is never cheaper than what it replaces, yet 19.18M < 34.53M); the U-Net
candidate swaps encoder4's LMS(256) for GMS(256→256, T:S 192:64, MLP 256). LGMSNet itself uses MLP = 2·width, which
would give 19,280,673 (19.28M), and other, less natural, mixes also land on 19.18M: treat its results as ours, not
the paper's. For TinyU-Net+GMS (0.71M) no construction was found; only arbitrary mixes hit the count, so no model is
registered. `TinyUNet(encoder_blocks=...)` builds any mix for whoever wants to try one.
"""
from __future__ import annotations

import dataclasses

from flax import nnx

from lgmsnet_jax.models.baselines.tinyunet import TinyUNet
from lgmsnet_jax.models.baselines.unet import UNet

UNET_LMS_BLOCKS = ("conv", "lms", "lms", "lms", "lms")
UNET_GMS_BLOCKS = ("conv", "lms", "lms", "gms", "lms")
TINYUNET_LMS_BLOCKS = ("cmrf", "lms", "lms", "lms")


@dataclasses.dataclass(frozen=True)
class BaselineInfo:
    """What the paper reports for a zoo model and how sure we are that ours is the same network.

    Attributes:
      paper_params_m: parameter count in the paper, millions as printed.
      params: our exact count (3 in, 1 class, default widths).
      status: "reference" (ported from the reference code), "reconstruction" (§4.1 rule, reproduces the count),
        "tentative" (one of several candidates matching the count) or "unresolved" (not built).
    """

    paper_params_m: float
    params: int | None
    status: str


# baselines.md §6; the paper truncates (34.527M -> "34.52" in Table 1, "34.53" in Table 6; 3.149M -> "3.14").
BASELINES: dict[str, BaselineInfo] = {
    "unet": BaselineInfo(34.52, 34_527_041, "reference"),
    "tinyunet": BaselineInfo(0.48, 481_105, "reference"),
    "cmunext": BaselineInfo(3.14, 3_149_185, "reference"),
    "unet_lms": BaselineInfo(17.33, 17_330_081, "reconstruction"),
    "tinyunet_lms": BaselineInfo(0.69, 690_937, "reconstruction"),
    "unet_gms": BaselineInfo(19.18, 19_182_113, "tentative"),
    "tinyunet_gms": BaselineInfo(0.71, None, "unresolved"),
}


def unet_lms(in_channels: int = 3, num_classes: int = 1, *, rngs: nnx.Rngs, **kw) -> UNet:
    """U-Net+LMS (reconstruction, baselines.md §4.1): Conv2..Conv5 → LMS(a) + transition a→b; 17,330,081 params.

    Args:
      in_channels, num_classes: input channels and output logits.
      rngs: parameter RNG streams.
      **kw: further `UNet` keywords (dims, kernels); `encoder_blocks` is fixed.

    Returns:
      The UNet module.
    """
    return UNet(in_channels, num_classes, encoder_blocks=UNET_LMS_BLOCKS, rngs=rngs, **kw)


def unet_gms(in_channels: int = 3, num_classes: int = 1, *, rngs: nnx.Rngs, gms_mlp_ratio: float = 1.0,
             **kw) -> UNet:
    """U-Net+GMS (TENTATIVE candidate, baselines.md §4.2): U-Net+LMS with Conv4's LMS → GMS(a→a, MLP a).

    19,182,113 params (paper 19.18M); `gms_mlp_ratio=2.0` is LGMSNet's MLP width (19,280,673). Input H, W must be
    multiples of 16.

    Args:
      in_channels, num_classes: input channels and output logits.
      rngs: parameter RNG streams.
      gms_mlp_ratio: GMS MLP width over the stage width.
      **kw: further `UNet` keywords (dims, kernels); `encoder_blocks` is fixed.

    Returns:
      The UNet module.
    """
    return UNet(in_channels, num_classes, encoder_blocks=UNET_GMS_BLOCKS, gms_mlp_ratio=gms_mlp_ratio, rngs=rngs,
                **kw)


def tinyunet_lms(in_channels: int = 3, num_classes: int = 1, *, rngs: nnx.Rngs, **kw) -> TinyUNet:
    """TinyU-Net+LMS (reconstruction, baselines.md §4.1): encoder2-4 CMRF → LMS(a) + transition; 690,937 params.

    Args:
      in_channels, num_classes: input channels and output logits.
      rngs: parameter RNG streams.
      **kw: further `TinyUNet` keywords (dims, kernels); `encoder_blocks` is fixed.

    Returns:
      The TinyUNet module.
    """
    return TinyUNet(in_channels, num_classes, encoder_blocks=TINYUNET_LMS_BLOCKS, rngs=rngs, **kw)
