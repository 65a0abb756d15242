#!/usr/bin/env bash
# 1 process x 2 GPUs vs 2 processes x 1 GPU on BUSI split 1 (2 epochs), with checkpoints resumed across the two
# process counts; prints per-run loss comparisons. Needs 2 GPUs. BENCHMARKS.md "Multi-process" has the results.
#   bash scripts/multiprocess_check.sh <BUSI data dir> <scratch dir>
set -u
DATA=${1:?BUSI data dir}; W=${2:?scratch dir}
PY=${PYTHON:-python3}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$W/jaxcache}
C="--config configs/busi.py:split=1 --config.data_dir=$DATA --config.epochs=2 --config.log_every=1 --config.num_workers=4 --config.picture_every_epochs=100"
one() { CUDA_VISIBLE_DEVICES=0,1 $PY train.py $C --workdir "$@"; }
two() { local wd=$1; shift; for i in 0 1; do CUDA_VISIBLE_DEVICES=$i $PY train.py $C --workdir $wd \
  --coordinator_address=localhost:23456 --num_processes=2 --process_id=$i "$@" > $wd.p$i.log 2>&1 & done; wait; }
mkdir -p $W
one $W/A --stop_after_steps=29 && cp -r $W/A $W/A2     # 1 process: steps 1-29
one $W/A                                               # 1 process: steps 30-58
two $W/A2                                              # 2 processes resume the 1-process checkpoint: 30-58
two $W/B --stop_after_steps=29                         # 2 processes: steps 1-29
one $W/B                                               # 1 process resumes the 2-process checkpoint: 30-58
$PY - "$W" <<'PY'
import json, sys
w = sys.argv[1]
L = {r: {x["step"]: x["train/loss"] for x in map(json.loads, open(f"{w}/{r}/metrics.jsonl")) if "train/loss" in x}
     for r in ("A", "A2", "B")}
for a, b in (("A", "B"), ("A", "A2")):
    rel = {s: abs(L[a][s] - L[b][s]) / abs(L[a][s]) for s in sorted(set(L[a]) & set(L[b]))}
    worst = max(rel, key=rel.get)
    print(f"{a} vs {b}: {len(rel)} steps; max relative loss difference {rel[worst]:.2e} at step {worst}; "
          f"steps 1-10: {max(rel[s] for s in range(1, 11)):.2e}")
PY
