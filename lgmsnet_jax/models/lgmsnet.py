"""LGMSNet (2D and 3D from the same modules): a 5-level U-Net with LMS encoder blocks and GMS transformer blocks.

`ndim` picks 2D (NHWC, BatchNorm) or 3D (NDHWC, InstanceNorm where 2D has BatchNorm); spec §1-§3.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers
from lgmsnet_jax.models.gms import ATTENTION_IMPLS, GMSBlock
from lgmsnet_jax.models.lms import LMS_DEPTHWISE_IMPLS, PADDED_IMPLS, EncoderStage

NUM_POOLS = 4  # 5 resolution levels; the topology is fixed, widths are free


class UpBlock(nnx.Module):
    """x2 bi/trilinear upsampling -> conv3 (bias) -> norm -> ReLU. # ref: up_conv (spec §2.5)"""

    def __init__(self, ndim: int, in_features: int, out_features: int, *, norm: str, rngs: nnx.Rngs):
        self.conv = layers.ConvNormAct(ndim, in_features, out_features, 3, use_bias=True, norm=norm, act="relu",
                                       rngs=rngs)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, *s, C_in) -> (N, *2s, C_out)."""
        return self.conv(layers.upsample2x(x), train)


class FusionBlock(nnx.Module):
    """Skip fusion: conv3 (2 groups) -> GELU -> N -> conv1 (x2 width) -> GELU -> N -> conv1 -> GELU -> N.

    # ref: fusion_conv (spec §2.6). Activation *before* the norm; the 2-group conv keeps the skip half and the
    upsampled half apart until the first 1x1.
    """

    def __init__(self, ndim: int, in_features: int, out_features: int, *, norm: str, rngs: nnx.Rngs):
        kw = dict(use_bias=True, norm=norm, act="gelu", act_first=True, rngs=rngs)
        self.conv1 = layers.ConvNormAct(ndim, in_features, in_features, 3, groups=2, **kw)
        self.conv2 = layers.ConvNormAct(ndim, in_features, 4 * out_features, 1, **kw)
        self.conv3 = layers.ConvNormAct(ndim, 4 * out_features, out_features, 1, **kw)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, *s, C_in) -> (N, *s, C_out)."""
        return self.conv3(self.conv2(self.conv1(x, train), train), train)


class LGMSNet(nnx.Module):
    """LGMSNet segmentation network; returns raw logits (no sigmoid/softmax).

    # ref: network/CMUNeXt_new.py MKtinyvit4_CT (2D), network_3d/CMUNeXtNew3d.py MKtinyvit4_CT3D (3D), spec §1-§3.
    Defaults reproduce the reference exactly: 2,321,393 params (2D, 3 in, 1 class), 6,193,742 (3D, 1 in, 14).
    """

    def __init__(self, ndim: int = 2, in_channels: int = 3, num_classes: int = 1, *,
                 dims: Sequence[int] = (16, 32, 64, 128, 128), kernels: Sequence[int] = (3, 5, 7, 9),
                 gms_splits: Sequence[Sequence[int]] = ((96, 32), (96, 32), (96, 32), (48, 16)),
                 mlp_dims: Sequence[int] = (256, 256, 256, 128), num_heads: int = 4, head_dim: int = 8,
                 patch_size: int = 2, dtype: jnp.dtype = jnp.float32, remat: bool = False,
                 depthwise_impl: str = "xla", attention_impl: str = "xla", rngs: nnx.Rngs):
        """Args:
          ndim: 2 (NHWC) or 3 (NDHWC).
          in_channels, num_classes: input channels C_in and output logits K.
          dims: widths of stem/encoder1, encoder2, encoder3, encoder4, encoder5 (5 entries).
          kernels: LMS depthwise kernel group (one kernel per contiguous channel chunk).
          gms_splits: (transformer, conv) widths of the GMS blocks encoder4, encoder5, decoder5, decoder4; each sums to
            that block's width (dims[3], dims[4], dims[3], dims[2]).
          mlp_dims: FFN widths of the same 4 GMS blocks.
          num_heads, head_dim, patch_size: attention heads/width and the sparse-token sub-lattice stride.
          dtype: compute dtype (params stay float32; norm statistics and the stem in float32, see __call__).
          remat: rematerialise each stage in the backward pass (jax.checkpoint) to save activation memory.
          depthwise_impl: one of lms.LMS_DEPTHWISE_IMPLS ('xla', 'shift_add', 'tiled3/4/5', 'dense',
            'fft', 'grouped_padded'), see layers.depthwise_conv.
          attention_impl: 'xla' | 'dot_product' | 'cudnn', see gms.TransformerLayer.
          rngs: parameter init keys (build_model skips this init and fills on the host).
        """
        dims, kernels = tuple(int(d) for d in dims), tuple(int(k) for k in kernels)
        splits = tuple(tuple(int(v) for v in s) for s in gms_splits)
        mlp_dims = tuple(int(m) for m in mlp_dims)
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if len(dims) != 5 or min(dims) < 1:
            raise ValueError(f"dims must be 5 positive widths (stem/enc1, enc2, enc3, enc4, enc5), got {dims}")
        if len(splits) != 4 or any(len(s) != 2 for s in splits):
            raise ValueError(f"gms_splits must be 4 (transformer, conv) pairs, got {gms_splits}")
        if len(mlp_dims) != 4:
            raise ValueError(f"mlp_dims must have 4 entries (one per GMS block), got {mlp_dims}")
        widths = (dims[3], dims[4], dims[3], dims[2])
        for name, split, width in zip(("encoder4", "encoder5", "decoder5", "decoder4"), splits, widths):
            if sum(split) != width or min(split) < 0:
                raise ValueError(f"gms_splits for {name} = {split} must sum to its width {width} (dims={dims})")
        if depthwise_impl not in LMS_DEPTHWISE_IMPLS:
            raise ValueError(f"unknown depthwise_impl {depthwise_impl!r}; expected one of {LMS_DEPTHWISE_IMPLS}")
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention_impl {attention_impl!r}; expected one of {ATTENTION_IMPLS}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")

        self.ndim, self.in_channels, self.num_classes = ndim, in_channels, num_classes
        self.dtype, self.remat, self.patch_size = jnp.dtype(dtype), remat, patch_size
        # 3D: every BatchNorm becomes affine-free InstanceNorm except the GMS conv branch (spec §3.2).
        norm = "batch" if ndim == 2 else "instance"
        dw = depthwise_impl
        gms_dw = "xla" if dw in PADDED_IMPLS else dw  # the GMS block's depthwise convs are small and low-res
        gkw = dict(num_heads=num_heads, head_dim=head_dim, patch_size=patch_size, norm=norm,
                   depthwise_impl=gms_dw, attention_impl=attention_impl, rngs=rngs)
        self.stem = layers.ConvNormAct(ndim, in_channels, dims[0], 3, use_bias=True, norm=norm, act="relu",
                                       rngs=rngs)
        ekw = dict(kernels=kernels, norm=norm, depthwise_impl=dw, rngs=rngs)
        self.encoder1 = EncoderStage(ndim, dims[0], dims[0], **ekw)
        self.encoder2 = EncoderStage(ndim, dims[0], dims[1], **ekw)
        self.encoder3 = EncoderStage(ndim, dims[1], dims[2], **ekw)
        self.encoder4 = GMSBlock(ndim, dims[2], dims[3], split=splits[0], mlp_dim=mlp_dims[0], **gkw)
        self.encoder5 = GMSBlock(ndim, dims[3], dims[4], split=splits[1], mlp_dim=mlp_dims[1], **gkw)
        self.up5 = UpBlock(ndim, dims[4], dims[3], norm=norm, rngs=rngs)
        self.decoder5 = GMSBlock(ndim, 2 * dims[3], dims[3], split=splits[2], mlp_dim=mlp_dims[2], **gkw)
        self.up4 = UpBlock(ndim, dims[3], dims[2], norm=norm, rngs=rngs)
        self.fusion4 = FusionBlock(ndim, 2 * dims[2], dims[2], norm=norm, rngs=rngs)
        self.decoder4 = GMSBlock(ndim, dims[2], dims[2], split=splits[3], mlp_dim=mlp_dims[3], **gkw)
        self.up3 = UpBlock(ndim, dims[2], dims[1], norm=norm, rngs=rngs)
        self.decoder3 = FusionBlock(ndim, 2 * dims[1], dims[1], norm=norm, rngs=rngs)
        self.up2 = UpBlock(ndim, dims[1], dims[0], norm=norm, rngs=rngs)
        self.decoder2 = FusionBlock(ndim, 2 * dims[0], dims[0], norm=norm, rngs=rngs)
        self.head = layers.Conv(ndim, dims[0], num_classes, 1, use_bias=True, rngs=rngs)

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this: 2**pools, times the token patch at the bottleneck."""
        return 2 ** NUM_POOLS * self.patch_size

    def _check_input(self, x: jax.Array) -> None:
        expected = "(N, D, H, W, C)" if self.ndim == 3 else "(N, H, W, C)"
        if x.ndim != self.ndim + 2:
            raise ValueError(f"LGMSNet ({self.ndim}D) expects {expected} input, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"LGMSNet expects {self.in_channels} input channels (last axis), got shape "
                             f"{tuple(x.shape)}")
        m = self.size_multiple
        if any(s % m or s == 0 for s in x.shape[1:-1]):
            raise ValueError(f"LGMSNet spatial sizes must be positive multiples of {m} (2^{NUM_POOLS} poolings x "
                             f"patch {self.patch_size}), got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"LGMSNet expects a floating-point input, got dtype {x.dtype}")

    def _stage(self, name: str, x: jax.Array, train: bool | None, capture: dict | None) -> jax.Array:
        module = getattr(self, name)
        if capture is not None:
            sub: dict = {}
            y = module(x, train, sub) if isinstance(module, (EncoderStage, GMSBlock)) else module(x, train)
            capture[name] = y
            capture.update({f"{name}.{k}": v for k, v in sub.items()})
            return y
        if self.remat:
            # jax.checkpoint over a pure function of the stage's state; BatchNorm running stats come back out.
            graphdef, state = nnx.split(module)

            def pure(state, a):
                m = nnx.merge(graphdef, state)
                return m(a, train), nnx.state(m, nnx.BatchStat)
            y, stats = jax.checkpoint(pure)(state, x)
            nnx.update(module, stats)
            return y
        return module(x, train)

    def __call__(self, x: jax.Array, train: bool | None = None, *, capture: dict | None = None) -> jax.Array:
        """Segment a batch.

        Args:
          x: (N, H, W, C_in) (2D) or (N, D, H, W, C_in) (3D) float; spatial sizes multiples of `size_multiple` (32).
          train: None uses the module mode (model.train()/model.eval()); True/False overrides it for this call
            (True: BatchNorm normalises with batch statistics and updates its running statistics).
          capture: optional dict that receives every stage output (and block internals) under our module names,
            for parity tests; disables remat.

        Returns:
          (N, *spatial, num_classes) float32 logits.
        """
        self._check_input(x)
        s = lambda name, a: self._stage(name, a, train, capture)  # noqa: E731
        cat = lambda a, b: jnp.concatenate([a, b], axis=-1)  # noqa: E731  skip first, as the reference
        # The stem computes in float32 whatever `dtype` is. Its conv bias feeds a norm, so its exact gradient is 0,
        # but on tiny inputs (the reference's BUSI scaling, ~0.004) the stem's pre-norm std is ~3e-4 and the norm's
        # backward multiplies bf16 rounding by 1/std: the bias random-walked to |b| ~ 27 within 2 epochs and
        # eval-mode BatchNorm broke (RESULTS.md, "bf16 on BUSI: the cause"). One 3->16 conv costs little in float32.
        x1 = s("encoder1", s("stem", x.astype(jnp.float32)).astype(self.dtype))
        x2 = s("encoder2", layers.max_pool2x(x1))
        x3 = s("encoder3", layers.max_pool2x(x2))
        x4 = s("encoder4", layers.max_pool2x(x3))
        x5 = s("encoder5", layers.max_pool2x(x4))
        d5 = s("decoder5", cat(x4, s("up5", x5)))
        d4 = s("decoder4", s("fusion4", cat(x3, s("up4", d5))))
        d3 = s("decoder3", cat(x2, s("up3", d4)))
        d2 = s("decoder2", cat(x1, s("up2", d3)))
        return self.head(d2).astype(jnp.float32)
