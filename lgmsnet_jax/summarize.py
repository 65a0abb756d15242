r"""Mean ± std over training runs (seeds or splits), the way the paper reports them, as a Markdown table.

    python -m lgmsnet_jax.summarize runs/busi_1 runs/busi_2 runs/busi_3
    python -m lgmsnet_jax.summarize runs/kvasir_s41 runs/kvasir_s1 runs/kvasir_s123 --split test

Each argument is a `train.py` workdir. A finished run is read from its summary.json (the metrics of the
best-on-validation checkpoint, evaluated at the end of training) and its config.json. A run without summary.json
(stopped early, still training) is listed as partial with its best validation epoch so far from metrics.jsonl.
It is left out of the mean unless --include_partial is given. Runs are grouped by dataset. Each group gets the mean
and the sample std (ddof = 1) over its runs. The table also names each run's compute dtype, because mixing dtypes
changes what a mean means. When every run of a dataset was trained with `config.monitor_test` (Kvasir), a line
under the table gives their best-over-epochs test score: test-selected, so optimistic, never part of the table.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from lgmsnet_jax import curves
from lgmsnet_jax.ablation import report

SUMMARY_FILE, CONFIG_FILE, METRICS_FILE = "summary.json", "config.json", "metrics.jsonl"  # as train.py writes them


def read_run(workdir: str | pathlib.Path, select: str = "iou") -> dict[str, Any]:
    """One run's facts and metrics.

    Args:
      workdir: a train.py workdir.
      select: the validation metric a partial run's best epoch is chosen by (the configs select on IoU).

    Returns:
      {"run", "dataset", "fold", "seed", "dtype", "epochs", "epochs_done", "partial", "selected", "metrics"}, where
      "metrics" maps a split ("val", "test") to {metric: value}.

    Raises:
      ValueError: the folder is not a train.py workdir, or a partial run has no validation yet.
    """
    wd = pathlib.Path(workdir)
    if not (wd / CONFIG_FILE).is_file():
        raise ValueError(f"{wd}: no {CONFIG_FILE}; not a train.py workdir")
    config = json.loads((wd / CONFIG_FILE).read_text())
    run = {"run": wd.name, "dataset": config.get("dataset"), "fold": config.get("fold"), "seed": config.get("seed"),
           "dtype": (config.get("model") or {}).get("dtype", "float32"), "epochs": config.get("epochs")}
    if (wd / SUMMARY_FILE).is_file():
        summary = json.loads((wd / SUMMARY_FILE).read_text())
        return run | {"epochs_done": summary.get("epochs"), "partial": False, "selected": summary["checkpoint"],
                      "metrics": summary["metrics"], "test_monitor": summary.get("test_monitor")}
    if not (wd / METRICS_FILE).is_file():
        raise ValueError(f"{wd}: neither {SUMMARY_FILE} nor {METRICS_FILE}; the run has not started")
    records = curves.load_run(wd / METRICS_FILE)
    best = curves.best_point(records, f"val/{select}")
    if best is None:
        raise ValueError(f"{wd}: no validation in {METRICS_FILE} yet")
    epoch = best[0]
    row = next(r for r in records if r.get("epoch") == epoch and f"val/{select}" in r)
    done = max(int(r["epoch"]) for r in records if "epoch" in r)
    return run | {"epochs_done": done, "partial": True, "selected": f"best validation {select} so far (epoch {epoch:g})",
                  "metrics": {"val": {k.removeprefix("val/"): v for k, v in row.items() if k.startswith("val/")}}}


def pick_split(runs: Sequence[dict[str, Any]], split: str) -> str:
    """`split`, or for "auto" the test split when every run has one, else validation."""
    if split != "auto":
        return split
    return "test" if runs and all("test" in r["metrics"] for r in runs) else "val"


def table(runs: Sequence[dict[str, Any]], *, metrics: Sequence[str] = ("iou", "f1"), split: str = "auto",
          include_partial: bool = False) -> str:
    """The per-run table and the mean ± std per dataset, in Markdown (metrics in %).

    Raises:
      ValueError: a run counted in the mean lacks `split` or one of `metrics` (a partial run shows "-" instead).
    """
    counted = [r for r in runs if include_partial or not r["partial"]]
    split = pick_split(counted or runs, split)
    for r in counted:
        have = r["metrics"].get(split)
        if have is None or any(m not in have for m in metrics):
            raise ValueError(f"{r['run']}: no {split} {'/'.join(metrics)} in its results (has {sorted(r['metrics'])})")
    head = ["run", "dataset", "split/fold", "seed", "dtype", "epochs", "selected"] + [f"{split} {m}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        epochs = f"{r['epochs_done']} of {r['epochs']}" + (" (partial)" if r["partial"] else "")
        cells = [r["run"], str(r["dataset"]), str(r["fold"] if r["fold"] is not None else "-"), str(r["seed"]),
                 str(r["dtype"]), epochs, r["selected"]]
        have = r["metrics"].get(split, {})
        cells += [f"{100 * have[m]:.2f}" if m in have else "-" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    members = [{"setting": str(r["dataset"]), "values": {"seed": r["seed"]}, "params": None,
                "metrics": r["metrics"][split]} for r in counted]
    rows = report.aggregate(members, metrics)
    dtypes = {str(r["dataset"]): sorted({str(r["dtype"]) for r in counted if str(r["dataset"]) == row["setting"]})
              for row in rows}
    note = (f"{split} metrics of each run's selected checkpoint; mean ± sample std (ddof = 1) over "
            f"{'all' if include_partial else 'the finished'} runs, in %.")
    mixed = [f"{name} mixes dtypes {', '.join(d)}" for name, d in dtypes.items() if len(d) > 1]
    if mixed:
        note += " Note: " + "; ".join(mixed) + "."
    if not rows:
        return "\n".join(lines) + "\n\nNo finished run to average (--include_partial counts partial ones).\n"
    return "\n".join(lines) + "\n\n" + report.to_markdown(rows, metrics, note=note) + _monitor_note(counted)


def _monitor_note(runs: Sequence[dict[str, Any]]) -> str:
    """Per dataset whose runs all have it (config.monitor_test): the best-over-epochs test score, a test-selected,
    optimistic figure (what the reference's best-on-test checkpoint reports), shown apart from the table."""
    out = []
    for name in dict.fromkeys(str(r["dataset"]) for r in runs):
        group = [r for r in runs if str(r["dataset"]) == name]
        mons = [r.get("test_monitor") or {} for r in group]
        key = next((k for k in mons[0] if k.startswith("best_")), None)
        if key is None or any(key not in m for m in mons):
            continue
        vals = np.array([100 * m[key] for m in mons])
        std = f" ± {vals.std(ddof=1):.2f}" if len(vals) > 1 else ""
        each = ", ".join(f"{r['run']} {v:.2f} (epoch {m['epoch']})" for r, v, m in zip(group, vals, mons))
        out.append(f"{name}, monitoring only (test-selected, not the protocol above): best test "
                   f"{key.removeprefix('best_')} over epochs {vals.mean():.2f}{std} ({each}).")
    return "".join(f"\n{line}\n" for line in out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lgmsnet_jax.summarize", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="WORKDIR", help="train.py workdirs (seeds or splits of one recipe)")
    ap.add_argument("--split", default="auto", choices=("auto", "val", "test"),
                    help="which evaluation to report (auto: test when every run has one, else val)")
    ap.add_argument("--metrics", nargs="+", default=["iou", "f1"], help="metric keys, e.g. iou f1 se pc")
    ap.add_argument("--include_partial", action="store_true", help="count runs without summary.json in the mean")
    ap.add_argument("--select", default="iou", help="validation metric of a partial run's best epoch (3D: dice)")
    args = ap.parse_args(argv)
    try:
        runs = [read_run(w, select=args.select) for w in args.runs]
        print(table(runs, metrics=args.metrics, split=args.split, include_partial=args.include_partial), end="")
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
