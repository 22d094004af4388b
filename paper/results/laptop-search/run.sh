#!/usr/bin/env bash
# One point of the laptop protocol search (README.md here: the rule and the points). The three predictor rows (or
# ROWS) at SEEDS on the validation split, three runs side by side (one thread each on 2 cores), and the random-init
# baseline from pred-direct's checkpoint. --bf16 0: every point in fp32 (the first points ran on a CPU without bf16
# instructions, where auto is fp32), so that precision is not a knob between points. JOBS: runs side by side (3).
# Usage: bash paper/results/laptop-search/run.sh POINT "the point's knobs (train.py flags)" [ROWS] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
point=$1 knobs=$2 rows=${3:-pred-linear,pred-mlp,pred-direct} seeds=${4:-0}
base="--dataset fashion-mnist --split val --width 16 --stem imagenet --epochs 5 --ckpt-every 500 --log-every 100"
base="$base --eval-every 0 --bf16 0 $knobs"
python -m paper.reproduce --scale laptop --rows "$rows" --seeds "$seeds" --baselines random --jobs "${JOBS:-3}" --data-dir "${DATA_DIR:-data}" \
    --base "$base" --work "out/search/$point" --results "paper/results/laptop-search/$point"
