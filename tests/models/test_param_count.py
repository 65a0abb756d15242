"""Parameter counts of LGMSNet equal the PyTorch reference's (spec §1.3, §3.3), built through build_model."""

import pytest

from lgmsnet_jax.models import build_model, count_params

# (ndim, in_channels, num_classes) -> trainable params of the reference (torch 2.13.0, spec §1.3 / §3.3).
REFERENCE_COUNTS = {
    (2, 3, 1): 2_321_393,
    (2, 1, 1): 2_321_105,
    (2, 3, 3): 2_321_427,
    (2, 1, 3): 2_321_139,
    (3, 1, 14): 6_193_742,
    (3, 1, 4): 6_193_572,
}


@pytest.mark.parametrize("ndim,cin,k", sorted(REFERENCE_COUNTS))
def test_param_count_matches_reference(ndim, cin, k):
    model = build_model("lgmsnet", ndim=ndim, in_channels=cin, num_classes=k)
    assert count_params(model) == REFERENCE_COUNTS[(ndim, cin, k)]


def test_per_module_counts_match_reference_2d():
    m = build_model("lgmsnet", ndim=2, in_channels=3, num_classes=1)
    # reference module -> ours: Up_conv4 = fusion4 + decoder4, Upk = upk, Up_convk = decoderk, Conv_1x1 = head.
    expected = {"stem": 480, "encoder1": 1_672, "encoder2": 1_960, "encoder3": 6_224, "encoder4": 391_424,
                "encoder5": 538_880, "up5": 147_840, "decoder5": 833_792, "up4": 73_920, "fusion4": 124_224,
                "decoder4": 138_368, "up3": 18_528, "decoder3": 31_392, "up2": 4_656, "decoder2": 8_016, "head": 17}
    got = {name: count_params(getattr(m, name)) for name in expected}
    assert got == expected
    assert count_params(m.encoder1.lms) == 1_384 and count_params(m.encoder3.lms) == 4_048
    assert count_params(m.encoder4.transformer) == 62_272


def test_per_module_counts_match_reference_3d():
    m = build_model("lgmsnet", ndim=3, in_channels=1, num_classes=14)
    expected = {"stem": 448, "encoder1": 6_992, "encoder2": 7_248, "encoder3": 19_104, "encoder4": 980_800,
                "encoder5": 1_423_168, "up5": 442_496, "decoder5": 2_307_904, "up4": 221_248, "up3": 55_328,
                "decoder3": 67_808, "up2": 13_840, "decoder2": 17_008, "head": 238}
    got = {name: count_params(getattr(m, name)) for name in expected}
    assert got == expected
    assert count_params(m.fusion4) + count_params(m.decoder4) == 630_112


def test_build_model_is_deterministic_and_uses_torch_default_bounds():
    a, b = build_model("lgmsnet", seed=3), build_model("lgmsnet", seed=3)
    c = build_model("lgmsnet", seed=4)
    ka, kb, kc = (m.stem.conv.kernel[...] for m in (a, b, c))
    assert (ka == kb).all() and not (ka == kc).all()
    bound = 1 / 27 ** 0.5  # stem fan_in = 3 * 3 * 3
    assert float(abs(ka).max()) <= bound and float(abs(ka).max()) > 0.9 * bound
    qkv = a.encoder4.transformer.qkv.kernel[...]
    assert float(abs(qkv).max()) <= 1 / 96 ** 0.5
    assert float(a.stem.norm.var[...].min()) == 1.0 and float(abs(a.stem.norm.mean[...]).max()) == 0.0


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")
