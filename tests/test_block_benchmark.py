"""The per-stage / LMS-depthwise benchmark finds every stage with its input shape and times the LMS variants."""

import jax
import jax.numpy as jnp
import pytest

from lgmsnet_jax import block_benchmark
from lgmsnet_jax.models import build_model


def test_stage_inputs_follow_the_unet_topology():
    model = build_model("lgmsnet", ndim=2, in_channels=3, num_classes=1, seed=0)
    seen = dict(block_benchmark.stage_inputs(model, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)))
    assert list(seen) == ["stem", "encoder1", "encoder2", "encoder3", "encoder4", "encoder5", "up5", "decoder5",
                          "up4", "fusion4", "decoder4", "up3", "decoder3", "up2", "decoder2"]
    assert seen["stem"].shape == (2, 64, 64, 3)
    assert seen["encoder1"].shape == (2, 64, 64, 16)
    assert seen["encoder3"].shape == (2, 16, 16, 32)
    assert seen["encoder5"].shape == (2, 4, 4, 128)
    assert seen["decoder5"].shape == (2, 8, 8, 256)  # skip (128) + upsampled (128)
    assert seen["decoder2"].shape == (2, 64, 64, 32)


def test_lms_table_times_each_impl_and_encoder(tmp_path):
    out = tmp_path / "blocks.json"
    args = block_benchmark.parse_args(["--size", "32", "--batch", "1", "--dtype", "fp32", "--impls", "tiled5",
                                       "--tables", "lms", "--steps", "1", "--warmup", "0", "--output", str(out)])
    report = block_benchmark.run(args)
    rows = report["lms"]
    assert [(r["impl"], r["stage"]) for r in rows] == [
        ("tiled5", s) for s in ("encoder1", "encoder2", "encoder3")]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["kernels"] == [3, 5, 7, 9] for r in rows)
    assert out.exists() and "encoder3" in out.read_text()
    assert "encoder1" in block_benchmark.format_tables(report)


def test_bad_impl_is_rejected():
    with pytest.raises(SystemExit):
        block_benchmark.parse_args(["--impls", "xla,fourier"])
