"""Aggregation of finished ablation members into a table (CSV, Markdown) and a bar plot (PNG, Pillow).

Reads `<workdir>/<setting>/<member>/result.json`; groups members of a setting that differ only in the seed and
reports mean ± sample standard deviation (ddof = 1) over seeds.
"""
from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RESULT_FILE = "result.json"


def collect(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """All member results under `workdir`, sorted by (setting, member) folder names.

    Returns:
      The parsed result.json dicts (see `runner.write_result`).
    """
    return [json.loads(p.read_text()) for p in sorted(pathlib.Path(workdir).glob(f"*/*/{RESULT_FILE}"))]


def _group_key(result: dict[str, Any]) -> tuple:
    others = tuple(sorted((k, v) for k, v in result["values"].items() if k != "seed"))
    return (result["setting"], others)


def aggregate(results: Sequence[dict[str, Any]], metrics: Sequence[str], *,
              order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mean ± std (ddof = 1; 0 for a single seed) of `metrics` per (setting, non-seed numeric values).

    Args:
      results: member results from `collect`.
      metrics: keys of result["metrics"] to aggregate (e.g. ("iou", "f1")).
      order: setting names in table order (others follow alphabetically).

    Returns:
      Rows {"setting", "values" (non-seed axes), "n", "seeds", "params", "<m>_mean", "<m>_std" for each metric}.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_group_key(r), []).append(r)
    rank = {name: i for i, name in enumerate(order or [])}
    rows = []
    for (setting, others), members in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0])):
        row: dict[str, Any] = {"setting": setting, "values": dict(others), "n": len(members),
                               "seeds": sorted(m["values"].get("seed", m.get("seed")) for m in members),
                               "params": members[0].get("params")}
        for m in metrics:
            vals = np.asarray([float(r["metrics"][m]) for r in members], np.float64)
            row[f"{m}_mean"] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def _label(row: dict[str, Any]) -> str:
    extra = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["values"].items())
    return f"{row['setting']} [{extra}]" if extra else row["setting"]


def write_csv(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: pathlib.Path) -> None:
    """One line per row: setting, numeric values, n, params, then <m>_mean, <m>_std per metric."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "values", "n", "params"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
        for r in rows:
            w.writerow([r["setting"], json.dumps(r["values"], sort_keys=True), r["n"], r["params"]]
                       + [f"{r[f'{m}_{s}']:.6f}" for m in metrics for s in ("mean", "std")])


def to_markdown(rows: Sequence[dict[str, Any]], metrics: Sequence[str], *, scale: float = 100.0,
                title: str = "", note: str = "") -> str:
    """Markdown table with "mean ± std" cells (metrics × `scale`, i.e. percent by default) and a note below."""
    head = ["setting", "n", "params"] + [m for m in metrics]
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(head) + " |",
                                                        "|" + "---|" * len(head)]
    for r in rows:
        params = f"{r['params']:,}" if isinstance(r["params"], int) else "-"
        cells = [f"{scale * r[f'{m}_mean']:.2f} ± {scale * r[f'{m}_std']:.2f}" for m in metrics]
        lines.append("| " + " | ".join([_label(r), str(r["n"]), params] + cells) + " |")
    return "\n".join(lines + ([""] + [note] if note else [])) + "\n"


def describe(results: Sequence[dict[str, Any]]) -> str:
    """One line on what the numbers are: data, schedule, protocol and the std convention."""
    if not results:
        return ""
    keys = ("dataset", "fold", "epochs", "protocol")
    seen = {k: sorted({str(r.get(k)) for r in results}) for k in keys}
    parts = [f"{k}: {', '.join(v)}" for k, v in seen.items() if v != ["None"]]
    return "; ".join(parts) + "; mean ± sample std (ddof = 1) over seeds, in %."


def plot(rows: Sequence[dict[str, Any]], metric: str, path: pathlib.Path, *, title: str = "",
         scale: float = 100.0) -> None:
    """Dot plot of `metric` mean per row with ±std whiskers and the values printed, as a PNG.

    Args:
      rows: from `aggregate`.
      metric: metric key (e.g. "iou").
      path: output .png.
      title: caption at the top.
      scale: multiplier for the printed values (100 = percent).
    """
    font = ImageFont.load_default()
    labels = [_label(r) for r in rows]
    means = np.asarray([scale * r[f"{metric}_mean"] for r in rows], np.float64)
    stds = np.asarray([scale * r[f"{metric}_std"] for r in rows], np.float64)
    bar_h, gap, left, right, top = 22, 10, 12 + 7 * max([len(s) for s in labels] + [8]), 150, 40
    width, height = left + 420 + right, top + len(rows) * (bar_h + gap) + 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((12, 10), title or f"{metric} (mean ± std over seeds)", fill="black", font=font)
    # Axis from just below the lowest (mean - std) so differences of a few points stay visible.
    lo = float(np.floor(max(0.0, np.min(means - stds) - 5.0))) if len(rows) else 0.0
    hi = float(np.ceil(np.max(means + stds) + 1.0)) if len(rows) else 1.0
    span = max(hi - lo, 1e-9)
    x_of = lambda v: left + 420 * (v - lo) / span  # noqa: E731
    for i, (label, m, s) in enumerate(zip(labels, means, stds)):
        y = top + i * (bar_h + gap)
        d.text((12, y + 5), label, fill="black", font=font)
        # A dot, not a bar: the axis does not start at 0, and a bar's length would exaggerate the differences.
        cy = y + bar_h / 2
        d.line([left, cy, left + 420, cy], fill=(225, 225, 225))
        d.ellipse([x_of(m) - 5, cy - 5, x_of(m) + 5, cy + 5], fill=(70, 120, 190))
        lo_w, hi_w = max(m - s, lo), min(m + s, hi)  # whiskers clipped to the axis
        d.line([x_of(lo_w), y + bar_h / 2, x_of(hi_w), y + bar_h / 2], fill="black", width=2)
        for v in (lo_w, hi_w):
            d.line([x_of(v), y + 4, x_of(v), y + bar_h - 4], fill="black", width=2)
        d.text((x_of(m + s) + 6, y + 5), f"{m:.2f} ± {s:.2f}", fill="black", font=font)
    y_axis = top + len(rows) * (bar_h + gap) + 5
    d.line([left, y_axis, left + 420, y_axis], fill="gray")
    for v in np.linspace(lo, hi, 5):
        d.line([x_of(v), y_axis, x_of(v), y_axis + 4], fill="gray")
        d.text((x_of(v) - 10, y_axis + 8), f"{v:.1f}", fill="gray", font=font)
    img.save(path)


def write_report(workdir: pathlib.Path, metrics: Sequence[str] = ("iou", "f1"), *,
                 order: Sequence[str] | None = None, title: str = "",
                 keep: set[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Writes summary.csv, summary.md and summary_<metric>.png into `workdir` from the finished members.

    Args:
      workdir: grid folder.
      metrics: metric keys to aggregate.
      order: setting names in table order.
      title: table/plot caption.
      keep: (setting, member) names of the current grid; results of members dropped from the grid are ignored.

    Returns:
      The aggregated rows (empty when no member has finished).
    """
    workdir = pathlib.Path(workdir)
    results = [r for r in collect(workdir) if keep is None or (r["setting"], r["member"]) in keep]
    rows = aggregate(results, metrics, order=order)
    if not rows:
        return rows
    write_csv(rows, metrics, workdir / "summary.csv")
    (workdir / "summary.md").write_text(to_markdown(rows, metrics, title=title, note=describe(results)))
    for m in metrics:
        plot(rows, m, workdir / f"summary_{m}.png", title=f"{title} {m} in % (mean ± std over seeds)".strip())
    return rows
