"""The reference-weight converter: exact round trips for many configs, errors that name the bad key, Orbax save/load."""

import importlib.util
import json

import numpy as np
import pytest
from flax import nnx

from lgmsnet_jax import convert
from lgmsnet_jax.models import build_model

NARROW = dict(dims=(8, 16, 16, 32, 32), gms_splits=((24, 8), (24, 8), (24, 8), (12, 4)), mlp_dims=(16, 16, 16, 8))
CONFIGS = {
    "2d_default": dict(ndim=2, in_channels=3, num_classes=1),
    "2d_1in_3cls": dict(ndim=2, in_channels=1, num_classes=3),
    "3d_default": dict(ndim=3, in_channels=1, num_classes=14),
    "2d_narrow_pure_conv": dict(ndim=2, in_channels=3, num_classes=2, **{**NARROW, "gms_splits": ((0, 32),) * 3 + ((0, 16),)}),
    "3d_narrow_pure_transformer": dict(ndim=3, in_channels=2, num_classes=4,
                                       **{**NARROW, "gms_splits": ((32, 0),) * 3 + ((16, 0),)}),
}


def _leaves(model):
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def _assert_same_leaves(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert la.keys() == lb.keys()
    diff = [k for k in la if not np.array_equal(la[k], lb[k])]
    assert not diff, f"leaves differ: {diff}"


def _perturb_stats(model, seed):
    """Give BatchNorm stats non-default values so the round trip proves they are mapped, not just initialised."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        var[...] = rng.uniform(0.5, 1.5, var.get_value().shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_state_dict_loads_back_exactly(name, tmp_path):
    cfg = CONFIGS[name]
    source = build_model("lgmsnet", seed=11, **cfg)
    _perturb_stats(source, 1)
    sd = convert.export_state_dict(source)
    # Fixture-style file: state.-prefixed keys, BN counters present, extra non-state arrays ignored.
    counters = {f"state.{k[:-len('.running_mean')]}.num_batches_tracked": np.array(5)
                for k in sd if k.endswith(".running_mean")}
    np.savez(tmp_path / "ref.npz", input=np.zeros(3), **{f"state.{k}": v for k, v in sd.items()}, **counters)
    loaded = convert.load_torch_checkpoint(tmp_path / "ref.npz", **cfg)
    _assert_same_leaves(source, loaded)


def test_reference_layout_matches_spec_appendix_for_2d_default():
    sd = convert.export_state_dict(build_model("lgmsnet"))
    assert len(sd) == 372 - 47  # Appendix A: 372 entries, of which 47 BN counters
    assert sd["stem.conv.0.weight"].shape == (16, 3, 3, 3)
    assert sd["encoder1.0.global_dwc_l.weight"].shape == (4, 1, 9, 9)
    assert sd["Up_conv4.0.conv.0.weight"].shape == (128, 64, 3, 3)  # groups = 2
    assert sd["encoder4.0.transformer.layers.0.0.to_qkv.weight"].shape == (96, 96)
    assert sd["Up_conv4.1.transformer.layers.0.1.net.4.weight"].shape == (48, 128)
    assert sd["Up5.up.2.running_var"].shape == (128,)


def test_reference_layout_matches_spec_appendix_for_3d_default():
    sd = convert.export_state_dict(build_model("lgmsnet", ndim=3, in_channels=1, num_classes=14))
    assert len(sd) == 177 - 8  # Appendix B: 177 entries, of which 8 BN counters
    assert sd["encoder4.0.conv_spilt.dwconv3x3x3.weight"].shape == (32, 1, 3, 3, 3)
    assert sd["encoder4.0.conv_spilt.dwconv1x1x1.weight"].shape == (32, 1, 1, 1, 1)
    assert not any(k.startswith("stem.conv.1") for k in sd)  # InstanceNorm: no parameters


@pytest.fixture(scope="module")
def small_sd():
    return convert.export_state_dict(build_model("lgmsnet", **NARROW))


def _load(tmp_path, sd, **kw):
    np.savez(tmp_path / "ref.npz", **sd)
    return convert.load_torch_checkpoint(tmp_path / "ref.npz", **{**NARROW, **kw})


def test_missing_key_is_named(tmp_path, small_sd):
    sd = dict(small_sd)
    del sd["encoder2.0.global_dwc_m.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): \['encoder2.0.global_dwc_m.bias'\]"):
        _load(tmp_path, sd)


def test_unexpected_key_is_named(tmp_path, small_sd):
    sd = {**small_sd, "encoder2.0.extra.weight": np.zeros(3, np.float32), "stem.conv.0.num_batches_tracked": 1}
    with pytest.raises(ValueError, match=r"unexpected keys \(2\): \['encoder2.0.extra.weight', "
                                         r"'stem.conv.0.num_batches_tracked'\]"):
        _load(tmp_path, sd)


def test_wrong_shape_is_named(tmp_path, small_sd):
    sd = {**small_sd, "Up_conv5.transformer.layers.0.0.to_qkv.weight": np.zeros((96, 25), np.float32)}
    with pytest.raises(ValueError, match=r"Up_conv5.transformer.layers.0.0.to_qkv.weight: file \(96, 25\), "
                                         r"model expects \(96, 24\)"):
        _load(tmp_path, sd)


def test_channel_mismatch_says_what_the_file_has(tmp_path, small_sd):
    with pytest.raises(ValueError, match=r"has in_channels=3 .*not 1.*num_classes=1 .*not 4"):
        _load(tmp_path, small_sd, in_channels=1, num_classes=4)
    with pytest.raises(ValueError, match=r"has ndim=2"):
        _load(tmp_path, small_sd, ndim=3)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_pth_without_torch_gives_a_clear_error(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"not read")
    with pytest.raises(ImportError, match="needs PyTorch"):
        convert.read_state_dict(tmp_path / "w.pth")


def test_cli_writes_orbax_checkpoint_that_restores_exactly(tmp_path, small_sd):
    ref = tmp_path / "ref.npz"
    np.savez(ref, **small_sd)
    out = tmp_path / "converted"
    dims = ["--set", "dims=[8,16,16,32,32]", "--set", "gms_splits=[[24,8],[24,8],[24,8],[12,4]]",
            "--set", "mlp_dims=[16,16,16,8]"]
    assert convert.main([str(ref), "--out", str(out), *dims]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["ndim"] == 2 and meta["in_channels"] == 3 and meta["dims"] == [8, 16, 16, 32, 32]
    restored = convert.load_converted(out)
    _assert_same_leaves(restored, convert.load_torch_checkpoint(ref, **NARROW))
    assert convert.main([str(ref), "--out", str(out), *dims]) == 2  # refuses to overwrite
    assert convert.main([str(ref), "--out", str(out), "--overwrite", *dims]) == 0


def test_save_converted_round_trips_bn_stats_and_dtype(tmp_path):
    kw = dict(ndim=3, in_channels=1, num_classes=4, dtype="bfloat16", **NARROW)
    model = build_model("lgmsnet", seed=5, **kw)
    _perturb_stats(model, 2)
    convert.save_converted(model, tmp_path / "m", kw)
    restored = convert.load_converted(tmp_path / "m")
    _assert_same_leaves(model, restored)
    assert restored.dtype == np.dtype("bfloat16") and restored.ndim == 3
