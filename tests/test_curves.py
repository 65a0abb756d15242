"""`lgmsnet_jax.curves`: metrics.jsonl loading (resume duplicates, partial runs), best epochs, the PNG and the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lgmsnet_jax import curves

SPE = 4  # steps per epoch of the synthetic runs


def _write(path, records, tail=""):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _epoch(e, loss, iou):
    return [{"step": e * SPE, "train/epoch_loss": loss, "epoch": e},
            {"step": e * SPE, "val/iou": iou, "val/f1": iou + 0.1, "epoch": e, "time/validate_s": 0.1}]


@pytest.fixture
def run_a(tmp_path):
    """Five epochs, resumed after epoch 3: epoch 3's records appear twice and the later ones must win."""
    recs = []
    for e, (loss, iou) in enumerate([(0.9, 0.30), (0.7, 0.55), (0.9, 0.99)], 1):
        recs += [{"step": e * SPE - 2, "train/loss": loss + 0.05, "epoch": e}] + _epoch(e, loss, iou)
    recs += _epoch(3, 0.4, 0.50)  # replayed after the resume
    for e, (loss, iou) in enumerate([(0.3, 0.55), (0.2, 0.52)], 4):
        recs += [{"step": e * SPE - 2, "train/loss": loss + 0.05, "epoch": e}] + _epoch(e, loss, iou)
    return _write(tmp_path / "a", recs)


@pytest.fixture
def run_b(tmp_path):
    """Stopped early in epoch 3, its last line cut mid-write."""
    recs = _epoch(1, 0.95, 0.20) + _epoch(2, 0.8, 0.40) + [{"step": 10, "train/loss": 0.7, "epoch": 3}]
    return _write(tmp_path / "b", recs, tail='{"step": 12, "train/lo')


def _has_solid_block(img, color, box, size=5):
    """Whether `box` (x0, y0, x1, y1) of `img` holds a size x size square of exactly `color` (a dot, not a line)."""
    x0, y0, x1, y1 = box
    mask = np.all(np.asarray(img)[y0:y1, x0:x1] == np.asarray(color, np.uint8), axis=-1).astype(np.int64)
    c = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    win = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return bool((win == size * size).any())


def test_load_run_keeps_the_last_value_of_a_repeated_step(run_a):
    recs = curves.load_run(run_a / "metrics.jsonl")
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    at12 = recs[steps.index(12)]
    assert (at12["val/iou"], at12["train/epoch_loss"], at12["epoch"]) == (0.50, 0.4, 3)


def test_load_run_skips_a_cut_last_line_and_names_a_broken_middle_line(run_b, tmp_path):
    assert [r["step"] for r in curves.load_run(run_b / "metrics.jsonl")] == [4, 8, 10]
    bad = _write(tmp_path / "bad", [{"step": 1, "train/loss": 1.0}], tail='{"step": 2,\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"bad[/\\]metrics.jsonl:2: not a JSON object"):
        curves.load_run(bad / "metrics.jsonl")


def test_series_puts_step_records_at_fractional_epochs(run_a):
    x, y = curves.series(curves.load_run(run_a / "metrics.jsonl"), "train/loss")
    np.testing.assert_allclose(x, [0.5, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(y, [0.95, 0.75, 0.95, 0.35, 0.25])
    x, y = curves.series(curves.load_run(run_a / "metrics.jsonl"), "val/iou")
    np.testing.assert_allclose(x, [1, 2, 3, 4, 5])


def test_best_point_is_the_first_maximum_after_dedupe(run_a, run_b):
    a, b = curves.load_run(run_a / "metrics.jsonl"), curves.load_run(run_b / "metrics.jsonl")
    # Epoch 3's first 0.99 was replaced on resume; 0.55 at epochs 2 and 4 ties, the first wins (strict '>').
    assert curves.best_point(a, "val/iou") == (2.0, 0.55)
    assert curves.best_point(b, "val/iou") == (2.0, 0.40)
    assert curves.best_point(a, "train/epoch_loss") is None
    hd = [{"step": 4, "val/hd95": 7.0, "epoch": 1}, {"step": 8, "val/hd95": 3.5, "epoch": 2},
          {"step": 12, "val/hd95": 5.0, "epoch": 3}]
    assert curves.best_point(hd, "val/hd95") == (2.0, 3.5)  # distances: lower is better
    assert curves.legend_text("a", a, "val/iou") == "a best 55.00 @ 2"
    assert curves.legend_text("a", a, "val/iou", scale_percent=False) == "a best 0.55 @ 2"
    assert curves.legend_text("h", hd, "val/hd95") == "h best 3.5 @ 2"


def test_test_monitoring_panels_are_in_percent_like_validation_but_unmarked():
    # test/* is monitoring only (selection is on validation): same scale as val/*, no "best" dot or legend.
    assert curves._is_percent("test/iou", True) and curves._is_percent("val/iou", True)
    assert not curves._is_percent("test/iou", False) and not curves._is_percent("train/epoch_loss", True)
    recs = [{"step": 4, "epoch": 1, "test/iou": 0.5}, {"step": 8, "epoch": 2, "test/iou": 0.7}]
    assert curves.best_point(recs, "test/iou") is None and curves.legend_text("a", recs, "test/iou") == "a"


def test_plot_runs_draws_one_panel_per_metric_with_best_dots(run_a, run_b, tmp_path):
    runs = [("a", curves.load_run(run_a / "metrics.jsonl")), ("b", curves.load_run(run_b / "metrics.jsonl"))]
    out = tmp_path / "c.png"
    legends = curves.plot_runs(runs, out, title="synthetic")
    assert legends == {"train/epoch_loss": ["a", "b"], "val/iou": ["a best 55.00 @ 2", "b best 40.00 @ 2"]}
    img = Image.open(out).convert("RGB")
    assert img.size == (curves.WIDTH, curves.TOP + 2 * curves.PANEL_H + curves.BOTTOM)
    loss_box, iou_box = [(curves.LEFT + 1, curves.TOP + p * curves.PANEL_H + 21,
                          curves.LEFT + curves.PLOT_W, curves.TOP + p * curves.PANEL_H + 20 + curves.PLOT_H)
                         for p in range(2)]
    for color in curves.COLORS[:2]:
        assert _has_solid_block(img, color, iou_box)  # each run's best-val dot
        assert not _has_solid_block(img, color, loss_box)  # 2-px lines only: no dot on a train metric
        assert np.all(np.asarray(img.crop(loss_box)) == color, axis=-1).any()  # but the line is drawn


def test_plot_runs_skips_a_metric_a_run_lacks_and_rejects_a_run_with_none(run_a, tmp_path):
    a = curves.load_run(run_a / "metrics.jsonl")
    train_only = [{k: v for k, v in r.items() if not k.startswith("val/")} for r in a]
    legends = curves.plot_runs([("a", a), ("t", train_only)], tmp_path / "c.png", metrics=("train/loss", "val/iou"))
    assert legends == {"train/loss": ["a", "t"], "val/iou": ["a best 55.00 @ 2"]}
    with pytest.raises(ValueError, match=r"run 't' has none of the metrics \['val/iou'\]; it logs \[.*'train/loss'"):
        curves.plot_runs([("a", a), ("t", train_only)], tmp_path / "d.png", metrics=("val/iou",))


def test_cli_labels_runs_and_writes_the_png(run_a, run_b, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert curves.main([f"A={run_a}", str(run_b / "metrics.jsonl"), "--out", str(out),
                        "--metrics", "val/iou", "val/f1", "--title", "t"]) == 0
    assert Image.open(out).size == (curves.WIDTH, curves.TOP + 2 * curves.PANEL_H + curves.BOTTOM)
    printed = capsys.readouterr().out
    assert "val/iou: A best 55.00 @ 2; b best 40.00 @ 2" in printed
    assert "val/f1: A best 65.00 @ 2; b best 50.00 @ 2" in printed


def test_cli_exits_2_without_metrics_jsonl(tmp_path):
    workdir = tmp_path / "not_a_run"
    workdir.mkdir()
    out = tmp_path / "x.png"
    proc = subprocess.run([sys.executable, "-m", "lgmsnet_jax.curves", str(workdir), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {workdir}: no metrics.jsonl (is it a train.py workdir?)\n"
    assert not out.exists()
