"""`python -m lgmsnet_jax.export` and the shipped Kvasir checkpoint (checkpoints/kvasir_lgmsnet)."""
import json
import pathlib

import pytest

from lgmsnet_jax import evaluate, export
from test_evaluate import trained_run

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "kvasir_lgmsnet"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


def test_export_scores_like_its_run_and_records_where_it_came_from(run_dir, tmp_path, capsys):
    assert export.main(["--workdir", str(run_dir), "--out", str(tmp_path / "exp"), "--evaluate_split", "test",
                        "--note", "tiny"]) == 0
    meta = json.loads((tmp_path / "exp" / "model.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    prov = meta["provenance"]
    assert f"step {prov['step']})" in summary["checkpoint"] and prov["checkpoint"] == "best"
    assert prov["run_summary"] == summary["metrics"] and prov["note"] == "tiny"
    assert prov["best_val"] == summary["metrics"]["val"]
    # Same weights, same data, same metric code: the export reproduces the run's own test score.
    assert prov["evaluation"]["means"]["iou"] == pytest.approx(summary["metrics"]["test"]["iou"], abs=1e-6)
    assert prov["evaluation"]["count"] == summary["metrics"]["test"]["count"]
    assert "/" not in (tmp_path / "exp" / "model" / "commit_success.txt").read_text()  # no machine path shipped
    assert "iou" in capsys.readouterr().out.lower()
    # The export carries its run's config: evaluate needs no --dataset, and the training state is left behind.
    rep = evaluate.run(evaluate.parse_args(["--workdir", str(tmp_path / "exp"), "--split", "val",
                                            "--out", str(tmp_path / "ev")]))
    assert rep["metrics"]["iou"]["mean"] == pytest.approx(summary["metrics"]["val"]["iou"], abs=1e-6)
    assert rep["model"].startswith(f"exported checkpoint {tmp_path / 'exp'}")


def test_export_refuses_to_overwrite(run_dir, tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    assert export.main(["--workdir", str(run_dir), "--out", str(tmp_path / "exp")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_shipped_kvasir_checkpoint_reproduces_its_test_iou_on_cpu(shared_dir, tmp_path):
    meta = json.loads((SHIPPED / "model.json").read_text())
    recorded = meta["provenance"]["evaluation"]
    rep = evaluate.run(evaluate.parse_args([
        "--workdir", str(SHIPPED), "--data_dir", str(shared_dir / "data" / "Kvasir-SEG"), "--split", "test",
        "--batch_size", "25", "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "ev")]))
    assert rep["count"] == recorded["count"] == 100
    assert meta["param_count"] == 2_321_393
    for k in ("iou", "f1"):  # per-image means over 100 images: float differences between CPUs stay << 1e-4
        assert rep["metrics"][k]["mean"] == pytest.approx(recorded["means"][k], abs=2e-4), k


def test_export_checks_the_evaluation_data_before_writing(run_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_data"
    assert export.main(["--workdir", str(run_dir), "--out", str(tmp_path / "exp"), "--evaluate_split", "test",
                        "--data_dir", "recorded/elsewhere", "--eval_data_dir", str(missing)]) == 2
    assert f"no dataset folder at {str(missing)!r}" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
