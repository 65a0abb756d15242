"""Export a train.py checkpoint as a small self-contained model folder: weights, the run's config, provenance.

    python -m lgmsnet_jax.export --workdir W [--checkpoint best|latest|STEP] --out DIR [--dtype float32]
        [--attention_impl xla] [--data_dir data/Kvasir-SEG] [--note TEXT] [--overwrite]

DIR/model/ is an Orbax checkpoint of the model's variables (parameters and BatchNorm statistics; no optimizer
state or input-pipeline state, so about half of a training checkpoint) and DIR/model.json holds the `build_model`
arguments, the parameter count, the run's config (`run_config`) and where the weights came from (`provenance`:
run, step, epoch, validation/test metrics of the run's summary). `evaluate`, `predict` and
`inference.loading.load_for_inference` take DIR in place of a workdir. --dtype and --attention_impl change only how
the model computes (e.g. a bf16, cuDNN-attention run exported for float32 CPU inference); the weights are the same.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
from flax import nnx


def export(workdir: str | pathlib.Path, out: str | pathlib.Path, which: str | int = "best", *,
           dtype: str | None = None, attention_impl: str | None = None, data_dir: str | None = None,
           note: str = "", evaluate_split: str | None = None, eval_data_dir: str | None = None) -> dict[str, Any]:
    """Writes the export folder; returns its model.json contents.

    Args:
      workdir: a train.py workdir.
      out: new folder (must not exist).
      which: "best", "latest" or a step number.
      dtype: compute dtype of the exported model ("float32", "bfloat16"); default the run's.
      attention_impl: the exported model's attention implementation; default the run's.
      data_dir: data_dir recorded in the exported config (default the run's), where `evaluate` looks by default.
      note: free text kept in provenance (e.g. the command and device that trained the run).
      evaluate_split: evaluate the exported folder on this split of the run's dataset (`lgmsnet_jax.evaluate`,
        per-image CSV in DIR/eval/) and record the means, backend and date as provenance["evaluation"]: the score
        the shipped weights reproduce.
      eval_data_dir: where that dataset is on this machine (default: the recorded data_dir); never recorded.
    """
    from lgmsnet_jax import convert  # noqa: PLC0415
    from lgmsnet_jax.inference import loading  # noqa: PLC0415
    from lgmsnet_jax.training import builders, checkpoint  # noqa: PLC0415

    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    step = loading.resolve_step(workdir, which)
    model, run_config = builders.restore_model(workdir, step)
    config = ml_collections.ConfigDict(run_config.to_dict())
    if dtype is not None:
        config.model.dtype = dtype
    if attention_impl is not None:
        config.model.attention_impl = attention_impl
    if data_dir is not None:
        config.data_dir = data_dir
    config = builders.fix_config_types(config)
    where = eval_data_dir or config.get("data_dir")
    if evaluate_split is not None and where is not None and not pathlib.Path(where).is_dir():
        raise FileNotFoundError(f"--evaluate_split {evaluate_split}: no dataset folder at {where!r} (--eval_data_dir)")
    if (dtype, attention_impl) != (None, None):  # same variables, another computation: rebuild and copy them over
        exported = builders.build_model(config)
        nnx.update(exported, nnx.state(model))
        model = exported
    mngr = checkpoint.make_manager(workdir, create=False)
    try:
        meta = checkpoint.restore_meta(mngr, step)
    finally:
        mngr.close()
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    provenance = {
        "run": workdir.resolve().name, "step": step, "checkpoint": str(which),
        "epoch": meta.get("best_epoch") if which == "best" else None,
        "best_val": meta.get("best_val") if which == "best" else None,
        "run_summary": summary.get("metrics") if f"step {step})" in summary.get("checkpoint", "") else None,
        "trained_dtype": run_config.model.get("dtype"), "trained_attention_impl": run_config.model.get("attention_impl"),
        "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "note": note,
    }
    build_kwargs = dict(name=config.model_name, ndim=config.get("ndim", 2), in_channels=config.in_channels,
                        num_classes=config.num_classes, **config.model.to_dict())
    convert.save_converted(model, out, build_kwargs, extra={"run_config": config.to_dict(), "provenance": provenance})
    commit = out / "model" / "commit_success.txt"
    if commit.is_file():  # Orbax writes the absolute save path there; an export is meant to be moved and shipped
        commit.write_text("Checkpoint commit was successful.\n")
    meta_path = out / convert.MODEL_JSON
    model_json = json.loads(meta_path.read_text())
    if evaluate_split is not None:
        try:
            model_json["provenance"]["evaluation"] = _evaluate(out, evaluate_split, eval_data_dir)
        except BaseException:
            shutil.rmtree(out)  # an export without the score it was asked to record is not left behind
            raise
        meta_path.write_text(json.dumps(model_json, indent=2, sort_keys=True) + "\n")
    return model_json


def _evaluate(folder: pathlib.Path, split: str, data_dir: str | None) -> dict[str, Any]:
    import jax  # noqa: PLC0415

    from lgmsnet_jax import evaluate  # noqa: PLC0415

    argv = ["--workdir", str(folder), "--split", split] + ([] if data_dir is None else ["--data_dir", data_dir])
    report = evaluate.run(evaluate.parse_args(argv))
    return {"dataset": report["dataset"], "split": report["split"], "count": report["count"],
            "means": {k: v["mean"] for k, v in report["metrics"].items() if isinstance(v, dict)},
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "csv": f"eval/{pathlib.Path(report['csv']).name}"}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m lgmsnet_jax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="train.py workdir")
    p.add_argument("--checkpoint", default="best", help="best (default), latest or a step number")
    p.add_argument("--out", required=True, help="output folder (model.json + model/)")
    p.add_argument("--dtype", default=None, help="compute dtype of the exported model (default: the run's)")
    p.add_argument("--attention_impl", default=None, help="xla | dot_product | cudnn (default: the run's)")
    p.add_argument("--data_dir", default=None, help="data_dir recorded for evaluate's default (default: the run's)")
    p.add_argument("--note", default="", help="free text kept in model.json's provenance")
    p.add_argument("--evaluate_split", default=None, help="evaluate the export on this split (e.g. test) and record it")
    p.add_argument("--eval_data_dir", default=None, help="the dataset's folder here (default: the recorded one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    try:
        meta = export(args.workdir, out, args.checkpoint, dtype=args.dtype, attention_impl=args.attention_impl,
                      data_dir=args.data_dir, note=args.note, evaluate_split=args.evaluate_split,
                      eval_data_dir=args.eval_data_dir)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prov = meta["provenance"]
    print(f"exported {args.workdir} step {prov['step']} ({args.checkpoint}) -> {out}: {meta['param_count']:,} "
          f"parameters, dtype {meta.get('dtype')}, attention {meta.get('attention_impl')}")
    if "evaluation" in prov:
        e = prov["evaluation"]
        print(f"{e['dataset']}/{e['split']} ({e['count']} images, {e['backend']}): "
              + "  ".join(f"{k.upper()} {v:.4f}" for k, v in e["means"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
