"""Where a profiled step's device time goes: kernels per step, device busy vs idle, the costliest kernels.

    python -m lgmsnet_jax.benchmark --ndim 2 --dtype bf16 --measure latency --profile prof
    python -m lgmsnet_jax.trace_summary prof [--top 15] [--by kernel|op|hlo] [--json]

Reads every `*.trace.json.gz` that `jax.profiler.trace` wrote under the folder (one per measurement of
`benchmark --profile`, named by its label). A step is one `StepTraceAnnotation` window on the host; the benchmark
blocks until each step's results are ready inside its window, so a kernel belongs to the step whose window it
starts in. Device time is read from the device's stream lines (`Stream ...`), or its `XLA Ops` line where there are
no streams (TPU). "busy" is the union of kernel intervals, so overlapping streams are not counted twice; "idle" is
the rest of the step's wall time, which is what launch overhead and host work cost. A step whose busy share is
small while it runs hundreds of microsecond-long kernels is launch-bound; one that is busy throughout is bound by
its kernels, and the top table says which.

The top table groups by kernel name (default), by JAX operation (`--by op`: the name stack that GPU traces attach to
each kernel, e.g. `jit(train_step)/transpose(jvp())/conv_general_dilated` for a backward conv) or by HLO instruction
(`--by hlo`: each convolution or fusion of the compiled program on its own line, with its name stack). Kernels
without those attributes (TPU, CPU) fall back to their kernel name.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import statistics
import sys
from collections.abc import Sequence


class TraceError(ValueError):
    """A trace file that holds no steps or no device kernel lines."""


def load_events(path: pathlib.Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _names(events: list[dict]) -> tuple[dict, dict]:
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    return procs, threads


def kernel_lines(procs: dict, threads: dict) -> dict[str, list[tuple[int, int]]]:
    """{device process name: [(pid, tid), ...]} of the lines that hold its kernels (names from `_names`)."""
    out = {}
    for pid, pname in sorted(procs.items(), key=lambda kv: kv[1]):
        if not pname.startswith("/device:"):
            continue
        mine = {k: v for k, v in threads.items() if k[0] == pid}
        lines = [k for k, v in mine.items() if v.lower().startswith("stream")]
        lines = lines or [k for k, v in mine.items() if v == "XLA Ops"]
        if lines:
            out[pname] = sorted(lines)
    return out


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


GROUPINGS = ("kernel", "op", "hlo")


def _group_key(event: dict, by: str) -> str:
    args = event.get("args", {})
    if by == "op" and args.get("name"):
        return args["name"]
    if by == "hlo" and args.get("hlo_op"):
        return f"{args['hlo_op']} ({args['name']})" if args.get("name") else args["hlo_op"]
    return event["name"]


def summarize(events: list[dict], top: int = 15, by: str = "kernel") -> dict:
    """Per-step medians of wall, kernel count, kernel time and busy time, and the top groups (`by`), per device."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}, got {by!r}")
    procs, threads = _names(events)
    steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("ph") == "X" and "step_num" in e.get("args", {})
                   and not procs.get(e.get("pid"), "").startswith("/device:"))
    if not steps:
        raise TraceError("no StepTraceAnnotation windows on the host (profile with `benchmark --profile`)")
    lines = kernel_lines(procs, threads)
    if not lines:
        device_threads = sorted({t for (pid, _), t in threads.items() if procs.get(pid, "").startswith("/device:")})
        raise TraceError("no device kernel lines (no '/device:...' process with 'Stream' or 'XLA Ops' threads); "
                         f"processes in the trace: {sorted(set(procs.values()))}; device threads: {device_threads}")
    devices = {}
    for pname, keys in lines.items():
        keys = set(keys)
        per_step = [[] for _ in steps]
        for e in events:
            if e.get("ph") != "X" or (e.get("pid"), e.get("tid")) not in keys:
                continue
            for i, (a, b) in enumerate(steps):
                if a <= e["ts"] < b:
                    per_step[i].append(e)
                    break
        used = [(s, k) for s, k in zip(steps, per_step) if k]
        if not used:
            raise TraceError(f"{pname}: no kernel starts inside a step window ({len(steps)} steps)")
        walls = [(b - a) for (a, b), _ in used]
        busy = [_union_us([(e["ts"], e["ts"] + e["dur"]) for e in k]) for _, k in used]
        ktime = [sum(e["dur"] for e in k) for _, k in used]
        durs = [e["dur"] for _, k in used for e in k]
        by_name = collections.defaultdict(lambda: [0, 0.0])
        for _, k in used:
            for e in k:
                key = _group_key(e, by)
                by_name[key][0] += 1
                by_name[key][1] += e["dur"]
        n = len(used)
        total_k = sum(ktime)
        tops = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
        devices[pname] = {
            "steps": n,
            "wall_ms": statistics.median(walls) / 1e3,
            "kernels_per_step": statistics.median(len(k) for _, k in used),
            "kernel_ms": statistics.median(ktime) / 1e3,
            "busy_ms": statistics.median(busy) / 1e3,
            "busy_share": statistics.median(b / w for b, w in zip(busy, walls)),
            "kernel_us_median": statistics.median(durs),
            "top": [{"name": name, "per_step": c / n, "ms_per_step": t / n / 1e3, "share": t / total_k}
                    for name, (c, t) in tops],
        }
    return devices


def find_traces(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """{label: newest trace} under root; the label is the folder below root (benchmark's measurement name)."""
    if root.is_file():
        return {root.name: root}
    found = {}
    for p in sorted(root.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime):
        rel = p.relative_to(root).parts
        found[rel[0] if len(rel) > 1 and rel[0] != "plugins" else root.name] = p
    return found


def format_table(label: str, devices: dict, by: str = "kernel") -> str:
    out = []
    for pname, d in devices.items():
        out.append(f"{label} on {pname}: {d['steps']} steps; per step (median): wall {d['wall_ms']:.3f} ms, "
                   f"{d['kernels_per_step']:.0f} kernels, kernel time {d['kernel_ms']:.3f} ms, "
                   f"busy {d['busy_ms']:.3f} ms ({100 * d['busy_share']:.0f}% of wall), "
                   f"median kernel {d['kernel_us_median']:.1f} us")
        out.append(f"  {'ms/step':>8} {'share':>6} {'n/step':>7}  {by}")
        for t in d["top"]:
            out.append(f"  {t['ms_per_step']:>8.3f} {100 * t['share']:>5.1f}% {t['per_step']:>7.1f}  {t['name'][:110]}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a `benchmark --profile` folder, a jax.profiler log folder, or one .trace.json.gz")
    p.add_argument("--top", type=int, default=15, help="kernels listed per device, by total time")
    p.add_argument("--by", default="kernel", choices=GROUPINGS,
                   help="group the top table by kernel name, JAX operation (name stack) or HLO instruction")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = p.parse_args(argv)
    root = pathlib.Path(args.path)
    if not root.exists():
        p.error(f"{root} does not exist")
    traces = find_traces(root)
    if not traces:
        p.error(f"no *.trace.json.gz under {root}")
    results, failed = {}, 0
    for label, path in traces.items():
        try:
            results[label] = summarize(load_events(path), top=args.top, by=args.by)
        except TraceError as err:
            print(f"{label} ({path}): {err}", file=sys.stderr)
            failed += 1
            continue
        if not args.json:
            print(format_table(label, results[label], args.by))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed == len(traces) else 0


if __name__ == "__main__":
    sys.exit(main())
