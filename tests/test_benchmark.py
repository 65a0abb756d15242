"""`python -m lgmsnet_jax.benchmark` end to end on CPU (tiny registered net, tiny sizes) and its timing statistics."""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lgmsnet_jax import benchmark
from lgmsnet_jax.models import layers, register_model, registered_models

ROW_FIELDS = {
    "ndim", "dtype", "depthwise_impl", "attention_impl", "size", "unit", "in_channels", "num_classes", "params",
    "state_arrays", "inference_args", "train_state_args",
    "gflops_per_example",
    "latency_batch", "latency_ms", "latency_ms_p10", "latency_ms_p90", "latency_compile_s",
    "infer_batch", "infer_per_s", "infer_per_s_p10", "infer_per_s_p90", "infer_ms", "infer_compile_s",
    "train_batch", "train_per_s", "train_per_s_p10", "train_per_s_p90", "train_step_ms", "train_compile_s",
    "train_step_memory_bytes", "train_pipelined_per_s", "train_pipelined_ms",
    "dp_devices", "dp_batch_per_device", "dp_per_s", "dp_step_ms", "dp_pipelined_per_s", "dp_scaling", "dp_compile_s",
    "peak_memory_bytes",
}
WIDTH = 4


class BenchNet(nnx.Module):
    """conv3 -> BatchNorm -> ReLU -> conv1 (2D or 3D): the benchmark's plumbing without LGMSNet's CPU compile time."""

    def __init__(self, ndim, in_channels, num_classes, *, dtype=jnp.float32, rngs):
        self.conv = nnx.Conv(in_channels, WIDTH, (3,) * ndim, padding="SAME", dtype=dtype, rngs=rngs)
        self.bn = layers.BatchNorm(WIDTH)  # LGMSNet's BatchNorm (float32 statistics)
        self.head = nnx.Conv(WIDTH, num_classes, (1,) * ndim, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x, train=None):
        h = self.bn(self.conv(x.astype(self.dtype)).astype(jnp.float32), train=train)
        return self.head(nnx.relu(h).astype(self.dtype)).astype(jnp.float32)


def _factory(ndim, in_channels, num_classes, rngs, dtype=jnp.float32):
    return BenchNet(ndim, in_channels, num_classes, dtype=dtype, rngs=rngs)


if "bench_test_net" not in registered_models():
    register_model("bench_test_net")(_factory)


def _run(capsys, *argv):
    assert benchmark.main(["--model", "bench_test_net", "--steps", "3", "--warmup", "1", "--json", *argv]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_benchmark_json_has_every_field_for_both_dtypes_and_data_parallel(capsys, tmp_path):
    report, table = _run(capsys, "--ndim", "2", "--dtype", "both", "--size", "16", "--infer_batch", "4",
                         "--train_batch", "2", "--devices", "2", "--output", str(tmp_path / "b.json"),
                         "--profile", str(tmp_path / "prof"), "--profile_steps", "1")
    assert json.loads((tmp_path / "b.json").read_text()) == report
    assert set(report) == {"device", "settings", "results", "targets"}
    assert all(v["met"] is None for v in report["targets"].values())  # tiny sizes are not the targets' settings
    assert report["device"]["device_kind"] == jax.devices()[0].device_kind and report["device"]["platform"] == "cpu"
    assert [r["dtype"] for r in report["results"]] == ["fp32", "bf16"]
    for r in report["results"]:
        assert set(r) == ROW_FIELDS, set(r) ^ ROW_FIELDS
        # conv3 3->4 (+bias) + BN scale/bias + conv1 4->1 (+bias)
        assert r["params"] == 3 * 3 * 3 * WIDTH + WIDTH + 2 * WIDTH + WIDTH + 1
        # XLA counts 2 flops per in-bounds multiply-add: (3*16-2)^2 taps x 3 x 4 for the conv3, 16^2 x 4 for the
        # head; BN/ReLU/bias add elementwise work on top.
        conv_flops = 2 * ((3 * 16 - 2) ** 2 * 3 * WIDTH + 16 * 16 * WIDTH)
        assert conv_flops <= r["gflops_per_example"] * 1e9 <= 2 * conv_flops
        assert (r["latency_batch"], r["infer_batch"], r["train_batch"]) == (1, 4, 2)
        assert r["state_arrays"] == 8 and r["inference_args"] == "packed+graphs"  # 2 convs x (kernel, bias) + 4 BN arrays
        assert r["dp_devices"] == 2 and r["dp_batch_per_device"] == 2
        assert r["latency_ms_p10"] <= r["latency_ms"] <= r["latency_ms_p90"]
        assert r["infer_per_s_p10"] <= r["infer_per_s"] <= r["infer_per_s_p90"]
        assert r["infer_per_s"] == pytest.approx(4 / (r["infer_ms"] / 1e3))
        assert r["train_per_s"] == pytest.approx(2 / (r["train_step_ms"] / 1e3))
        assert r["train_pipelined_per_s"] == pytest.approx(2 / (r["train_pipelined_ms"] / 1e3))
        assert r["train_state_args"] == "packed" and r["dp_pipelined_per_s"] > 0
        assert r["dp_per_s"] == pytest.approx(4 / (r["dp_step_ms"] / 1e3))
        assert r["dp_scaling"] == pytest.approx(r["dp_per_s"] / (2 * r["train_per_s"]))
        assert r["train_step_memory_bytes"] > 0 and r["peak_memory_bytes"] == "n/a"  # CPU has no memory_stats
        assert min(r["latency_compile_s"], r["infer_compile_s"], r["train_compile_s"], r["dp_compile_s"]) > 0
    assert "cpu" in table and "img/s" in table and "x2 (" in table
    traces = list((tmp_path / "prof").rglob("*.xplane.pb"))
    assert {p.relative_to(tmp_path / "prof").parts[0] for p in traces} == {
        f"2d_{d}_bench_test_net_{m}" for d in ("fp32", "bf16") for m in ("latency", "infer", "train1", "train2")}


def test_benchmark_times_per_device_batchnorm_in_the_data_parallel_step(capsys, monkeypatch):
    groups = []
    set_groups = benchmark.layers.set_batchnorm_groups
    monkeypatch.setattr(benchmark.layers, "set_batchnorm_groups", lambda m, g: groups.append(g) or set_groups(m, g))
    report, _ = _run(capsys, "--ndim", "2", "--dtype", "fp32", "--size", "16", "--train_batch", "2", "--devices", "2",
                     "--measure", "train", "--batchnorm", "per_device")
    assert report["settings"]["batchnorm"] == "per_device" and groups == [2]  # the 1-device row stays global
    assert report["results"][0]["dp_devices"] == 2 and report["results"][0]["dp_per_s"] > 0


def test_benchmark_3d_trains_the_multiclass_task(capsys):
    # optax.adamw computes decay**count with a Python float and an int32 count, which strict promotion (the test
    # setting) rejects; the benchmark runs under JAX's default promotion.
    with jax.numpy_dtype_promotion("standard"):
        report, _ = _run(capsys, "--ndim", "3", "--dtype", "fp32", "--size", "8", "--measure", "train,infer",
                         "--no-pack_params", "--no-cuda_graphs")
    (r,) = report["results"]
    assert r["inference_args"] == "tree" and r["train_state_args"] == "tree"
    assert (r["ndim"], r["unit"], r["in_channels"], r["num_classes"]) == (3, "patches/s", 1, 14)
    assert (r["infer_batch"], r["train_batch"]) == (4, 1)
    assert "latency_ms" not in r and r["dp_per_s"] is None and r["train_per_s"] > 0


def test_pipelined_timing_waits_on_each_call_one_dispatch_later():
    events = []

    class Result:
        def __init__(self, i):
            self.i = i

        def block_until_ready(self):
            events.append(("wait", self.i))
            return self

    calls = iter(range(100))

    def call():
        i = next(calls)
        events.append(("call", i))
        return Result(i)

    times = benchmark.time_calls_pipelined(call, warmup=1, steps=3)
    assert len(times) == 3 and all(t >= 0 for t in times)
    # warm-up 0; then call i + 1 is dispatched before call i is waited on
    assert events == [("call", 0), ("wait", 0), ("call", 1), ("call", 2), ("wait", 1), ("call", 3), ("wait", 2),
                      ("call", 4), ("wait", 3), ("call", 5), ("wait", 4), ("wait", 5)]


def test_timing_statistics_are_percentiles_of_per_call_times():
    s = benchmark.timing_stats([0.001, 0.002, 0.003, 0.004, 0.005])
    assert s["median_ms"] == pytest.approx(3.0) and s["n"] == 5
    assert s["p10_ms"] == pytest.approx(1.4) and s["p90_ms"] == pytest.approx(4.6)  # linear interpolation


def test_time_calls_waits_for_each_call_and_skips_warmup():
    calls = []

    def call():
        calls.append(time.perf_counter())
        time.sleep(0.01 if len(calls) > 2 else 0.2)  # slow warm-up calls must not be timed
        return jnp.zeros(())

    times = benchmark.time_calls(call, warmup=2, steps=4)
    assert len(calls) == 6 and len(times) == 4
    assert all(0.01 <= t < 0.15 for t in times)


@pytest.mark.parametrize("argv, message", [
    (["--depthwise_impl", "nope"], "--depthwise_impl must be one of"),
    (["--ndim", "4"], "--ndim must be 2, 3"),
    (["--measure", "speed"], "--measure must be a subset"),
    (["--set", "dtype=float16"], "chosen by its own option"),
])
def test_benchmark_rejects_bad_options(capsys, argv, message):
    with pytest.raises(SystemExit):
        benchmark.parse_args(argv)
    assert message in capsys.readouterr().err


def test_benchmark_refuses_more_devices_than_present():
    args = benchmark.parse_args(["--devices", str(len(jax.local_devices()) + 1)])
    with pytest.raises(ValueError, match=r"--devices 3: only 2 local device\(s\)"):
        benchmark.run(args)


def test_peak_memory_is_not_available_on_cpu_and_compiled_memory_is():
    assert benchmark.peak_device_memory(jax.local_devices()) == "n/a"
    compiled = jax.jit(lambda x: jnp.sin(x) @ x).lower(jnp.ones((64, 64), jnp.float32)).compile()
    assert benchmark.compiled_memory_bytes(compiled) >= 2 * 64 * 64 * 4  # argument + output at least
    np.testing.assert_equal(benchmark._per_second(32, 8.0), 4000.0)


def test_packed_state_unpacks_to_every_leaf_inside_jit():
    from lgmsnet_jax import packing

    tree = {"a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": [jnp.ones((4,), jnp.bfloat16),
            jnp.full((2, 2), 7, jnp.int32), jnp.float32(3.5)], "c": jnp.zeros((0, 5)), "key": jax.random.key(3),
            "d": jnp.linspace(0, 1, 5, dtype=jnp.float32)}
    packed, spec = packing.pack(tree)
    assert sorted(k for k in packed if k != "_other") == ["bfloat16", "float32", "int32"]
    assert packed["float32"].shape == (6 + 1 + 0 + 5,) and len(packed["_other"]) == 1
    out = jax.jit(spec.unpack)(packed)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(out)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_targets_use_the_best_row_at_default_settings_only():
    def row(**kw):
        base = dict(ndim=2, dtype="fp32", depthwise_impl="xla", size=256, latency_batch=1, infer_batch=32,
                    train_batch=16, dp_batch_per_device=16, latency_ms=2.0, infer_per_s=3000.0, train_per_s=900.0,
                    dp_scaling=0.95)
        return base | kw

    rows = [row(), row(dtype="bf16", latency_ms=1.2, train_per_s=1100.0, infer_per_s=3900.0, dp_scaling=0.85),
            row(size=64, infer_per_s=90000.0),  # not the target's size: ignored
            row(ndim=3, size=96, infer_batch=4, train_batch=1, dp_batch_per_device=1, train_per_s=31.0,
                infer_per_s=150.0, latency_ms=9.0, dp_scaling=None)]
    t = benchmark.check_targets(rows)
    assert t["2d_train_img_per_s"] == {"value": 1100.0, "bound": 1000.0, "met": True, "row": "bf16/xla"}
    assert t["2d_latency_ms"]["value"] == 1.2 and t["2d_latency_ms"]["met"]
    assert t["2d_infer_img_per_s"]["value"] == 3900.0 and t["2d_infer_img_per_s"]["met"] is False
    assert t["2d_dp_scaling"]["value"] == 0.95 and t["2d_dp_scaling"]["row"] == "fp32/xla"
    assert t["3d_train_patches_per_s"]["met"] and t["3d_infer_patches_per_s"]["met"] is False
    assert benchmark.check_targets([row(size=64)])["2d_train_img_per_s"]["met"] is None


def test_config_depthwise_impl_is_what_the_configs_train_with():
    """The benchmark's default rows measure the depthwise path the 2D and 3D configs actually use."""
    from configs import acdc, btcv, busi, kits23, kvasir
    for cfg, ndim in ((kvasir, 2), (busi, 2), (btcv, 3), (acdc, 3), (kits23, 3)):
        assert cfg.get_config().model.depthwise_impl == benchmark.CONFIG_DEPTHWISE_IMPL[ndim], cfg.__name__
    assert benchmark.parse_args([]).impls == []
