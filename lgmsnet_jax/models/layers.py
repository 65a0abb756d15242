"""Dimension-generic building blocks (2D and 3D, channels-last) with PyTorch-reference numerics.

Convolutions, the one `depthwise_conv`, linear layers and the norms (BatchNorm with PyTorch running-stat semantics,
GroupNorm, InstanceNorm, LayerNorm). Every layer works for `ndim` 2 (NHWC) or 3 (NDHWC).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

EPS = 1e-5  # every norm of the reference (BN, GN, IN, LN) uses eps 1e-5 (spec §4.2, §4.3)
DEPTHWISE_IMPLS = ("xla", "shift_add", "tiled3", "tiled4", "tiled5", "dense", "fft")
FFT_PLATFORMS = ("cuda", "rocm")  # where depthwise_impl "fft" runs the FFT; elsewhere the direct conv (see there)


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """PyTorch default init U(-b, b), b = 1/sqrt(fan_in), for conv/linear weights and biases (spec §4.7)."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)


def _bcast(v: jax.Array, ndim: int) -> jax.Array:
    """(C,) -> (1, ..., 1, C) of rank `ndim`: explicit broadcasting (tests run with rank promotion 'raise')."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
    spatial = "DHW"[3 - ndim:]
    return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")


def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, groups: int = 1) -> jax.Array:
    """Stride-1 cross-correlation with zero padding k//2 per side (PyTorch `padding=k//2`).

    Args:
      x: (N, *spatial, C_in), spatial of rank 2 or 3.
      kernel: (*k, C_in // groups, C_out), odd k.
      bias: (C_out,) or None.
      groups: feature_group_count; output-channel groups are contiguous as in PyTorch.

    Returns:
      (N, *spatial, C_out) in x.dtype.
    """
    ndim = x.ndim - 2
    if 1 < groups < x.shape[-1]:
        # One conv per group, joined: XLA's SPMD partitioner all-gathers a batch-sharded input of a conv with
        # 1 < feature_group_count < C_in (depthwise is fine), so the fusion blocks' 2-group conv ran on the whole
        # global batch on every device (BENCHMARKS.md, "Data-parallel scaling"). Same arithmetic per group.
        xs, ks = jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1)
        y = jnp.concatenate([conv(xi, ki) for xi, ki in zip(xs, ks)], axis=-1)
        return y if bias is None else y + _bcast(bias.astype(x.dtype), y.ndim)
    pads = [(k // 2, k // 2) for k in kernel.shape[:ndim]]
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1,) * ndim, padding=pads,
        dimension_numbers=_dimension_numbers(ndim), feature_group_count=groups)
    if bias is not None:
        y = y + _bcast(bias.astype(x.dtype), y.ndim)
    return y


def _depthwise_shift_add(x: jax.Array, kernel: jax.Array) -> jax.Array:
    ndim = x.ndim - 2
    ks = kernel.shape[:ndim]
    w = kernel.reshape(*ks, kernel.shape[-1]).astype(x.dtype)
    xp = jnp.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)])
    spatial = x.shape[1:-1]
    out = None
    for offset in np.ndindex(*ks):
        window = xp[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(offset, spatial)) + (slice(None),)]
        term = window * _bcast(w[offset], x.ndim)
        out = term if out is None else out + term
    return out


def _segments(k: int, tile: int) -> list[tuple[int, int]]:
    """(start, length) pieces of a kernel axis of size k, each at most `tile` long: 9 -> [(0, 5), (5, 4)] for 5."""
    return [(s, min(tile, k - s)) for s in range(0, k, tile)]


def _depthwise_tiled(x: jax.Array, kernel: jax.Array, tile: int) -> jax.Array:
    # A k^d kernel is the sum of <= tile^d sub-kernels, each applied as a VALID conv to the window of the padded
    # input it sees. XLA's GPU depthwise conv is fast up to k = 5 and falls off a cliff at k = 9 (and for the fp32
    # k = 7 gradient): ../shared/device/README.md. Exact in exact arithmetic; no tap is computed twice.
    ndim = x.ndim - 2
    ks = kernel.shape[:ndim]
    c = x.shape[-1]
    xp = jnp.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)])
    w = kernel.astype(x.dtype)
    spatial = x.shape[1:-1]
    out = None
    for pieces in itertools.product(*(_segments(k, tile) for k in ks)):
        window = xp[(slice(None),) + tuple(slice(o, o + s + n - 1) for (o, n), s in zip(pieces, spatial))]
        sub = w[tuple(slice(o, o + n) for o, n in pieces)]
        term = jax.lax.conv_general_dilated(window, sub, window_strides=(1,) * ndim, padding="VALID",
                                            dimension_numbers=_dimension_numbers(ndim), feature_group_count=c)
        out = term if out is None else out + term
    return out


def fft_size(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3, 5, 7 (the radices FFT libraries handle fast)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _flipped_kernel(kernel: jax.Array) -> jax.Array:
    """(*k, 1, C) depthwise kernel -> (C, *k) float32, flipped along every spatial axis."""
    ndim = kernel.ndim - 2
    return jnp.moveaxis(jnp.flip(kernel[..., 0, :].astype(jnp.float32), axis=tuple(range(ndim))), -1, 0)


def _spectrum_by_fft(h: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    return jnp.fft.rfftn(h, s=sizes, axes=tuple(range(1, h.ndim)))


def _spectrum_by_dft(h: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    """`_spectrum_by_fft` as one small DFT matmul per axis (the kernel has only k taps per axis)."""
    h = h.astype(jnp.complex64)
    for axis, m in enumerate(sizes):
        f = np.arange(m // 2 + 1 if axis == len(sizes) - 1 else m)  # rfftn keeps half of the last axis
        e = np.exp(-2j * np.pi * np.outer(np.arange(h.shape[1]), f) / m).astype(np.complex64)  # E[t, f]
        # Contracts the leading spatial axis and appends its frequencies: (C, *k) ends as (C, *frequencies).
        h = jnp.tensordot(h, e, axes=[[1], [0]], precision=jax.lax.Precision.HIGHEST)
    return h


def _kernel_spectrum(kernel: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    """rfftn of the flipped (*k, 1, C) kernel zero-padded to `sizes`: (C, *sizes[:-1], sizes[-1]//2+1) complex64.

    On GPU an FFT op (cuFFT). On CPU, where `_depthwise_fft` runs only in tests, the DFT matmuls instead, so the
    kernel's and the input's transforms are never two FFT ops running at once (see `depthwise_conv`, "fft").
    """
    return jax.lax.platform_dependent(_flipped_kernel(kernel), cpu=lambda h: _spectrum_by_dft(h, sizes),
                                      default=lambda h: _spectrum_by_fft(h, sizes))


def _depthwise_fft(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # Convolution theorem: one real FFT of the input per channel, a product with the kernel's spectrum, one
    # inverse FFT. The cost does not depend on k, so a 9^3 kernel costs what a 3^3 one does. The transform size
    # m >= n + k//2 per axis keeps the circular wrap-around out of the cropped window: output i reads inputs
    # i-p..i+p, and an index below 0 wraps to m-p.. >= n, which is zero padding. Computed in float32 (FFTs have
    # no bf16 form); equal to a direct conv up to float32 rounding, not bit for bit.
    ndim = x.ndim - 2
    ks = kernel.shape[:ndim]
    spatial = x.shape[1:-1]
    sizes = tuple(fft_size(n + k // 2) for n, k in zip(spatial, ks))
    axes = tuple(range(2, 2 + ndim))
    xt = jnp.moveaxis(x.astype(jnp.float32), -1, 1)  # (N, C, *spatial): XLA transforms the trailing axes
    # The flipped kernel at 0..k-1 turns the circular convolution into a correlation shifted by p = k//2 per axis.
    spectrum = jnp.fft.rfftn(xt, s=sizes, axes=axes) * _kernel_spectrum(kernel, sizes)[None]
    full = jnp.fft.irfftn(spectrum, s=sizes, axes=axes)
    y = full[(slice(None), slice(None)) + tuple(slice(k // 2, k // 2 + n) for k, n in zip(ks, spatial))]
    return jnp.moveaxis(y, 1, -1).astype(x.dtype)


def depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, impl: str = "xla") -> jax.Array:
    """Depthwise (groups = C) stride-1 conv with zero padding k//2, one filter per channel.

    Numerically equivalent implementations, chosen by measurement per device:
    - "xla": `lax.conv_general_dilated(feature_group_count=C)`. Grouped-conv gradients are a known weak spot
      of XLA (jax-ml/jax#13800: backward as slow as a dense conv on CUDA; google/flax#4207 = jax-ml/jax#23713:
      depthwise much slower than PyTorch on CPU).
    - "shift_add": the sum over the k^d taps of shifted, per-channel-scaled slices of the zero-padded input.
      Purely elementwise, so XLA fuses it (forward and backward); compile time grows with k^d.
    - "tiled3" / "tiled4" / "tiled5": the kernel cut into sub-kernels of at most 3/4/5 taps per axis (9 -> 5 + 4),
      each a VALID XLA depthwise conv on the matching window of the padded input, summed. Keeps every conv in the
      kernel sizes where XLA's GPU depthwise conv is fast; a kernel no larger than the tile is one plain conv.
    - "dense": one ungrouped conv whose (*k, C, C) kernel is diagonal in the channels. C times the arithmetic, but
      it runs on the implicit-GEMM (tensor core) convolutions instead of cuDNN's grouped direct kernels, which
      dominate the 3D profile (BENCHMARKS.md); the zero products add exactly nothing. Meant for the LMS block's
      4-channel chunks, not for wide depthwise convs.
    - "fft": the convolution theorem (`_depthwise_fft`), in float32 whatever x.dtype: cost independent of k, so
      it pays off for large kernels on large volumes (the 3D LMS block's 9^3 taps at 96^3), where cuDNN's
      grouped direct kernels dominate the profile. Equal to the direct conv up to float rounding. Only GPUs run
      the FFT; CPUs and TPUs run the "xla" conv (see below).
    A 1x..x1 kernel is a per-channel scale and skips the conv whatever `impl` says.

    Args:
      x: (N, *spatial, C).
      kernel: (*k, 1, C), odd k (Flax depthwise layout).
      bias: (C,) or None.
      impl: one of DEPTHWISE_IMPLS.

    Returns:
      (N, *spatial, C) in x.dtype.
    """
    ndim = x.ndim - 2
    c = x.shape[-1]
    if kernel.shape[ndim:] != (1, c):
        raise ValueError(f"depthwise kernel {kernel.shape} does not fit input channels {c}: expected (*k, 1, {c})")
    if any(k % 2 == 0 for k in kernel.shape[:ndim]):
        raise ValueError(f"depthwise kernel sizes must be odd, got {kernel.shape[:ndim]}")
    if all(k == 1 for k in kernel.shape[:ndim]):
        y = x * _bcast(kernel.reshape(c).astype(x.dtype), x.ndim)
    elif impl == "xla":
        y = conv(x, kernel, groups=c)
    elif impl == "shift_add":
        y = _depthwise_shift_add(x, kernel)
    elif impl == "dense":
        eye = jnp.eye(c, dtype=kernel.dtype).reshape((1,) * ndim + (c, c))
        y = conv(x, kernel * eye)  # (*k, 1, C) * (C, C): the diagonal (*k, C, C) kernel
    elif impl == "fft":
        # The FFT only where it was measured to pay off, on GPUs. XLA's CPU runtime deadlocks when two FFT ops run
        # at once (each parks a worker of the intra-op pool it fans out into: PyAutoLabs/PyAutoFit#1530), as in a
        # training step's backward pass; TPUs are unmeasured. Both run the direct conv. Tests call `_depthwise_fft`
        # directly, one conv at a time.
        y = jax.lax.platform_dependent(x, kernel, **{p: _depthwise_fft for p in FFT_PLATFORMS},
                                       default=lambda a, w: conv(a, w, groups=c))
    elif impl.startswith("tiled") and impl in DEPTHWISE_IMPLS:
        tile = int(impl.removeprefix("tiled"))
        y = conv(x, kernel, groups=c) if max(kernel.shape[:ndim]) <= tile else _depthwise_tiled(x, kernel, tile)
    else:
        raise ValueError(f"unknown depthwise impl {impl!r}; expected one of {DEPTHWISE_IMPLS}")
    if bias is not None:
        y = y + _bcast(bias.astype(x.dtype), x.ndim)
    return y


class Conv(nnx.Module):
    """Dense or grouped conv, stride 1, 'same' zero padding k//2 (PyTorch Conv2d/Conv3d)."""

    def __init__(self, ndim: int, in_features: int, out_features: int, kernel_size: int, *,
                 use_bias: bool, groups: int = 1, rngs: nnx.Rngs):
        """Args: ndim 2|3; in/out channels; odd cubic kernel size; bias flag; groups (contiguous); rngs."""
        if in_features % groups or out_features % groups:
            raise ValueError(f"Conv {in_features}->{out_features}: channels not divisible by groups={groups}")
        shape = (kernel_size,) * ndim + (in_features // groups, out_features)
        fan_in = int(np.prod(shape[:-1]))
        self.groups = groups
        self.kernel = nnx.Param(_uniform(rngs, shape, fan_in))
        self.bias = nnx.Param(_uniform(rngs, (out_features,), fan_in)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, *spatial, C_in) -> (N, *spatial, C_out)."""
        return conv(x, self.kernel[...], None if self.bias is None else self.bias[...], groups=self.groups)


class DepthwiseConv(nnx.Module):
    """Depthwise conv (groups = C) with a selectable implementation (see `depthwise_conv`)."""

    def __init__(self, ndim: int, channels: int, kernel_size: int, *, use_bias: bool, impl: str = "xla",
                 rngs: nnx.Rngs):
        """Args: ndim 2|3; channels; odd kernel size; bias flag; impl of `depthwise_conv`; rngs."""
        if impl not in DEPTHWISE_IMPLS:
            raise ValueError(f"unknown depthwise impl {impl!r}; expected one of {DEPTHWISE_IMPLS}")
        shape = (kernel_size,) * ndim + (1, channels)
        fan_in = kernel_size ** ndim
        self.impl = impl
        self.kernel = nnx.Param(_uniform(rngs, shape, fan_in))
        self.bias = nnx.Param(_uniform(rngs, (channels,), fan_in)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, *spatial, C) -> (N, *spatial, C)."""
        return depthwise_conv(x, self.kernel[...], None if self.bias is None else self.bias[...], impl=self.impl)


class Linear(nnx.Module):
    """Dense layer on the last axis, kernel (in, out) (PyTorch Linear weight transposed)."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_uniform(rngs, (in_features, out_features), in_features))
        self.bias = nnx.Param(_uniform(rngs, (out_features,), in_features)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., in) -> (..., out) in x.dtype."""
        y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + _bcast(self.bias[...].astype(x.dtype), y.ndim)
        return y


def _normalize(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Two-pass mean and biased variance in float32 (more accurate than E[x^2]-E[x]^2, spec §4.3)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)
    return xf, mean, var


class BatchNorm(nnx.Module):
    """BatchNorm with PyTorch semantics: momentum 0.1, biased variance to normalise, unbiased in the running update.

    Flax's BatchNorm updates running_var with the biased batch variance; PyTorch multiplies it by n/(n-1)
    (spec §4.2), which the reference fixtures' `train_running.*` record. `use_running_average` is the NNX
    train/eval flag (`model.train()` sets False, `model.eval()` True).

    `stat_groups` = G > 1 normalises each of G equal, consecutive slices of the batch with its own statistics:
    with G = the data-parallel device count, each device normalises its own samples (PyTorch DDP without
    SyncBatchNorm) and no statistic crosses devices on the step's critical path. The running statistics take the
    mean over groups of each group's mean and unbiased variance. G = 1 (default) is the exact batch statistic.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, use_running_average: bool = False,
                 stat_groups: int = 1, rngs: nnx.Rngs | None = None):
        del rngs  # no random init: scale 1, bias 0, mean 0, var 1 as PyTorch
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.stat_groups = stat_groups
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """Normalise (N, *spatial, C); `train` overrides the module flag for this call."""
        use_batch = (not self.use_running_average) if train is None else train
        g = self.stat_groups
        if use_batch and g > 1:
            if x.shape[0] % g:
                raise ValueError(f"BatchNorm: a batch of {x.shape[0]} does not split into stat_groups={g}")
            shape = x.shape
            x = x.reshape(g, shape[0] // g, *shape[1:])  # the group axis follows the batch's device sharding
        if use_batch:
            first = 1 if g > 1 else 0
            xf, mean, var = _normalize(x, tuple(range(first, x.ndim - 1)))
            n = math.prod(x.shape[first:-1])
            lead = tuple(range(x.ndim - 1))  # mean over groups (a no-op for one group)
            unbiased = jnp.mean(var, axis=lead).reshape(-1) * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * jnp.mean(mean, axis=lead).reshape(-1)
            self.var[...] = (1.0 - m) * self.var[...] + m * unbiased
        else:
            xf = x.astype(jnp.float32)
            mean, var = _bcast(self.mean[...], x.ndim), _bcast(self.var[...], x.ndim)
        y = (xf - mean) * jax.lax.rsqrt(var + EPS) * _bcast(self.scale[...], x.ndim) + _bcast(self.bias[...], x.ndim)
        if use_batch and g > 1:
            y = y.reshape(shape)
        return y.astype(x.dtype)


# config.batchnorm / benchmark --batchnorm: "global" = statistics over the whole global batch (one GPU's numerics at
# any device count; one all-reduce per layer on the critical path); "per_device" = each device's own rows.
BATCHNORM_MODES = ("global", "per_device")


def set_batchnorm_groups(model: nnx.Module, groups: int) -> int:
    """Sets `stat_groups` on every BatchNorm in `model` (1: batch statistics; the data-parallel device count:
    per-device statistics). Returns how many layers it set."""
    if groups < 1:
        raise ValueError(f"BatchNorm stat groups must be >= 1, got {groups}")
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, BatchNorm)]
    for bn in norms:
        bn.stat_groups = groups
    return len(norms)


class InstanceNorm(nnx.Module):
    """PyTorch InstanceNorm defaults: per sample and channel over space, no affine, no running stats."""

    def __init__(self, num_features: int, *, rngs: nnx.Rngs | None = None):
        del num_features, rngs

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, *spatial, C) -> same; identical in train and eval."""
        del train
        xf, mean, var = _normalize(x, tuple(range(1, x.ndim - 1)))
        return ((xf - mean) * jax.lax.rsqrt(var + EPS)).astype(x.dtype)


class GroupNorm(nnx.Module):
    """GroupNorm over contiguous channel groups, affine, eps 1e-5 (PyTorch GroupNorm)."""

    def __init__(self, num_groups: int, num_features: int, *, rngs: nnx.Rngs | None = None):
        del rngs
        if num_features % num_groups:
            raise ValueError(f"GroupNorm: {num_features} channels not divisible by {num_groups} groups")
        self.num_groups = num_groups
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, *spatial, C) -> same."""
        c = x.shape[-1]
        g = x.reshape(*x.shape[:-1], self.num_groups, c // self.num_groups)
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
        gf, mean, var = _normalize(g, axes)
        y = ((gf - mean) * jax.lax.rsqrt(var + EPS)).reshape(x.shape)
        return (y * _bcast(self.scale[...], x.ndim) + _bcast(self.bias[...], x.ndim)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, affine, eps 1e-5."""

    def __init__(self, num_features: int, *, rngs: nnx.Rngs | None = None):
        del rngs
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., C) -> same."""
        xf, mean, var = _normalize(x, (x.ndim - 1,))
        y = (xf - mean) * jax.lax.rsqrt(var + EPS)
        return (y * _bcast(self.scale[...], x.ndim) + _bcast(self.bias[...], x.ndim)).astype(x.dtype)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU; jax.nn.gelu defaults to the tanh form, which fails parity (spec §4.4)."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu, "silu": jax.nn.silu, "gelu": gelu, "none": lambda x: x}


def make_norm(kind: str, num_features: int) -> nnx.Module:
    """'batch' -> BatchNorm, 'instance' -> affine-free InstanceNorm (the 3D net's stand-in for BN)."""
    if kind == "batch":
        return BatchNorm(num_features)
    if kind == "instance":
        return InstanceNorm(num_features)
    raise ValueError(f"unknown norm {kind!r}; expected 'batch' or 'instance'")


class ConvNormAct(nnx.Module):
    """Conv -> norm -> act, or conv -> act -> norm with `act_first` (the reference's fusion block order)."""

    def __init__(self, ndim: int, in_features: int, out_features: int, kernel_size: int, *, use_bias: bool,
                 norm: str, act: str, groups: int = 1, act_first: bool = False, rngs: nnx.Rngs):
        """Args as `Conv`, plus norm 'batch'|'instance', act 'relu'|'silu'|'gelu', act_first flag."""
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {tuple(ACTIVATIONS)}")
        self.conv = Conv(ndim, in_features, out_features, kernel_size, use_bias=use_bias, groups=groups, rngs=rngs)
        self.norm = make_norm(norm, out_features)
        self.act = act
        self.act_first = act_first

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, *spatial, C_in) -> (N, *spatial, C_out)."""
        act = ACTIVATIONS[self.act]
        y = self.conv(x)
        if self.act_first:
            return self.norm(act(y), train)
        return act(self.norm(y, train))


def upsample2x(x: jax.Array) -> jax.Array:
    """Bi/trilinear x2 with half-pixel centres (PyTorch align_corners=False; matches to 2.4e-7, spec §4.6)."""
    shape = (x.shape[0],) + tuple(2 * s for s in x.shape[1:-1]) + (x.shape[-1],)
    return jax.image.resize(x, shape, method="linear")


def max_pool2x(x: jax.Array) -> jax.Array:
    """MaxPool kernel 2, stride 2, VALID over every spatial axis."""
    n, *spatial, c = x.shape
    x = x[(slice(None),) + tuple(slice(0, 2 * (s // 2)) for s in spatial)]  # floor mode, as PyTorch
    split = []
    for s in spatial:
        split += [s // 2, 2]
    return x.reshape(n, *split, c).max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def split_channels(x: jax.Array, sizes: Sequence[int]) -> list[jax.Array]:
    """Contiguous channel chunks of the given sizes (last axis)."""
    out, start = [], 0
    for s in sizes:
        out.append(x[..., start:start + s])
        start += s
    return out
