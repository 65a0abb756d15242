"""Where a training step's time goes: per-stage forward+backward times, and the LMS depthwise variants side by side.

    python -m lgmsnet_jax.block_benchmark [--ndim 2|3] [--dtype fp32|bf16|both] [--impls xla,tiled5,...]
        [--attention_impl xla|dot_product|cudnn] [--stages decoder4,...] [--steps 30 --warmup 5] [--output FILE]

Two tables, both at the training batch of `lgmsnet_jax.benchmark` (2D: 16 x 256^2, 3D: 1 x 96^3):
- stages: every stage of LGMSNet (stem, encoder1-5, up/decoder blocks; the 1x1 head is not a stage) timed alone,
  train mode, forward and forward+backward (gradients w.r.t. its parameters and its input), for each depthwise
  implementation. Their sum against the full train step of `lgmsnet_jax.benchmark` leaves loss + optimizer +
  launch overhead.
- lms: the LMS multi-scale depthwise part alone (`LMSBlock._multiscale`, the per-kernel-chunk convs and their
  concatenation) at each encoder resolution, forward and forward+backward, per implementation.
Each function is jitted and compiled before timing; medians of `--steps` calls after `--warmup` calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.benchmark import DTYPES, SETTINGS, device_info, time_calls, timing_stats
from lgmsnet_jax.models import build_model
from lgmsnet_jax.models.gms import ATTENTION_IMPLS
from lgmsnet_jax.models.lgmsnet import LGMSNet
from lgmsnet_jax.models.lms import LMS_DEPTHWISE_IMPLS, EncoderStage

log = logging.getLogger("lgmsnet_jax.block_benchmark")


def stage_inputs(model: LGMSNet, x: jax.ShapeDtypeStruct) -> list[tuple[str, jax.ShapeDtypeStruct]]:
    """(stage name, input shape/dtype) of every stage in call order, read from an abstract forward pass."""
    seen: list[tuple[str, jax.ShapeDtypeStruct]] = []
    original = LGMSNet._stage

    def recording(self, name, a, train, capture):
        seen.append((name, jax.ShapeDtypeStruct(a.shape, a.dtype)))
        return original(self, name, a, train, capture)

    graphdef, state = nnx.split(model)
    with mock.patch.object(LGMSNet, "_stage", recording):
        jax.eval_shape(lambda st, a: nnx.merge(graphdef, st)(a, train=True), state, x)
    return seen


def _time_module(module: nnx.Module, call, x: jax.ShapeDtypeStruct, args: argparse.Namespace,
                 key: jax.Array) -> dict[str, float]:
    """Forward and forward+backward medians (ms) of `call(module, x)` on random data."""
    graphdef, state = nnx.split(module)
    kx, kg = jax.random.split(key)
    a = jax.random.normal(kx, x.shape, jnp.float32).astype(x.dtype)
    out = jax.eval_shape(lambda st, v: call(nnx.merge(graphdef, st), v), state, a)
    g = jax.random.normal(kg, out.shape, jnp.float32).astype(out.dtype)

    def forward(st, v):
        return call(nnx.merge(graphdef, st), v)

    def backward(st, v, ct):
        y, vjp = jax.vjp(forward, st, v)
        return y, vjp(ct)

    fwd = jax.jit(forward).lower(state, a).compile()
    bwd = jax.jit(backward).lower(state, a, g).compile()
    f = timing_stats(time_calls(lambda: fwd(state, a), warmup=args.warmup, steps=args.steps))
    b = timing_stats(time_calls(lambda: bwd(state, a, g), warmup=args.warmup, steps=args.steps))
    return {"fwd_ms": f["median_ms"], "fwd_bwd_ms": b["median_ms"]}


def _model(ndim: int, dtype: str, impl: str, attention_impl: str) -> LGMSNet:
    s = SETTINGS[ndim]
    return build_model("lgmsnet", ndim=ndim, in_channels=s.in_channels, num_classes=s.num_classes, seed=0,
                       dtype=jnp.dtype(DTYPES[dtype]).name, depthwise_impl=impl, attention_impl=attention_impl)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both tables for the parsed options as one JSON-able dict; rows are also logged as they finish."""
    s = dataclasses.replace(SETTINGS[args.ndim], **{k: v for k, v in (("size", args.size),
                                                                      ("train_batch", args.batch)) if v})
    key = jax.random.key(0)
    stages, lms = [], []
    report = {"device": device_info(), "settings": {"ndim": args.ndim, "batch": s.train_batch, "size": s.size,
                                                    "steps": args.steps, "warmup": args.warmup},
              "stages": stages, "lms": lms}
    for dtype in args.dtypes:
        for impl in args.impls:
            model = _model(args.ndim, dtype, impl, args.attention_impl)
            x = jax.ShapeDtypeStruct((s.train_batch,) + (s.size,) * args.ndim + (s.in_channels,),
                                     jnp.dtype(DTYPES[dtype]))
            for name, shape in stage_inputs(model, x):
                if args.stages and name not in args.stages:
                    continue
                module = getattr(model, name)
                if "stages" in args.tables:
                    r = _time_module(module, lambda m, v: m(v, True), shape, args, key)
                    stages.append({"dtype": dtype, "impl": impl, "attention_impl": args.attention_impl, "stage": name,
                                   "input": list(shape.shape), **r})
                    _row_done(args, report, "stage", stages[-1])
                if "lms" in args.tables and isinstance(module, EncoderStage):
                    r = _time_module(module.lms, lambda m, v: m._multiscale(v), shape, args, key)
                    lms.append({"dtype": dtype, "impl": impl, "stage": name, "input": list(shape.shape),
                                "kernels": list(module.lms.kernels), **r})
                    _row_done(args, report, "lms", lms[-1])
    return report


def _row_done(args: argparse.Namespace, report: dict[str, Any], kind: str, row: dict[str, Any]) -> None:
    # Rewritten after every row, so a run cut short (a time limit) still leaves everything measured so far.
    log.info("%s %s", kind, json.dumps(row))
    if args.output:
        path = pathlib.Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def format_tables(report: dict[str, Any]) -> str:
    """Readable tables: per stage and per LMS resolution, one column per (dtype, impl)."""
    lines = []
    for table in ("stages", "lms"):
        rows = report[table]
        if not rows:
            continue
        cols = sorted({(r["dtype"], r["impl"]) for r in rows}, key=lambda c: (c[0] != "fp32", c[1]))
        names = list(dict.fromkeys(r["stage"] for r in rows))
        cell = {(r["stage"], r["dtype"], r["impl"]): r for r in rows}
        lines.append(f"{table}: fwd / fwd+bwd ms")
        lines.append(f"{'':>10} " + " ".join(f"{d + ' ' + i:>18}" for d, i in cols))
        for n in names + ["sum"]:
            vals = []
            for d, i in cols:
                rs = [cell[(m, d, i)] for m in names if (m, d, i) in cell] if n == "sum" else (
                    [cell[(n, d, i)]] if (n, d, i) in cell else [])
                vals.append(f"{sum(r['fwd_ms'] for r in rs):.2f} / {sum(r['fwd_bwd_ms'] for r in rs):.2f}"
                            if rs else "-")
            lines.append(f"{n:>10} " + " ".join(f"{v:>18}" for v in vals))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lgmsnet_jax.block_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    p.add_argument("--dtype", default="both", choices=("fp32", "bf16", "both"))
    p.add_argument("--impls", default="xla", help=f"comma-separated subset of {LMS_DEPTHWISE_IMPLS}")
    p.add_argument("--tables", default="stages,lms", help="subset of stages,lms")
    p.add_argument("--stages", default="", help="only these stages, comma-separated (default: all)")
    p.add_argument("--attention_impl", default="xla", choices=ATTENTION_IMPLS)
    p.add_argument("--size", type=int, default=None, help="spatial size (default 256 in 2D, 96 in 3D)")
    p.add_argument("--batch", type=int, default=None, help="batch (default: the train batch, 16 in 2D, 1 in 3D)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--output", default=None, help="also write the JSON report to this file")
    args = p.parse_args(argv)
    args.dtypes = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    args.impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in args.impls if i not in LMS_DEPTHWISE_IMPLS]
    if bad or not args.impls:
        p.error(f"--impls must be a comma-separated subset of {LMS_DEPTHWISE_IMPLS}; got {args.impls}")
    args.tables = [t for t in args.tables.split(",") if t]
    args.stages = [t for t in args.stages.split(",") if t]
    if not args.tables or any(t not in ("stages", "lms") for t in args.tables):
        p.error(f"--tables must be a subset of stages,lms; got {args.tables}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    report = run(args)
    print(format_tables(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
