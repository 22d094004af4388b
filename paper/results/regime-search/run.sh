#!/usr/bin/env bash
# One point of the regime search (README.md here: the rule and the points): DirectPred (or ROWS) at SEEDS on the
# validation split, fp32, and the random-init baseline of the same network and seed.
# Usage: bash paper/results/regime-search/run.sh POINT "the point's knobs (train.py flags)" [ROWS] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
point=$1 knobs=$2 rows=${3:-pred-direct} seeds=${4:-0}
base="--dataset fashion-mnist --split val --bf16 0 --ckpt-every 500 --log-every 100 --eval-every 0 $knobs"
python -m paper.reproduce --scale laptop --rows "$rows" --seeds "$seeds" --baselines random --jobs "${JOBS:-1}" \
    --data-dir "${DATA_DIR:-data}" --base "$base" --work "out/regime/$point" --results "paper/results/regime-search/$point"
