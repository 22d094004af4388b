#!/usr/bin/env bash
# The confirmation of the v2 claims (CONFIRMATION.md here): the rows the contrasts decided on seeds 0-4 rest on, at
# seeds 5-9, at laptop scale (SCALES["laptop"], the claims suite's protocol), with the random-init baselines.
# Finished runs are skipped, unfinished ones resumed: run it again to continue.
# Usage: bash paper/results/claims-v2/run.sh [more paper.reproduce flags, e.g. --dry-run, --report]
set -euo pipefail
cd "$(dirname "$0")/../../.."
python -m paper.reproduce --scale laptop --data-dir "${DATA_DIR:-data}" --work out/claims-v2 \
    --results paper/results/claims-v2 --rows pred-none,thm2-no-stop-grad,pred-direct,pred-mlp,pred-linear,t1-optimal \
    --seeds 5,6,7,8,9 --baselines random "$@"
