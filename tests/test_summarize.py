"""`python -m lgmsnet_jax.summarize`: per-run rows and mean ± std over finished train.py runs."""
import json

import numpy as np
import pytest

from lgmsnet_jax import summarize
from lgmsnet_jax.training import loop


def _workdir(root, name, *, dataset="busi", fold=None, seed=41, dtype="float32", val=None, test=None, epochs=500,
             partial=None, test_monitor=None):
    """A workdir as train.py leaves it: config.json, plus summary.json (finished) or metrics.jsonl (partial)."""
    wd = root / name
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"dataset": dataset, "fold": fold, "seed": seed, "epochs": epochs,
                                                "model": {"dtype": dtype}}))
    if partial is not None:  # [(epoch, iou, f1)] validations, with a train record of the epoch in progress
        lines = [{"step": 29 * e, "epoch": e, "val/iou": i, "val/f1": f, "val/count": 195} for e, i, f in partial]
        lines.append({"step": 29 * partial[-1][0] + 10, "epoch": partial[-1][0] + 1, "train/loss": 0.1})
        (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        return wd
    metrics = {"val": val} | ({"test": test} if test else {})
    (wd / "summary.json").write_text(json.dumps({"checkpoint": "best validation iou (epoch 300, step 8700)",
                                                 "protocol": "p", "steps": 14500, "epochs": epochs,
                                                 "dataset": dataset, "metrics": metrics}
                                                | ({"test_monitor": test_monitor} if test_monitor else {})))
    return wd


def test_file_names_are_the_ones_train_py_writes():
    assert summarize.SUMMARY_FILE == loop.SUMMARY_FILE
    assert (summarize.CONFIG_FILE, summarize.METRICS_FILE) == ("config.json", "metrics.jsonl")


def test_mean_and_sample_std_over_finished_splits_and_partial_runs_left_out(tmp_path):
    ious, f1s = [0.6809, 0.7154, 0.7493], [0.7686, 0.8028, 0.8334]
    dirs = [_workdir(tmp_path, f"busi_{k}", fold=k, val={"iou": i, "f1": f}) for k, i, f in zip((1, 2, 3), ious, f1s)]
    dirs.append(_workdir(tmp_path, "busi_1b", fold=1, partial=[(1, 0.30, 0.40), (2, 0.69, 0.77), (3, 0.50, 0.60)]))
    runs = [summarize.read_run(d) for d in dirs]
    assert [r["partial"] for r in runs] == [False, False, False, True]
    assert runs[3]["metrics"]["val"]["iou"] == 0.69 and runs[3]["epochs_done"] == 4
    assert runs[3]["selected"] == "best validation iou so far (epoch 2)"

    md = summarize.table(runs)
    mean, std = 100 * np.mean(ious), 100 * np.std(ious, ddof=1)
    assert f"| busi | 3 | - | {mean:.2f} ± {std:.2f} | {100 * np.mean(f1s):.2f} ± {100 * np.std(f1s, ddof=1):.2f} |" in md
    assert "| busi_1b | busi | 1 | 41 | float32 | 4 of 500 (partial) |" in md and "val iou" in md
    assert "mixes dtypes" not in md

    md_all = summarize.table(runs, include_partial=True)
    four = ious + [0.69]
    assert f"| busi | 4 | - | {100 * np.mean(four):.2f} ± {100 * np.std(four, ddof=1):.2f} |" in md_all


def test_test_split_when_every_counted_run_has_one_and_mixed_dtypes_are_named(tmp_path):
    kv = dict(dataset="kvasir", epochs=300)
    a = _workdir(tmp_path, "kv41", seed=41, dtype="bfloat16", val={"iou": 0.85, "f1": 0.9},
                 test={"iou": 0.82, "f1": 0.88}, **kv)
    b = _workdir(tmp_path, "kv1", seed=1, val={"iou": 0.84, "f1": 0.9}, test={"iou": 0.80, "f1": 0.87}, **kv)
    c = _workdir(tmp_path, "kv123", seed=123, partial=[(1, 0.5, 0.6)], **kv)
    md = summarize.table([summarize.read_run(d) for d in (a, b, c)])
    assert "| test iou | test f1 |" in md
    assert "| 81.00 ± 1.41 | 87.50 ± 0.71 |" in md
    assert md.splitlines()[4].endswith("| - | - |")  # the partial run has no test evaluation yet
    assert "kvasir mixes dtypes bfloat16, float32" in md
    with pytest.raises(ValueError, match="kv123: no test iou/f1"):
        summarize.table([summarize.read_run(d) for d in (a, b, c)], split="test", include_partial=True)


def test_cli_prints_the_table_and_names_a_folder_that_is_not_a_workdir(tmp_path, capsys):
    d = _workdir(tmp_path, "busi_1", fold=1, val={"iou": 0.7, "f1": 0.8})
    assert summarize.main([str(d)]) == 0
    assert "| busi | 1 | - | 70.00 ± 0.00 | 80.00 ± 0.00 |" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert summarize.main([str(d), str(tmp_path / "empty")]) == 2
    assert "empty: no config.json; not a train.py workdir" in capsys.readouterr().err
    started = _workdir(tmp_path, "started", partial=[(1, 0.5, 0.6)])
    (started / "metrics.jsonl").write_text(json.dumps({"step": 10, "epoch": 1, "train/loss": 1.0}) + "\n")
    assert summarize.main([str(started)]) == 2
    assert "started: no validation in metrics.jsonl yet" in capsys.readouterr().err


def test_best_over_epochs_test_score_is_a_separate_line_only_when_every_run_of_the_dataset_has_it(tmp_path):
    kv = dict(dataset="kvasir", epochs=300)
    a = _workdir(tmp_path, "kv41", val={"iou": 0.85, "f1": 0.9}, test={"iou": 0.82, "f1": 0.88},
                 test_monitor={"best_iou": 0.86, "epoch": 250, "note": "n"}, **kv)
    b = _workdir(tmp_path, "kv1", seed=1, val={"iou": 0.84, "f1": 0.9}, test={"iou": 0.80, "f1": 0.87},
                 test_monitor={"best_iou": 0.84, "epoch": 199, "note": "n"}, **kv)
    c = _workdir(tmp_path, "busi_1", fold=1, val={"iou": 0.7, "f1": 0.8}, test={"iou": 0.7, "f1": 0.8})
    md = summarize.table([summarize.read_run(d) for d in (a, b, c)])
    assert ("kvasir, monitoring only (test-selected, not the protocol above): best test iou over epochs 85.00 ± 1.41 "
            "(kv41 86.00 (epoch 250), kv1 84.00 (epoch 199)).") in md
    assert "| 81.00 ± 1.41 |" in md  # the table itself keeps the validation-selected test scores
    assert "busi, monitoring only" not in md
    d = _workdir(tmp_path, "kv123", seed=123, val={"iou": 0.8, "f1": 0.9}, test={"iou": 0.8, "f1": 0.9}, **kv)
    assert "monitoring only" not in summarize.table([summarize.read_run(x) for x in (a, b, d)])
