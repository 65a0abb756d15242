"""Model zoo: LGMSNet (2D/3D) and a name registry; `build_model` builds any registered model quickly.

`build_model` traces the constructor abstractly (nnx.eval_shape) and fills every variable on the host with numpy,
using PyTorch's default init, because eager NNX init compiles one RNG kernel per parameter shape (~0.5-1 s each).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lgmsnet_jax.models.gms import GMSBlock, TransformerLayer
from lgmsnet_jax.models.layers import depthwise_conv
from lgmsnet_jax.models.lgmsnet import LGMSNet
from lgmsnet_jax.models.lms import LMSBlock

__all__ = ["LGMSNet", "LMSBlock", "GMSBlock", "TransformerLayer", "build_model", "register_model",
           "registered_models", "count_params", "depthwise_conv", "host_init"]



def __getattr__(name: str):
    # Lazy, so `python -m lgmsnet_jax.models.stats` does not find its module already imported by the package.
    if name == "count_params":
        from lgmsnet_jax.models.stats import count_params  # noqa: PLC0415
        return count_params
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Factory = Callable[..., nnx.Module]
_REGISTRY: dict[str, Factory] = {}


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering `factory(ndim, in_channels, num_classes, rngs, **kw) -> nnx.Module` under `name`."""
    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return deco


def registered_models() -> tuple[str, ...]:
    """Names accepted by `build_model`."""
    return tuple(sorted(_REGISTRY))


@register_model("lgmsnet")
def _lgmsnet(ndim: int, in_channels: int, num_classes: int, rngs: nnx.Rngs, **kw) -> LGMSNet:
    return LGMSNet(ndim, in_channels, num_classes, rngs=rngs, **kw)


def _fan_in(kernel_shape: tuple[int, ...]) -> int:
    # conv kernels (*k, I/g, O) and dense kernels (I, O): PyTorch's fan_in is everything but the last axis.
    return max(1, math.prod(kernel_shape[:-1]))


def host_init(abstract_state: nnx.State, seed: int) -> nnx.State:
    """Fill an abstract state with PyTorch default-init values on the host (spec §4.7), deterministic in `seed`.

    Variables are recognised by name: `kernel` ~ U(-b, b), b = 1/sqrt(fan_in); a `bias` next to a `kernel` the same,
    otherwise (norms) 0; `scale` 1; BatchStat `mean` 0 and `var` 1; RNG state from `seed`.

    Args:
      abstract_state: state of a module built under nnx.eval_shape (leaves are ShapeDtypeStructs).
      seed: numpy Generator seed; draws go in sorted path order.

    Returns:
      The same structure with concrete arrays.
    """
    flat = sorted(nnx.to_flat_state(abstract_state), key=lambda kv: tuple(str(p) for p in kv[0]))
    kernels = {path[:-1]: var.get_value().shape for path, var in flat if path[-1] == "kernel"}
    rng = np.random.default_rng(seed)
    out = []
    for i, (path, var) in enumerate(flat):
        abstract = var.get_value()
        shape, dtype, name = abstract.shape, abstract.dtype, path[-1]
        where = "/".join(str(p) for p in path)
        if isinstance(var, nnx.RngKey):
            value = jax.random.fold_in(jax.random.key(seed), i)
        elif isinstance(var, nnx.RngCount):
            value = jnp.zeros(shape, dtype)
        elif name == "kernel" or (name == "bias" and path[:-1] in kernels):
            bound = 1.0 / math.sqrt(_fan_in(kernels[path[:-1]]))
            value = rng.uniform(-bound, bound, size=shape).astype(dtype)
        elif name in ("scale", "var"):
            value = np.ones(shape, dtype)
        elif name in ("bias", "mean"):
            value = np.zeros(shape, dtype)
        else:
            raise ValueError(f"host_init does not know how to initialise variable {where!r} "
                             f"({type(var).__name__} {shape}); name it kernel/bias/scale/mean/var")
        out.append((path, var.replace(jnp.asarray(value))))
    return nnx.from_flat_state(out)


def build_model(name: str = "lgmsnet", *, ndim: int = 2, in_channels: int = 3, num_classes: int = 1,
                seed: int = 0, **kwargs) -> nnx.Module:
    """Build a registered model with PyTorch-default init values, fast (abstract trace + host fill).

    Args:
      name: registry name ("lgmsnet" or a name added with `register_model`).
      ndim: 2 or 3.
      in_channels, num_classes: input channels and output logits.
      seed: init seed (numpy); the same seed gives identical parameters.
      **kwargs: constructor keywords of the model (for LGMSNet: dims, kernels, gms_splits, dtype, remat, ...).

    Returns:
      The model in train mode (as a fresh PyTorch module); call `.eval()` for inference.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {registered_models()}")
    factory = _REGISTRY[name]
    abstract = nnx.eval_shape(lambda: factory(ndim=ndim, in_channels=in_channels, num_classes=num_classes,
                                              rngs=nnx.Rngs(seed), **kwargs))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, host_init(state, seed))


# Registers the baseline zoo (U-Net, TinyU-Net, CMUNeXt and the Table 6 migrations) with build_model.
from lgmsnet_jax.models import baselines  # noqa: E402,F401
