"""Baselines (U-Net, TinyU-Net, CMUNeXt) and Table 6 migrations: parameter counts, up-sampling, registry."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lgmsnet_jax.models import build_model, count_params, registered_models
from lgmsnet_jax.models.baselines import BASELINES, CMRF, _ops, stages
from lgmsnet_jax.models.baselines import cmunext as cmunext_lib
from lgmsnet_jax.models.baselines import unet as unet_lib
from lgmsnet_jax.models.baselines import migrations
from lgmsnet_jax.xla_options import FAST_COMPILE


def _abstract_count(make) -> int:
    return count_params(nnx.eval_shape(lambda: make(nnx.Rngs(0))))


# baselines.md §6 (counted from the reference PyTorch classes and, independently, from the formulas).
@pytest.mark.parametrize("name", ["unet", "tinyunet", "cmunext", "unet_lms", "tinyunet_lms", "unet_gms"])
def test_param_count_matches_reference(name):
    from lgmsnet_jax.models import _REGISTRY  # noqa: PLC0415  (abstract build: no 34.5M arrays on CPU)
    factory = _REGISTRY[name]
    got = _abstract_count(lambda r: factory(ndim=2, in_channels=3, num_classes=1, rngs=r))
    info = BASELINES[name]
    assert got == info.params
    # The paper prints millions truncated or rounded to 2 decimals; ours must agree either way.
    assert math.floor(got / 1e4) / 100 == pytest.approx(info.paper_params_m) or \
        round(got / 1e6, 2) == pytest.approx(info.paper_params_m)


@pytest.mark.parametrize("make, want", [
    # U-Net per-module table, baselines.md §1.2
    (lambda r: unet_lib.ConvBlock(512, 1024, rngs=r), 14_161_920),
    (lambda r: unet_lib.UpConvNearest(1024, 512, rngs=r), 4_720_128),
    (lambda r: unet_lib.ConvBlock(128, 64, rngs=r), 110_976),
    # TinyU-Net CMRF table, §2.3
    (lambda r: CMRF(3, 64, rngs=r), 2_524),
    (lambda r: CMRF(1024, 512, rngs=r), 200_224),
    (lambda r: CMRF(192, 64, rngs=r), 4_036),
    # CMUNeXt table, §3.2
    (lambda r: cmunext_lib.CMUNeXtBlock(128, 160, depth=3, kernel=7, rngs=r), 603_744),
    (lambda r: cmunext_lib.CMUNeXtBlock(16, 32, depth=1, kernel=3, rngs=r), 7_184),
    # migrated stages, §4.1 / §4.2
    (lambda r: stages.encoder_stage("lms", 64, 128, rngs=r), 21_664),
    (lambda r: stages.encoder_stage("lms", 512, 1024, rngs=r), 1_205_504),
    (lambda r: stages.encoder_stage("gms", 256, 512, rngs=r), 2_027_776 + 256 * 512 + 2 * 512),
])
def test_module_param_counts_match_spec_tables(make, want):
    assert _abstract_count(make) == want


def test_unet_gms_with_lgmsnet_mlp_width_gives_the_other_candidate_count():
    assert _abstract_count(lambda r: migrations.unet_gms(rngs=r, gms_mlp_ratio=2.0)) == 19_280_673


def test_tinyunet_gms_is_labelled_unresolved_and_not_registered():
    assert BASELINES["tinyunet_gms"].status == "unresolved"
    assert "tinyunet_gms" not in registered_models()
    with pytest.raises(ValueError, match="tinyunet_gms"):
        build_model("tinyunet_gms")


def test_baselines_refuse_3d():
    with pytest.raises(ValueError, match="2D only"):
        build_model("tinyunet", ndim=3)


def _torch_bicubic_1d(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Brute-force PyTorch bicubic ×2 along axis 0: Keys kernel, half-pixel source coords, clamped taps."""
    def w(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
        if d < 2:
            return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
        return 0.0
    n = x.shape[0]
    out = np.zeros((2 * n,) + x.shape[1:])
    for o in range(2 * n):
        src = (o + 0.5) / 2 - 0.5
        base = math.floor(src)
        for k in range(base - 1, base + 3):
            out[o] += w(src - k) * x[min(max(k, 0), n - 1)]
    return out


def test_bicubic_upsample_matches_pytorch_formula():
    x = np.random.default_rng(0).normal(size=(1, 5, 7, 2)).astype(np.float32)
    want = _torch_bicubic_1d(np.swapaxes(_torch_bicubic_1d(np.swapaxes(x[0], 0, 1)), 0, 1))
    got = np.asarray(_ops.upsample_bicubic2(jnp.asarray(x)))[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A = -0.75 overshoots at a step edge where jax.image's A = -0.5 cubic would not match.
    assert not np.allclose(got, np.asarray(jax.image.resize(x, (1, 10, 14, 2), "cubic"))[0], atol=1e-3)


def test_nearest_upsample_repeats_each_pixel_in_a_2x2_block():
    x = jnp.arange(6, dtype=jnp.float32).reshape(1, 2, 3, 1)
    y = np.asarray(_ops.upsample_nearest2(x))[0, :, :, 0]
    np.testing.assert_array_equal(y, [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5],
                                      [3, 3, 4, 4, 5, 5]])


def test_tinyunet_batchnorm_uses_eps_1e3_and_momentum_003():
    bn = _ops.BatchNorm(2, eps=1e-3, momentum=0.03)
    x = jnp.asarray([[1.0, 2.0], [3.0, 6.0]], jnp.float32)  # (N=2, C=2)
    y = bn(x, train=True)
    # batch mean (2, 4), biased var (1, 4): y = (x - mean) / sqrt(var + 1e-3)
    np.testing.assert_allclose(np.asarray(y), [[-1 / math.sqrt(1.001), -2 / math.sqrt(4.001)],
                                               [1 / math.sqrt(1.001), 2 / math.sqrt(4.001)]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), [0.03 * 2, 0.03 * 4], rtol=1e-6)
    # running var uses the unbiased variance (n/(n-1) = 2): 0.97 + 0.03 * (2, 8)
    np.testing.assert_allclose(np.asarray(bn.var[...]), [0.97 + 0.06, 0.97 + 0.24], rtol=1e-6)
    mean, var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    np.testing.assert_allclose(np.asarray(bn(x, train=False)), (np.asarray(x) - mean) / np.sqrt(var + 1e-3),
                               rtol=1e-5)


def test_cmrf_splits_channels_interleaved():
    """Identity-like weights: pw1 copies channel i, the chain multiplies by 0 so only E + O reaches pw2."""
    blk = nnx.eval_shape(lambda: CMRF(16, 32, rngs=nnx.Rngs(0)))
    gd, st = nnx.split(blk)
    blk = nnx.merge(gd, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), st))
    q = 4  # 32 / 8
    blk.pwconv1.conv.kernel[...] = jnp.eye(16, q, dtype=jnp.float32).reshape(1, 1, 16, q)
    for bn in [blk.pwconv1.norm, blk.pwconv2.norm] + [u.norm for u in blk.chain]:
        bn.scale[...] = jnp.ones_like(bn.scale[...])
        bn.var[...] = jnp.ones_like(bn.var[...]) - 1e-3  # eval BN is the identity
    blk.pwconv2.conv.kernel[...] = jnp.eye(16, 32, dtype=jnp.float32).reshape(1, 1, 16, 32)
    blk.eval()
    x = jnp.zeros((1, 2, 2, 16), jnp.float32).at[..., :q].set(jnp.asarray([1.0, 2.0, 3.0, 4.0]))
    y = np.asarray(blk(x))[0, 0, 0]
    gelu = lambda v: np.asarray(jax.nn.gelu(jnp.float32(v), approximate=False))  # noqa: E731
    # z = GELU(x[:4]); E = z[0::2], O = z[1::2]; channel 0 of the concat is E[0] + O[0] = z0 + z1
    np.testing.assert_allclose(y[0], gelu(gelu(1.0) + gelu(2.0)), rtol=1e-6)
    np.testing.assert_allclose(y[1], gelu(gelu(3.0) + gelu(4.0)), rtol=1e-6)
    np.testing.assert_allclose(y[2:], 0.0, atol=1e-7)


@pytest.mark.parametrize("name, kw", [
    ("unet", dict(dims=(8, 16, 32, 64, 128))),
    ("tinyunet", dict(dims=(16, 32, 32, 64))),
    ("cmunext", dict(dims=(8, 8, 16, 16, 32))),
    ("unet_lms", dict(dims=(8, 16, 32, 64, 64))),
    ("tinyunet_lms", dict(dims=(16, 32, 32, 64))),
    ("unet_gms", dict(dims=(8, 16, 32, 64, 64))),
])
def test_forward_gives_logits_at_input_resolution(name, kw):
    model = nnx.eval_shape(lambda: build_model(name, in_channels=3, num_classes=2, seed=0, **kw))
    y = nnx.eval_shape(lambda m, x: m(x, train=True), model, jax.ShapeDtypeStruct((2, 32, 48, 3), jnp.float32))
    assert (y.shape, y.dtype) == ((2, 32, 48, 2), jnp.float32)


def test_unet_train_forward_updates_every_batchnorm():
    model = build_model("unet", in_channels=3, num_classes=1, seed=0, dims=(4, 8, 8, 8, 8))
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3), jnp.float32)

    # Lower XLA CPU effort (as the loop's fast_compile): this checks wiring, not speed.
    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def fwd(state, x):
        m = nnx.merge(graphdef, state)
        return m(x, train=True), nnx.state(m, nnx.BatchStat)

    y, stats_after = fwd(state, x)
    assert bool(jnp.all(jnp.isfinite(y)))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), nnx.state(model, nnx.BatchStat), stats_after)
    assert all(jax.tree.leaves(moved))  # 22 BatchNorms (spec §1.3), every one saw data: no dead branch
    assert len(jax.tree.leaves(moved)) == 2 * 22
