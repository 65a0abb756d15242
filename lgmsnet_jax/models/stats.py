"""Model size and cost: trainable-parameter counts, XLA-counted FLOPs and analytic MACs of the eval forward.

    python -m lgmsnet_jax.models.stats --ndim 2 --in_channels 3 --num_classes 1 --size 256 [--set dims=[...]]

What the numbers mean (LGMSNet 2D, 3 in, 1 class, 1x256x256x3 input):
- params 2,321,393 = the reference code and the paper's "2.32M".
- `macs_analytic`: multiply-accumulates of every conv (all kernel taps, padded ones included, as thop/ptflops
  count) and every matmul (dense layers and attention q.k / p.v); elementwise work is not counted.
- `flops`: XLA's cost analysis of the jitted batch-1 eval forward: 2 per MAC over in-bounds taps only, plus
  elementwise work (norms, activations, biases, softmax, resize).
The paper's "4.89 GFLOPs" for LGMSNet 2D does not say which counter was used. Run the CLI to see ours: the
analytic MAC count is what PyTorch profilers call "FLOPs" in most segmentation papers, and the XLA number is
about twice that (it counts multiply and add separately).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (nnx.Param leaves); BatchNorm running statistics are not counted."""
    return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _eval_forward(model: nnx.Module):
    graphdef, state = nnx.split(model)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x, train=False)
    return forward, state


def flops(model: nnx.Module, input_shape: Sequence[int], dtype: Any = jnp.float32) -> float:
    """XLA cost-analysis FLOPs of the jitted eval forward (spec jax_stack.md §7).

    Args:
      model: an NNX model called as model(x, train=False).
      input_shape: full input shape including the batch, e.g. (1, 256, 256, 3).
      dtype: input dtype.

    Returns:
      flops as counted by XLA for the lowered (not compiled) computation.
    """
    forward, state = _eval_forward(model)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.dtype(dtype))
    ca = jax.jit(forward).lower(state, x).cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca  # older jax returned a list of dicts
    return float(ca["flops"])


def _sub_jaxprs(eqn) -> list:
    out = []
    for v in eqn.params.values():
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                out.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                out.append(item)
    return out


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            out = eqn.outvars[0].aval.shape
            dn = eqn.params["dimension_numbers"]
            rhs_in = rhs[dn.rhs_spec[1]]
            taps = math.prod(rhs[i] for i in dn.rhs_spec[2:])
            total += math.prod(out) * taps * rhs_in
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
        for sub in _sub_jaxprs(eqn):
            total += _jaxpr_macs(sub)
    return total


def macs_analytic(model: nnx.Module, input_shape: Sequence[int], dtype: Any = jnp.float32) -> int:
    """Multiply-accumulates of all convs (every kernel tap) and matmuls in the eval forward, from its jaxpr.

    Depthwise convs count only when they run as convs (depthwise_impl 'xla' or 'grouped_padded'; the latter
    counts its zero-padded taps); 'shift_add' is elementwise and is not counted.

    Args:
      model: an NNX model called as model(x, train=False).
      input_shape: full input shape including the batch.
      dtype: input dtype.

    Returns:
      MACs (int).
    """
    forward, state = _eval_forward(model)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.dtype(dtype))
    return _jaxpr_macs(jax.make_jaxpr(forward)(state, x).jaxpr)


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: print params, analytic GMACs and XLA GFLOPs of a model; returns the numbers."""
    from lgmsnet_jax.models import build_model  # noqa: PLC0415  (models/__init__ imports this module)

    p = argparse.ArgumentParser(prog="python -m lgmsnet_jax.models.stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lgmsnet")
    p.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    p.add_argument("--in_channels", type=int, default=3)
    p.add_argument("--num_classes", type=int, default=1)
    p.add_argument("--size", type=int, default=256, help="cubic/square input size (batch 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="model keyword, e.g. dims=[...]")
    args = p.parse_args(argv)
    kwargs = _parse_set(args.set)
    model = build_model(args.model, ndim=args.ndim, in_channels=args.in_channels, num_classes=args.num_classes,
                        **kwargs)
    shape = (1,) + (args.size,) * args.ndim + (args.in_channels,)
    res = {"model": args.model, "input_shape": list(shape), "params": count_params(model),
           "gmacs_analytic": macs_analytic(model, shape) / 1e9, "gflops_xla": flops(model, shape) / 1e9,
           "kwargs": kwargs}
    print(f"{args.model} {args.ndim}D input {shape}: params {res['params']:,}  analytic {res['gmacs_analytic']:.3f} "
          f"GMACs  XLA {res['gflops_xla']:.3f} GFLOPs")
    return res


if __name__ == "__main__":
    main()
