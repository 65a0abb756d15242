"""Speed benchmark of LGMSNet on the local device(s): parameters, FLOPs, inference latency and throughput,
training-step throughput (1 device and data-parallel over N), compiled and peak device memory, fp32 and bf16.

    python -m lgmsnet_jax.benchmark [--ndim 2|3|2,3] [--dtype fp32|bf16|both] [--depthwise_impl xla|...|all]
        [--devices N [--batchnorm per_device]] [--steps 100 --warmup 10] [--json] [--output FILE]
        [--profile DIR] [--no-pack_params] [--no-cuda_graphs] [--set KEY=JSON ...]

Protocol: fixed random inputs already on the device, one jitted function per measurement (compiled before
timing, compile time reported); inference is compiled as `predict` compiles it: the model state packed into one
buffer per dtype and the convolutions in CUDA graphs (packing.py; the state tree's ~330 call arguments and
~285 separate kernel launches cost ~2 ms per batch-1 call, BENCHMARKS.md); `--warmup` untimed calls, then
`--steps` calls each timed to `jax.block_until_ready`; medians with p10/p90. The training step is the project's
own, run as train.py runs it (`training.step.jit_packed_train`: the task's loss, the recipe's optimizer, the state
packed and donated): 2D BCE+Dice with SGD+poly, 3D DiceCE with AdamW. Training is timed twice: each step waited
for (`train_per_s`, the targets' figure), and "pipelined" (`train_pipelined_per_s`: the next step dispatched before
waiting on the last, as train.py's loop does, so host work overlaps the device's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lgmsnet_jax import packing, xla_options
from lgmsnet_jax.models import count_params, gms, layers
from lgmsnet_jax.models.lms import LMS_DEPTHWISE_IMPLS
from lgmsnet_jax.training import builders, optim, state as state_lib, step as step_lib, tasks

log = logging.getLogger("lgmsnet_jax.benchmark")

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


# The depthwise path configs/ train with: 2D the plain XLA conv (configs/common.py), 3D the FFT (configs/btcv.py).
CONFIG_DEPTHWISE_IMPL = {2: "xla", 3: "fft"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one benchmark row measures (defaults: the speed issue's targets, spec device/README.md)."""

    ndim: int
    size: int
    latency_batch: int
    infer_batch: int
    train_batch: int
    in_channels: int
    num_classes: int
    task: str
    optimizer: str
    schedule: str
    lr: float
    weight_decay: float
    unit: str


# 2D: the reference recipe (SGD momentum 0.9, coupled L2 1e-4, poly; spec §5.1), batch 16 at 256x256.
# 3D: main3d.py (AdamW 1e-3, wd 1e-5, warm-up cosine; spec §6), one 96^3 patch per step, 14 BTCV classes.
SETTINGS = {
    2: Setting(2, 256, 1, 32, 16, 3, 1, "binary_seg_2d", "sgd", "poly", 0.01, 1e-4, "img/s"),
    3: Setting(3, 96, 1, 4, 1, 1, 14, "seg_3d", "adamw", "warmup_cosine", 1e-3, 1e-5, "patches/s"),
}


# The speed issue's targets, for the default sizes and batches only (2D 256^2: latency batch 1, inference batch 32,
# train batch 16 per device; 3D 96^3: inference batch 4, train batch 1): (name, ndim, row field, better, bound).
TARGETS = (
    ("2d_train_img_per_s", 2, "train_per_s", "max", 1000.0),
    ("2d_latency_ms", 2, "latency_ms", "min", 1.5),
    ("2d_infer_img_per_s", 2, "infer_per_s", "max", 4000.0),
    ("3d_train_patches_per_s", 3, "train_per_s", "max", 30.0),
    ("3d_infer_patches_per_s", 3, "infer_per_s", "max", 200.0),
    ("2d_dp_scaling", 2, "dp_scaling", "max", 0.90),
)


def check_targets(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The best row per target (any dtype / implementation) and whether it meets the bound.

    Only rows measured at the default size and batches count; a target without such a row is reported with
    value None and met None.
    """
    out = {}
    for name, ndim, field, better, bound in TARGETS:
        d = SETTINGS[ndim]
        batch_field = {"latency_ms": "latency_batch", "infer_per_s": "infer_batch"}.get(field, "train_batch")
        default_batch = {"latency_batch": d.latency_batch, "infer_batch": d.infer_batch,
                         "train_batch": d.train_batch}[batch_field]
        rows = [r for r in results if r["ndim"] == ndim and r.get(field) is not None and r["size"] == d.size
                and r.get(batch_field if field != "dp_scaling" else "dp_batch_per_device") == default_batch]
        if not rows:
            out[name] = {"value": None, "bound": bound, "met": None, "row": None}
            continue
        pick = (max if better == "max" else min)(rows, key=lambda r: r[field])
        value = pick[field]
        out[name] = {"value": value, "bound": bound, "met": bool(value >= bound if better == "max" else value <= bound),
                     "row": f"{pick['dtype']}/{pick['depthwise_impl']}"}
    return out


def _task(name: str) -> tasks.Task:
    if name == "seg_3d":
        import lgmsnet_jax.training.seg3d  # noqa: F401,PLC0415  registers "seg_3d" (pulls in the 3D data code)
    return tasks.get_task(name)


def timing_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p10 and p90 of per-call times, in milliseconds."""
    t = np.asarray(seconds, np.float64) * 1e3
    return {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
            "p90_ms": float(np.percentile(t, 90)), "n": int(t.size)}


def time_calls(call: Callable[[], Any], *, warmup: int, steps: int) -> list[float]:
    """Wall time (s) of `steps` calls of `call`, each waited for with jax.block_until_ready, after `warmup` calls."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
        jax.block_until_ready(call())
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        out.append(time.perf_counter() - t0)
    return out


def time_calls_pipelined(call: Callable[[], Any], *, warmup: int, steps: int) -> list[float]:
    """Seconds between successive completions of `call` with the next call dispatched before waiting on the last.

    This is how train.py's loop runs its steps (it fetches step k's metrics after dispatching step k + 1), so the
    host's dispatch work overlaps the device's; `call` must return something that stays valid after the next call
    (the step's metrics, not the donated state).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
        jax.block_until_ready(call())
    pending = call()
    out = []
    t_last = None
    for _ in range(steps + 1):
        nxt = call()
        jax.block_until_ready(pending)
        now = time.perf_counter()
        if t_last is not None:  # the first interval would time only a dispatch
            out.append(now - t_last)
        t_last, pending = now, nxt
    jax.block_until_ready(pending)
    return out


def _compile(jitted: Callable, *args) -> tuple[Any, float, Any]:
    """(compiled executable, seconds spent tracing+compiling, lowered)."""
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0, lowered


def _cost(lowered: Any) -> dict:
    ca = lowered.cost_analysis()
    return (ca[0] if isinstance(ca, list) else ca) or {}


def compiled_memory_bytes(compiled: Any) -> int | None:
    """XLA's memory estimate of one compiled program: its peak if reported, else arguments + outputs + temporaries."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  some backends do not implement it
        return None
    if ma is None:
        return None
    peak = int(getattr(ma, "peak_memory_in_bytes", 0) or 0)
    if peak > 0:
        return peak
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes)


def peak_device_memory(devices: Sequence[jax.Device]) -> int | str:
    """Largest `peak_bytes_in_use` over `devices` since the process started, or "n/a" (e.g. on CPU)."""
    peaks = []
    for d in devices:
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if not stats or "peak_bytes_in_use" not in stats:
            return "n/a"
        peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks)


def device_info() -> dict[str, Any]:
    """The accelerator this process runs on, named, with the software that drives it."""
    d = jax.devices()[0]
    import jaxlib  # noqa: PLC0415
    return {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "matmul_precision": str(jax.config.jax_default_matmul_precision),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _random_batch(s: Setting, batch: int, key: jax.Array, sharding: Any = None) -> dict[str, jax.Array]:
    shape = (batch,) + (s.size,) * s.ndim
    k1, k2 = jax.random.split(key)
    image = jax.random.normal(k1, shape + (s.in_channels,), jnp.float32)
    if s.num_classes == 1:
        mask = (jax.random.uniform(k2, shape + (1,)) > 0.5).astype(jnp.float32)
    else:
        mask = jax.random.randint(k2, shape + (1,), 0, s.num_classes, jnp.int32)
    out = {"image": image, "mask": mask}
    return jax.device_put(out, sharding) if sharding is not None else out


@contextlib.contextmanager
def _maybe_trace(profile_dir: str | None, name: str):
    if profile_dir is None:
        yield
        return
    path = pathlib.Path(profile_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(path)), jax.profiler.TraceAnnotation(name):
        yield


def _measure(label: str, call: Callable[[], Any], args: argparse.Namespace) -> dict[str, float]:
    stats = timing_stats(time_calls(call, warmup=args.warmup, steps=args.steps))
    # Logged as soon as measured: a run cut by a time limit still shows what it got.
    log.info("%s: median %.3f ms (p10 %.3f, p90 %.3f, n %d)", label, stats["median_ms"], stats["p10_ms"],
             stats["p90_ms"], stats["n"])
    if args.profile:
        with _maybe_trace(args.profile, label):
            for i in range(args.profile_steps):
                with jax.profiler.StepTraceAnnotation(label, step_num=i):
                    jax.block_until_ready(call())
    return stats


def _inference(graphdef: nnx.GraphDef, state: nnx.State, s: Setting, batch: int, label: str,
               args: argparse.Namespace, key: jax.Array) -> tuple[dict, Any]:
    if args.pack_params:
        # One buffer per dtype instead of one argument per array: less host time per call (packing.py).
        state, spec = packing.pack(state)
        unpack = spec.unpack
    else:
        unpack = lambda st: st  # noqa: E731

    def forward(st, x):
        return nnx.merge(graphdef, unpack(st))(x, train=False)

    x = _random_batch(s, batch, key)["image"]
    options = xla_options.inference(s.ndim) if args.cuda_graphs else None  # as `predict` compiles it
    compiled, compile_s, lowered = _compile(jax.jit(forward, compiler_options=options), state, x)
    stats = _measure(label, lambda: compiled(state, x), args)
    return {"batch": batch, "compile_s": compile_s, **stats}, lowered


def _train(model: nnx.Module, s: Setting, batch_per_device: int, devices: Sequence[jax.Device], label: str,
           args: argparse.Namespace, key: jax.Array) -> dict:
    task = _task(s.task)
    # A long schedule: the benchmark never reaches its end, and poly/cosine cost the same at any step.
    schedule = optim.build_schedule(s.schedule, lr=s.lr, steps_per_epoch=1000, epochs=1000)
    tx = optim.build_optimizer(s.optimizer, schedule, weight_decay=s.weight_decay)
    graphdef, state = state_lib.create_train_state(model, tx, seed=0)
    step_args = dict(task=task, tx=tx, schedule=schedule, compiler_options=xla_options.training(s.ndim))
    n = len(devices)
    if n == 1:
        data = _random_batch(s, batch_per_device, key)
        state = jax.device_put(state, devices[0])
    else:
        mesh = Mesh(np.array(devices), ("data",))
        repl, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        step_args.update(state_sharding=repl, batch_sharding=rows, replicated=repl)
        data = _random_batch(s, batch_per_device * n, key, rows)
        state = jax.device_put(state, repl)
    if args.pack_params:  # the step as train.py's loop runs it: the state packed into a few buffers
        packed_train = step_lib.jit_packed_train(graphdef, state, **step_args)
        train, state = packed_train.step, packed_train.pack(state)
    else:
        train, _ = step_lib.jit_steps(graphdef, **step_args)
    compiled, compile_s, _ = _compile(train, state, data)
    box = [state]

    def call():
        box[0], metrics = compiled(box[0], data)
        return box[0], metrics

    stats = _measure(label, call, args)
    piped = timing_stats(time_calls_pipelined(lambda: call()[1], warmup=2, steps=args.steps))
    log.info("%s, pipelined as train.py: median %.3f ms (p10 %.3f, p90 %.3f)", label, piped["median_ms"],
             piped["p10_ms"], piped["p90_ms"])
    loss = float(call()[1]["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{label}: training loss is {loss} on random data; the step is broken")
    return {"batch": batch_per_device * n, "devices": n, "compile_s": compile_s,
            "memory_bytes": compiled_memory_bytes(compiled), "pipelined_ms": piped["median_ms"], **stats}


def _per_second(batch: int, ms: float) -> float:
    return batch / (ms / 1e3)


def benchmark_row(ndim: int, dtype: str, depthwise_impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one (ndim, dtype, depthwise_impl) configuration.

    Returns:
      A flat dict: ndim, dtype, depthwise_impl, attention_impl, size, unit, in_channels, num_classes, params,
      state_arrays, inference_args, gflops_per_example; latency_{batch, ms, ms_p10, ms_p90, compile_s};
      infer_{batch, per_s, per_s_p10, per_s_p90, ms, compile_s}; train_{batch, per_s, per_s_p10, per_s_p90, step_ms,
      pipelined_per_s, pipelined_ms, compile_s, step_memory_bytes}; dp_{devices, batch_per_device, per_s, step_ms,
      pipelined_per_s, scaling, compile_s} (None with
      --devices 1); peak_memory_bytes (the device's peak since the process started, or "n/a"). Groups left out
      of --measure are absent.
    """
    s = dataclasses.replace(SETTINGS[ndim], **{k: v for k, v in (
        ("size", args.size), ("latency_batch", args.latency_batch), ("infer_batch", args.infer_batch),
        ("train_batch", args.train_batch)) if v is not None})
    label = f"{ndim}d_{dtype}_{depthwise_impl}" if args.model == "lgmsnet" else f"{ndim}d_{dtype}_{args.model}"
    kwargs = dict(args.model_kwargs, dtype=jnp.dtype(DTYPES[dtype]).name)
    if args.model == "lgmsnet":
        kwargs.update(depthwise_impl=depthwise_impl, attention_impl=args.attention_impl)
        attention_impl = gms.effective_attention_impl(args.attention_impl, DTYPES[dtype])  # the path that is timed
    else:
        depthwise_impl = attention_impl = "n/a"  # other models have no such options
    # train.py's own model builder, so the benchmark measures the model exactly as training builds it.
    config = ml_collections.ConfigDict({"model_name": args.model, "ndim": ndim, "in_channels": s.in_channels,
                                        "num_classes": s.num_classes, "seed": 0, "model": kwargs})
    model = builders.build_model(config)
    row: dict[str, Any] = {"ndim": ndim, "dtype": dtype, "depthwise_impl": depthwise_impl,
                           "attention_impl": attention_impl, "size": s.size, "unit": s.unit,
                           "in_channels": s.in_channels, "num_classes": s.num_classes,
                           "params": count_params(model), "state_arrays": len(jax.tree.leaves(nnx.state(model))),
                           "inference_args": ("packed" if args.pack_params else "tree")
                           + ("+graphs" + ("+ndhwc" if ndim == 3 else "") if args.cuda_graphs else ""),
                           "train_state_args": "packed" if args.pack_params else "tree"}
    key = jax.random.key(0)
    want = set(args.measure)
    # Inference runs on a copy: the training state below is donated, which deletes its buffers.
    gd_eval, st_eval = nnx.split(model)
    st_eval = jax.tree.map(jnp.copy, st_eval)
    one = _random_batch(s, 1, key)["image"]
    flops = _cost(jax.jit(lambda st, x: nnx.merge(gd_eval, st)(x, train=False)).lower(st_eval, one))
    row["gflops_per_example"] = float(flops.get("flops", float("nan"))) / 1e9
    if "latency" in want:
        log.info("%s: inference latency, batch %d", label, s.latency_batch)
        r, _ = _inference(gd_eval, st_eval, s, s.latency_batch, f"{label}_latency", args, key)
        row.update(latency_batch=r["batch"], latency_ms=r["median_ms"], latency_ms_p10=r["p10_ms"],
                   latency_ms_p90=r["p90_ms"], latency_compile_s=r["compile_s"])
    if "infer" in want:
        log.info("%s: inference throughput, batch %d", label, s.infer_batch)
        r, _ = _inference(gd_eval, st_eval, s, s.infer_batch, f"{label}_infer", args, key)
        row.update(infer_batch=r["batch"], infer_per_s=_per_second(r["batch"], r["median_ms"]),
                   infer_per_s_p10=_per_second(r["batch"], r["p90_ms"]),
                   infer_per_s_p90=_per_second(r["batch"], r["p10_ms"]), infer_ms=r["median_ms"],
                   infer_compile_s=r["compile_s"])
    del gd_eval, st_eval
    if "train" in want:
        graphdef, variables = nnx.split(model)
        runs = [1] + ([args.devices] if args.devices > 1 else [])
        for n in runs:
            devices = jax.local_devices()[:n]
            log.info("%s: train step, %d device(s) x batch %d", label, n, s.train_batch)
            # Each run trains a fresh copy: the step donates (deletes) the state it is given.
            fresh = nnx.merge(graphdef, jax.tree.map(jnp.copy, variables))
            if args.batchnorm == "per_device" and n > 1 and not layers.set_batchnorm_groups(fresh, n):
                raise ValueError(f"--batchnorm per_device: model {args.model!r} has no BatchNorm layers")
            r = _train(fresh, s, s.train_batch, devices, f"{label}_train{n}", args, key)
            thr = _per_second(r["batch"], r["median_ms"])
            if n == 1:
                row.update(train_batch=r["batch"], train_per_s=thr,
                           train_per_s_p10=_per_second(r["batch"], r["p90_ms"]),
                           train_per_s_p90=_per_second(r["batch"], r["p10_ms"]), train_step_ms=r["median_ms"],
                           train_pipelined_per_s=_per_second(r["batch"], r["pipelined_ms"]),
                           train_pipelined_ms=r["pipelined_ms"],
                           train_compile_s=r["compile_s"], train_step_memory_bytes=r["memory_bytes"])
            else:
                row.update(dp_devices=n, dp_batch_per_device=s.train_batch, dp_per_s=thr,
                           dp_step_ms=r["median_ms"], dp_pipelined_per_s=_per_second(r["batch"], r["pipelined_ms"]),
                           dp_scaling=thr / (n * row["train_per_s"]),
                           dp_compile_s=r["compile_s"])
        if args.devices == 1:
            row.update(dp_devices=1, dp_batch_per_device=s.train_batch, dp_per_s=None, dp_step_ms=None,
                       dp_pipelined_per_s=None, dp_scaling=None, dp_compile_s=None)
    row["peak_memory_bytes"] = peak_device_memory(jax.local_devices()[:max(args.devices, 1)])
    return row


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def _mib(v: Any) -> str:
    return v if isinstance(v, str) else ("-" if v is None else f"{v / 2**20:,.0f}")


def format_table(report: dict[str, Any]) -> str:
    """A readable fixed-width table of the rows of `report` (the JSON object `run` returns)."""
    d = report["device"]
    lines = [f"device: {d['device_kind']} ({d['platform']}, {d['device_count']} device(s)), jax {d['jax']}"]
    head = (f"{'nd':>2} {'dtype':>5} {'dw impl':>14} {'params':>10} {'GFLOP':>7} {'lat ms':>12} "
            f"{'infer/s':>14} {'train/s (piped)':>22} {'DP/s (scale)':>20} {'train MiB':>9} {'peak MiB':>9}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lat = f"{_fmt(r.get('latency_ms'), '.2f')} @{r.get('latency_batch', '-')}"
        inf = f"{_fmt(r.get('infer_per_s'), ',.0f')} @{r.get('infer_batch', '-')}"
        trn = (f"{_fmt(r.get('train_per_s'), ',.1f')} ({_fmt(r.get('train_pipelined_per_s'), ',.0f')}) "
               f"@{r.get('train_batch', '-')}")
        dp = "-"
        if r.get("dp_per_s") is not None:
            dp = f"{r['dp_per_s']:,.1f} x{r['dp_devices']} ({100 * r['dp_scaling']:.0f}%)"
        lines.append(f"{r['ndim']:>2} {r['dtype']:>5} {r['depthwise_impl']:>14} {r['params']:>10,} "
                     f"{_fmt(r['gflops_per_example'], '.2f'):>7} {lat:>12} {inf:>14} {trn:>22} {dp:>20} "
                     f"{_mib(r.get('train_step_memory_bytes')):>9} {_mib(r['peak_memory_bytes']):>9}")
    checked = {k: v for k, v in report.get("targets", {}).items() if v["met"] is not None}
    if checked:
        lines.append("targets: " + "; ".join(f"{k} {v['value']:,.2f} ({'met' if v['met'] else 'MISSED'}, bound "
                                             f"{v['bound']:g}, {v['row']})" for k, v in checked.items()))
    units = sorted({r["unit"] for r in report["results"]})
    lines.append(f"throughput in {' / '.join(units)} (2D / 3D); median of {report['settings']['steps']} timed calls "
                 f"after {report['settings']['warmup']} warm-up calls; 'piped': steps dispatched one ahead, as "
                 f"train.py runs them; 'train MiB' = XLA's estimate for the step")
    return "\n".join(lines)


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=JSON, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lgmsnet_jax.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--ndim", default="2", help="2, 3 or 2,3")
    p.add_argument("--dtype", default="both", choices=("fp32", "bf16", "both"),
                   help="compute dtype (parameters stay float32)")
    p.add_argument("--size", type=int, default=None, help="spatial size (default 256 in 2D, 96 in 3D)")
    p.add_argument("--latency_batch", type=int, default=None, help="latency batch (default 1)")
    p.add_argument("--infer_batch", type=int, default=None, help="inference throughput batch (2D 32, 3D 4)")
    p.add_argument("--train_batch", type=int, default=None, help="train batch per device (2D 16, 3D 1)")
    p.add_argument("--steps", type=int, default=100, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    p.add_argument("--depthwise_impl", default="config",
                   help=f"one of {LMS_DEPTHWISE_IMPLS}, 'all', or 'config' (default: what configs/ train with, "
                        f"{CONFIG_DEPTHWISE_IMPL})")
    p.add_argument("--attention_impl", default="xla", choices=gms.ATTENTION_IMPLS)
    p.add_argument("--devices", type=int, default=1,
                   help="also time data-parallel training over this many local devices (same batch per device)")
    p.add_argument("--batchnorm", default="global", choices=layers.BATCHNORM_MODES,
                   help="data-parallel BatchNorm statistics: over the global batch, or per device (train.py's "
                        "config.batchnorm)")
    p.add_argument("--pack_params", action=argparse.BooleanOptionalAction, default=True,
                   help="pass the model state (inference) and the train state (training) as one buffer per "
                        "dtype, as `predict` and train.py do (default); --no-pack_params passes the state trees "
                        "(one argument per array, ~1 ms more host time per inference call, more per train step)")
    p.add_argument("--cuda_graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="inference: record convolutions into CUDA graphs too, as `predict` does (default; "
                        "xla_options.inference, which in 3D also forces NDHWC convs); "
                        "--no-cuda_graphs keeps XLA's defaults")
    p.add_argument("--measure", default="latency,infer,train", help="subset of latency,infer,train")
    p.add_argument("--model", default="lgmsnet", help="registered model name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="model keyword override, e.g. --set dims=[8,8,16,16,16]")
    p.add_argument("--matmul_precision", default=None, choices=("default", "high", "highest"),
                   help="jax_default_matmul_precision (default: JAX's; on GPU fp32 convs may use TF32)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (table goes to stderr)")
    p.add_argument("--output", default=None, help="also write the JSON object to this file")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="write a jax.profiler trace of --profile_steps extra calls per measurement under DIR")
    p.add_argument("--profile_steps", type=int, default=5)
    args = p.parse_args(argv)
    args.ndims = _int_list(args.ndim)
    if not args.ndims or any(n not in SETTINGS for n in args.ndims):
        p.error(f"--ndim must be 2, 3 or 2,3; got {args.ndim!r}")
    args.dtypes = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    args.impls = (list(LMS_DEPTHWISE_IMPLS) if args.depthwise_impl == "all"
                  else [] if args.depthwise_impl == "config" else [args.depthwise_impl])
    if any(i not in LMS_DEPTHWISE_IMPLS for i in args.impls):
        p.error(f"--depthwise_impl must be one of {LMS_DEPTHWISE_IMPLS}, 'all' or 'config'; "
                f"got {args.depthwise_impl!r}")
    args.measure = [m for m in args.measure.split(",") if m]
    if not args.measure or any(m not in ("latency", "infer", "train") for m in args.measure):
        p.error(f"--measure must be a subset of latency,infer,train; got {args.measure}")
    if args.devices < 1:
        p.error("--devices must be >= 1")
    try:
        args.model_kwargs = _parse_set(args.set)
    except ValueError as e:
        p.error(str(e))
    for k in ("dtype", "depthwise_impl", "attention_impl", "ndim", "in_channels", "num_classes"):
        if k in args.model_kwargs:
            p.error(f"--set {k}=... is chosen by its own option, not --set")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All rows for the parsed options, as one JSON-able dict {"device", "settings", "results"}."""
    if args.matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    if args.devices > len(jax.local_devices()):
        raise ValueError(f"--devices {args.devices}: only {len(jax.local_devices())} local device(s) "
                         f"({jax.local_devices()[0].device_kind})")
    settings = {k: getattr(args, k) for k in ("steps", "warmup", "devices", "measure", "attention_impl", "model",
                                              "pack_params", "cuda_graphs", "batchnorm",
                                              "size", "latency_batch", "infer_batch", "train_batch")}
    settings["model_kwargs"] = args.model_kwargs
    results = []
    for ndim in args.ndims:
        for dtype in args.dtypes:
            for impl in args.impls or [CONFIG_DEPTHWISE_IMPL[ndim]]:
                results.append(benchmark_row(ndim, dtype, impl, args))
    return {"device": device_info(), "settings": settings, "results": results, "targets": check_targets(results)}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    args = parse_args(argv)
    # Our progress at INFO; libraries (Orbax logs every restore) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    report = run(args)
    text = json.dumps(report, indent=1, default=str)
    if args.output:
        pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.output).write_text(text + "\n")
    table = format_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(text)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
