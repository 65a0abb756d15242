"""Baseline networks of the LGMSNet comparison (U-Net, TinyU-Net, CMUNeXt) and the Table 6 migrations.

Importing this package registers them with `lgmsnet_jax.models.build_model` under the names of `BASELINES`
(all but "tinyunet_gms", which is unresolved; see `migrations.py`).
"""
from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from lgmsnet_jax.models import register_model
from lgmsnet_jax.models.baselines import migrations
from lgmsnet_jax.models.baselines.cmunext import CMUNeXt
from lgmsnet_jax.models.baselines.migrations import BASELINES, BaselineInfo
from lgmsnet_jax.models.baselines.tinyunet import CMRF, TinyUNet
from lgmsnet_jax.models.baselines.unet import UNet

__all__ = ["BASELINES", "BaselineInfo", "CMRF", "CMUNeXt", "TinyUNet", "UNet"]


def _factory(name: str, build: Callable[..., nnx.Module]) -> Callable[..., nnx.Module]:
    def factory(ndim: int, in_channels: int, num_classes: int, rngs: nnx.Rngs, **kw) -> nnx.Module:
        if ndim != 2:
            raise ValueError(f"model {name!r} is 2D only (the paper's baselines); got ndim={ndim}")
        return build(in_channels, num_classes, rngs=rngs, **kw)
    factory.__name__ = f"build_{name}"
    return factory


for _name, _build in {"unet": UNet, "tinyunet": TinyUNet, "cmunext": CMUNeXt, "unet_lms": migrations.unet_lms,
                      "unet_gms": migrations.unet_gms, "tinyunet_lms": migrations.tinyunet_lms}.items():
    register_model(_name)(_factory(_name, _build))
