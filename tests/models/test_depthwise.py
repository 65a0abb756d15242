"""The depthwise-conv implementations agree with a numpy reference and with each other (2D and 3D)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lgmsnet_jax.models import host_init
from lgmsnet_jax.models.layers import DEPTHWISE_IMPLS, _depthwise_fft, depthwise_conv
from lgmsnet_jax.models.lms import LMSBlock


def _numpy_depthwise(x, kernel, bias):
    """Direct zero-padded cross-correlation, float64: out[p, c] = sum_o xpad[p + o, c] * w[o, c] + b[c]."""
    ndim = x.ndim - 2
    ks = kernel.shape[:ndim]
    xp = np.pad(x.astype(np.float64), [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)])
    out = np.zeros(x.shape, np.float64)
    for off in itertools.product(*(range(k) for k in ks)):
        window = xp[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(off, x.shape[1:-1]))]
        out += window * kernel[off + (0,)]
    return out + bias


CASES = [(2, 1), (2, 3), (2, 5), (2, 7), (2, 9), (3, 1), (3, 3), (3, 5), (3, 7)]


def _conv(a, w, b=None, *, impl):
    """depthwise_conv, or with impl 'fft_math' the FFT path itself (on CPU, impl 'fft' runs the direct conv)."""
    if impl == "fft_math":
        y = _depthwise_fft(a, w)
        return y if b is None else y + b.reshape((1,) * (y.ndim - 1) + (-1,))
    return depthwise_conv(a, w, b, impl=impl)


@pytest.mark.parametrize("ndim,k", CASES)
@pytest.mark.parametrize("impl", DEPTHWISE_IMPLS + ("fft_math",))
def test_depthwise_impl_matches_numpy_reference(ndim, k, impl):
    rng = np.random.default_rng(ndim * 10 + k)
    spatial = (12, 10) if ndim == 2 else (6, 8, 4)  # non-square: catches swapped axes
    x = rng.standard_normal((2, *spatial, 6)).astype(np.float32)
    kernel = rng.standard_normal((k,) * ndim + (1, 6)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        ours = jax.jit(lambda a, w, b: _conv(a, w, b, impl=impl))(x, kernel, bias)
    np.testing.assert_allclose(np.asarray(ours), _numpy_depthwise(x, kernel, bias), atol=2e-5, rtol=0)


def test_depthwise_rejects_bad_arguments():
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="unknown depthwise impl 'fourier'"):
        depthwise_conv(x, jnp.zeros((3, 3, 1, 4)), impl="fourier")
    with pytest.raises(ValueError, match=r"does not fit input channels 4"):
        depthwise_conv(x, jnp.zeros((3, 3, 1, 5)))
    with pytest.raises(ValueError, match="must be odd"):
        depthwise_conv(x, jnp.zeros((4, 4, 1, 4)))


def _block(ndim, impl, channels, kernels):
    abstract = nnx.eval_shape(lambda: LMSBlock(ndim, channels, kernels=kernels, depthwise_impl=impl,
                                               rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, host_init(state, seed=7))


# 3D uses kernels up to 5 only: 'shift_add' compiles k^3 slices (729 for k = 9, ~30 s on CPU).
@pytest.mark.parametrize("ndim,channels,kernels", [(2, 16, (3, 5, 7, 9)), (3, 8, (3, 5))])
def test_lms_block_impls_agree(ndim, channels, kernels):
    """'grouped_padded' (one conv, kernels zero-padded to the largest) and 'shift_add' equal per-kernel XLA convs."""
    rng = np.random.default_rng(ndim)
    x = jnp.asarray(rng.standard_normal((2,) + ((16, 12) if ndim == 2 else (10, 8, 6)) + (channels,)),
                    jnp.float32)
    outs = {}
    for impl in ("xla", "shift_add", "tiled3", "tiled5", "grouped_padded", "dense", "fft"):
        block = _block(ndim, impl, channels, kernels)
        block.eval()
        graphdef, state = nnx.split(block)
        with jax.default_matmul_precision("highest"):
            outs[impl] = np.asarray(jax.jit(lambda s, a: nnx.merge(graphdef, s)(a))(state, x))
    assert np.abs(outs["xla"]).max() > 0.1
    for impl in ("shift_add", "tiled3", "tiled5", "grouped_padded", "dense", "fft"):
        np.testing.assert_allclose(outs[impl], outs["xla"], atol=2e-5, rtol=0, err_msg=impl)


@pytest.mark.parametrize("impl", ["tiled3", "tiled4", "tiled5", "dense", "fft_math"])
def test_depthwise_impl_gradients_match_xla(impl):
    """The tiled, dense and FFT convs are used in training: input and kernel gradients equal the plain conv's."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 13, 11, 4)), jnp.float32)
    for k in (7, 9):
        kernel = jnp.asarray(rng.standard_normal((k, k, 1, 4)), jnp.float32)
        ct = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

        def loss(a, w, which):
            return jnp.sum(_conv(a, w, impl=which) * ct)

        with jax.default_matmul_precision("highest"):
            want = jax.grad(loss, argnums=(0, 1))(x, kernel, "xla")
            got = jax.grad(loss, argnums=(0, 1))(x, kernel, impl)
        for g, w in zip(got, want):
            assert float(jnp.abs(w).max()) > 1.0
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-5)


def test_fft_size_is_7_smooth_and_minimal():
    from lgmsnet_jax.models.layers import fft_size
    assert [fft_size(n) for n in (1, 11, 13, 100, 52, 28, 260)] == [1, 12, 14, 100, 54, 28, 270]


def test_fft_depthwise_3d_k9_no_wraparound():
    """A 9^3 kernel on a small odd volume (the transform sizes are barely larger than n + 4): every output equals
    the direct sum, including the borders where a circular wrap would leak the opposite face in."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 7, 9, 5, 3)).astype(np.float32)
    kernel = rng.standard_normal((9, 9, 9, 1, 3)).astype(np.float32)
    bias = np.zeros(3, np.float32)
    ours = jax.jit(_depthwise_fft)(x, kernel)
    np.testing.assert_allclose(np.asarray(ours), _numpy_depthwise(x, kernel, bias), atol=5e-5, rtol=0)


def test_fft_depthwise_keeps_bf16_dtype():
    x = jnp.ones((1, 8, 8, 2), jnp.bfloat16)
    y = _depthwise_fft(x, jnp.ones((3, 3, 1, 2)))
    assert y.dtype == jnp.bfloat16
    assert float(y[0, 4, 4, 0]) == 9.0 and float(y[0, 0, 0, 0]) == 4.0


@pytest.mark.parametrize("ks,sizes", [((3, 3), (12, 10)), ((9, 5, 7), (14, 10, 12))])
def test_kernel_spectrum_dft_equals_fft(ks, sizes):
    """The CPU path's DFT matmuls give the rfftn that the GPU path computes with an FFT op."""
    from lgmsnet_jax.models.layers import _flipped_kernel, _spectrum_by_dft, _spectrum_by_fft
    kernel = np.random.default_rng(1).standard_normal(ks + (1, 3)).astype(np.float32)
    h = _flipped_kernel(jnp.asarray(kernel))
    want = np.asarray(_spectrum_by_fft(h, sizes))
    assert want.shape == (3, *sizes[:-1], sizes[-1] // 2 + 1)
    np.testing.assert_allclose(np.asarray(_spectrum_by_dft(h, sizes)), want, atol=2e-4, rtol=0)


def test_fft_impl_lowers_to_ffts_on_gpu_and_to_the_direct_conv_on_cpu():
    """impl='fft' is the FFT path on GPUs and the direct conv on CPUs (XLA's CPU FFT deadlock, layers.py)."""
    x, w = jnp.zeros((1, 12, 12, 4)), jnp.zeros((9, 9, 1, 4))
    traced = jax.jit(lambda a, k: depthwise_conv(a, k, impl="fft")).trace(x, w)
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    gpu = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.fft" not in cpu and "stablehlo.convolution" in cpu
    assert "stablehlo.fft" in gpu and "stablehlo.convolution" not in gpu
