"""lgmsnet_jax.trace_summary: step attribution, busy time as a union over streams, line choice, errors."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from lgmsnet_jax import trace_summary

HOST, GPU = 1, 2


def _meta(pid, pname, threads):
    ev = [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": pname}}]
    ev += [{"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": n}} for tid, n in threads]
    return ev


def _x(pid, tid, name, ts, dur, **args):
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur, "args": args}


def _gpu_trace():
    ev = _meta(HOST, "/host:CPU", [(10, "python")])
    ev += _meta(GPU, "/device:GPU:0", [(7, "Stream #7(Compute)"), (8, "Stream #8(Compute)"), (9, "XLA Ops")])
    ev += [_x(HOST, 10, "step", 0, 100, step_num=0), _x(HOST, 10, "step", 100, 100, step_num=1),
           _x(HOST, 10, "PjitFunction(f)", 1, 5)]
    # Step 0: conv on stream 7 [10, 30], fusion on stream 8 [20, 40] overlapping it; step 1: conv [110, 120].
    ev += [_x(GPU, 7, "conv", 10, 20), _x(GPU, 8, "fusion", 20, 20), _x(GPU, 7, "conv", 110, 10)]
    # The derived "XLA Ops" line repeats the kernels; with stream lines present it must not be counted.
    ev += [_x(GPU, 9, "convolution.1", 10, 20), _x(GPU, 9, "fusion.2", 20, 20)]
    # A kernel after the last step window belongs to no step.
    ev.append(_x(GPU, 7, "conv", 500, 50))
    return ev


def _write(path, events):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)
    return path


def test_per_step_kernels_busy_union_and_top_kernels(tmp_path, capsys):
    _write(tmp_path / "prof" / "2d_bf16_latency" / "plugins" / "profile" / "t" / "vm.trace.json.gz", _gpu_trace())
    assert trace_summary.main([str(tmp_path / "prof"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["2d_bf16_latency"]["/device:GPU:0"]
    assert d["steps"] == 2 and d["wall_ms"] == pytest.approx(0.1)
    assert d["kernels_per_step"] == 1.5                      # median of 2 and 1 (the XLA Ops line left out)
    assert d["kernel_ms"] == pytest.approx(0.025)            # median of 40 and 10 us
    assert d["busy_ms"] == pytest.approx(0.020)              # union: 30 us (overlap counted once) and 10 us
    assert d["busy_share"] == pytest.approx(0.2)
    assert d["kernel_us_median"] == 20
    assert [(t["name"], t["per_step"]) for t in d["top"]] == [("conv", 1.0), ("fusion", 0.5)]
    assert d["top"][0]["ms_per_step"] == pytest.approx(0.015) and d["top"][0]["share"] == pytest.approx(0.6)
    assert trace_summary.main([str(tmp_path / "prof")]) == 0
    table = capsys.readouterr().out
    assert "2d_bf16_latency on /device:GPU:0: 2 steps" in table and "busy 0.020 ms (20% of wall)" in table


def test_xla_ops_line_is_used_where_a_device_has_no_streams(tmp_path):
    ev = [e for e in _gpu_trace() if e.get("tid") not in (7, 8)]
    d = trace_summary.summarize(ev)["/device:GPU:0"]
    assert d["steps"] == 1 and d["kernels_per_step"] == 2 and {t["name"] for t in d["top"]} == {"convolution.1",
                                                                                                 "fusion.2"}


def test_a_cpu_trace_is_refused_with_the_processes_it_holds(tmp_path, capsys):
    f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
    x = jnp.ones((64, 64))
    f(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path / "log")):
        for i in range(2):
            with jax.profiler.StepTraceAnnotation("step", step_num=i):
                f(x).block_until_ready()
    assert trace_summary.main([str(tmp_path / "log")]) == 1
    err = capsys.readouterr().err
    assert "no device kernel lines" in err and "/host:CPU" in err


def test_a_trace_without_steps_names_the_fix(tmp_path):
    ev = [e for e in _gpu_trace() if "step_num" not in e.get("args", {})]
    with pytest.raises(trace_summary.TraceError, match="StepTraceAnnotation"):
        trace_summary.summarize(ev)


def test_top_table_groups_by_jax_operation_or_hlo_instruction(tmp_path, capsys):
    """GPU kernels carry their JAX name stack and HLO instruction; --by groups on them (kernel name as fallback)."""
    ev = _meta(HOST, "/host:CPU", [(10, "python")]) + _meta(GPU, "/device:GPU:0", [(7, "Stream #7(Compute)")])
    ev.append(_x(HOST, 10, "step", 0, 100, step_num=0))
    fwd, bwd = "jit(f)/jvp()/conv_general_dilated", "jit(f)/transpose(jvp())/conv_general_dilated"
    ev += [_x(GPU, 7, "implicit_gemm", 0, 10, hlo_op="cudnn-conv.1"),
           _x(GPU, 7, "implicit_gemm", 10, 30, hlo_op="cudnn-conv-bw-filter.2"),
           _x(GPU, 7, "grouped_direct", 40, 25, hlo_op="cudnn-conv-bw-input.3"),
           _x(GPU, 7, "Memset", 70, 5)]
    for e, stack in zip(ev[-4:-1], (fwd, bwd, bwd)):
        e["args"]["name"] = stack  # the kernel event's own "name" arg, as xprof writes it
    top = lambda by: [(t["name"], t["ms_per_step"] * 1e3) for t in trace_summary.summarize(ev, by=by)  # noqa: E731
                      ["/device:GPU:0"]["top"]]
    assert top("kernel") == [("implicit_gemm", pytest.approx(40)), ("grouped_direct", pytest.approx(25)),
                             ("Memset", pytest.approx(5))]
    assert top("op") == [(bwd, pytest.approx(55)), (fwd, pytest.approx(10)), ("Memset", pytest.approx(5))]
    assert [n for n, _ in top("hlo")] == [f"cudnn-conv-bw-filter.2 ({bwd})", f"cudnn-conv-bw-input.3 ({bwd})",
                                          f"cudnn-conv.1 ({fwd})", "Memset"]
    with pytest.raises(ValueError, match="by must be one of"):
        trace_summary.summarize(ev, by="stream")
    _write(tmp_path / "p" / "lat" / "t.trace.json.gz", ev)
    assert trace_summary.main([str(tmp_path / "p"), "--by", "op"]) == 0
    out = capsys.readouterr().out
    assert "  op" in out and bwd in out
