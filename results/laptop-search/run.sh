#!/usr/bin/env bash
# The search's runs, in the order they were run (README.md here: the rule). Each point: the three predictor rows at
# seed 0 on the validation split, and the random-init baseline from pred-direct's checkpoint.
# Usage: bash results/laptop-search/run.sh POINT "train.py flags" [rows]
set -euo pipefail
cd "$(dirname "$0")/../.."
point=$1 flags=$2 rows=${3:-pred-linear,pred-mlp,pred-direct}
python reproduce.py --scale laptop --rows "$rows" --seeds 0 --baselines random --jobs 3 --data-dir "${DATA_DIR:-data}" \
    --base "$flags" --work "out/search/$point" --results "results/laptop-search/$point"
