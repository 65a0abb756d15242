"""Training curves of one or more train.py runs (metrics.jsonl) as a PNG, drawn with Pillow.

    python -m lgmsnet_jax.curves RUN [RUN ...] --out curves.png [--metrics train/epoch_loss val/iou] [--title T]

RUN is a train.py workdir (or its metrics.jsonl), optionally LABEL=RUN; the label defaults to the folder name.
One panel per metric, stacked, x = epoch; val metrics get each run's best value and epoch in the legend and a dot.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

METRICS_FILE = "metrics.jsonl"
DEFAULT_METRICS = ("train/epoch_loss", "val/iou")
COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
# Layout in pixels: image width, plot box left edge and width (legend to its right), title band, panel pitch.
WIDTH, LEFT, PLOT_W, TOP, PANEL_H, PLOT_H, BOTTOM = 1000, 70, 660, 40, 290, 230, 10
LEGEND_X = 46  # legend text offset from the plot box's right edge (a colour swatch sits before it)
DOT_RADIUS = 5


def load_run(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl, one dict per step (later lines win per (step, key), as after a resume).

    Args:
      path: the metrics.jsonl file.

    Returns:
      Merged records sorted by "step"; keys as logged ("train/loss", "val/iou", "epoch", ...).
    """
    path = pathlib.Path(path)
    lines = [(i, ln) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    by_step: dict[int, dict] = {}
    for n, (i, ln) in enumerate(lines):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as e:
            if n == len(lines) - 1:  # a run killed mid-write leaves a truncated last line
                continue
            raise ValueError(f"{path}:{i}: not a JSON object ({e})") from None
        if not isinstance(rec, dict) or "step" not in rec:
            raise ValueError(f"{path}:{i}: record without a 'step' key")
        by_step.setdefault(int(rec["step"]), {}).update(rec)
    if not by_step:
        raise ValueError(f"{path}: no records")
    return [by_step[s] for s in sorted(by_step)]


def series(records: Sequence[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, value) points of `metric`; per-step records get fractional epochs (step / steps per epoch).

    Returns:
      x: (P,) f64 epochs, increasing. y: (P,) f64 raw values (non-finite ones, logged as null, are dropped).
    """
    # train.py writes train/epoch_loss at step = epoch * steps_per_epoch; val records share that step.
    spe = next((r["step"] / r["epoch"] for r in records if "train/epoch_loss" in r and r.get("epoch")), None)
    pts = [(r["step"] / spe if spe else float(r.get("epoch", r["step"])), float(r[metric]))
           for r in records if r.get(metric) is not None]
    pts = [(x, y) for x, y in pts if math.isfinite(y)]
    return np.asarray([p[0] for p in pts], np.float64), np.asarray([p[1] for p in pts], np.float64)


def _lower_is_better(metric: str) -> bool:
    return "loss" in metric or "hd95" in metric


def _is_percent(metric: str, scale_percent: bool) -> bool:
    # test/* (the Kvasir configs' per-epoch test monitoring) is scaled like val/* so that the two panels compare.
    return (scale_percent and metric.startswith(("val/", "test/")) and not _lower_is_better(metric)
            and "count" not in metric)


def best_point(records: Sequence[dict], metric: str) -> tuple[float, float] | None:
    """(epoch, raw value) of the best val record (first one on ties, as train.py's strict '>'); None otherwise."""
    x, y = series(records, metric)
    if not metric.startswith("val/") or not len(y):
        return None
    i = int(np.argmin(y) if _lower_is_better(metric) else np.argmax(y))
    return float(x[i]), float(y[i])


def _fmt(v: float, percent: bool) -> str:
    return f"{100.0 * v:.2f}" if percent else f"{v:.4g}"


def legend_text(label: str, records: Sequence[dict], metric: str, *, scale_percent: bool = True) -> str:
    """Legend line of one run in one panel: the label, plus "best V @ E" for val metrics (V in % when scaled)."""
    best = best_point(records, metric)
    if best is None:
        return label
    return f"{label} best {_fmt(best[1], _is_percent(metric, scale_percent))} @ {best[0]:g}"


def _ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """Round tick values (1, 2, 2.5, 5 x 10^k apart) covering [lo, hi]."""
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * max(abs(lo), 1.0), hi + 0.5 * max(abs(hi), 1.0)
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw)
    return np.arange(math.floor(lo / step), math.ceil(hi / step) + 1) * step


def plot_runs(runs: Sequence[tuple[str, list[dict]]], path: str | os.PathLike, *,
              metrics: Sequence[str] = DEFAULT_METRICS, title: str = "",
              scale_percent: bool = True) -> dict[str, list[str]]:
    """Draws one panel per metric (stacked, shared epoch axis), one coloured line per run, as a PNG.

    Args:
      runs: (label, records from `load_run`) per run; colours follow this order (COLORS, cycled).
      path: output .png, WIDTH (more for long legend lines) x (TOP + len(metrics) * PANEL_H + BOTTOM) pixels.
      metrics: record keys, one panel each; a run lacking one is left out of that panel.
      title: caption at the top.
      scale_percent: val metrics other than losses/HD95/counts shown x 100.

    Returns:
      metric -> legend lines of the runs drawn in that panel.

    Raises:
      ValueError: a run has none of `metrics` (the message names it and the keys it has).
    """
    for label, recs in runs:
        if not any(r.get(m) is not None for r in recs for m in metrics):
            keys = sorted({k for r in recs for k in r} - {"step", "epoch"})
            raise ValueError(f"run {label!r} has none of the metrics {list(metrics)}; it logs {keys}")
    font, big = ImageFont.load_default(size=13), ImageFont.load_default(size=16)  # sizes: Pillow >= 10.1
    panels = {}  # metric -> [(run index, records, x, y as drawn, legend line)] of the runs that log it
    for m in metrics:
        scale = 100.0 if _is_percent(m, scale_percent) else 1.0
        panels[m] = [(i, recs, x, scale * y, legend_text(label, recs, m, scale_percent=scale_percent))
                     for i, (label, recs) in enumerate(runs) for x, y in [series(recs, m)] if len(y)]
    legends = {m: [row[-1] for row in rows] for m, rows in panels.items()}
    x_max = max([float(row[2][-1]) for rows in panels.values() for row in rows] + [1.0])
    xt = _ticks(0.0, x_max)
    text_w = max([font.getlength(t) for lines in legends.values() for t in lines] + [0.0])
    width = max(WIDTH, int(LEFT + PLOT_W + LEGEND_X + text_w + 10))  # long labels widen the image
    img = Image.new("RGB", (width, TOP + len(metrics) * PANEL_H + BOTTOM), "white")
    d = ImageDraw.Draw(img)
    d.text((LEFT, 12), title, fill="black", font=big)
    for p, m in enumerate(metrics):
        scale = 100.0 if _is_percent(m, scale_percent) else 1.0
        top = TOP + p * PANEL_H + 20
        d.text((LEFT, top - 18), m + (" (%)" if scale != 1.0 else ""), fill="black", font=font)
        d.rectangle([LEFT, top, LEFT + PLOT_W, top + PLOT_H], outline="gray")
        if not panels[m]:
            d.text((LEFT + 10, top + 10), f"no run logs {m}", fill="gray", font=font)
            continue
        ys = np.concatenate([row[3] for row in panels[m]])
        yt = _ticks(float(ys.min()), float(ys.max()))
        px = lambda v: LEFT + PLOT_W * (v - xt[0]) / (xt[-1] - xt[0])  # noqa: E731
        py = lambda v: top + PLOT_H * (yt[-1] - v) / (yt[-1] - yt[0])  # noqa: E731
        for v in yt:
            d.line([LEFT, py(v), LEFT + PLOT_W, py(v)], fill=(230, 230, 230))
            d.text((LEFT - 6, py(v)), f"{v:g}", fill="black", font=font, anchor="rm")
        for v in xt:
            d.line([px(v), top + PLOT_H, px(v), top + PLOT_H + 4], fill="gray")
            d.text((px(v), top + PLOT_H + 6), f"{v:g}", fill="black", font=font, anchor="mt")
        d.text((LEFT + PLOT_W, top + PLOT_H + 22), "epoch", fill="gray", font=font, anchor="rt")
        dots = []
        for k, (i, recs, x, y, text) in enumerate(panels[m]):
            color = COLORS[i % len(COLORS)]
            if len(x) > 1:
                d.line([(px(a), py(b)) for a, b in zip(x, y)], fill=color, width=2)
            best = best_point(recs, m)
            if best is not None or len(x) == 1:  # a lone point would be invisible without a dot
                dots.append((color, *((best[0], scale * best[1]) if best else (x[0], y[0]))))
            ly = top + 6 + 20 * k
            d.line([LEFT + PLOT_W + 15, ly + 7, LEFT + PLOT_W + LEGEND_X - 6, ly + 7], fill=color, width=3)
            d.text((LEFT + PLOT_W + LEGEND_X, ly), text, fill="black", font=font)
        r = DOT_RADIUS
        for color, bx, by in dots:  # after all lines, so no other run's curve hides a best point
            d.ellipse([px(bx) - r, py(by) - r, px(bx) + r, py(by) + r], fill=color, outline="black")
    img.save(path)
    return legends


def _resolve(arg: str) -> tuple[str, str, pathlib.Path]:
    """LABEL=PATH or PATH (a workdir or its metrics.jsonl) -> (label, PATH, metrics file); may not exist."""
    label, sep, rest = arg.partition("=")
    if not sep or not label or pathlib.Path(arg).exists():
        label, rest = "", arg
    p = pathlib.Path(rest)
    f = p if p.suffix == ".jsonl" else p / METRICS_FILE
    return label or f.resolve().parent.name, rest, f


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on a missing file or unusable run)."""
    ap = argparse.ArgumentParser(prog="python -m lgmsnet_jax.curves", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN", help="train.py workdir or LABEL=workdir")
    ap.add_argument("--out", required=True, help="output .png")
    ap.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="record keys, one panel each")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    runs = []
    try:
        for arg in args.runs:
            label, given, f = _resolve(arg)
            if not f.is_file():
                raise ValueError(f"{given}: no {METRICS_FILE} (is it a train.py workdir?)")
            recs = load_run(f)
            if not any(r.get(m) is not None for r in recs for m in args.metrics):
                raise ValueError(f"{f}: none of the metrics {args.metrics} is logged")
            runs.append((label, recs))
        legends = plot_runs(runs, args.out, metrics=args.metrics, title=args.title)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for m, lines in legends.items():
        print(f"{m}: " + "; ".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
