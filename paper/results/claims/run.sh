#!/usr/bin/env bash
# The laptop claims suite under its analysis plan (PLAN.md here): every laptop row of paper/reproduce.py on the
# plan's network (the regime search's width-16 point), 5 seeds where a claim rests on a row and 1 elsewhere (ROWS'
# seeds), and the baselines. Finished runs are skipped, unfinished ones resumed: run it again to continue.
# Usage: bash paper/results/claims/run.sh [more paper.reproduce flags, e.g. --dry-run, --rows table3, --report]
set -euo pipefail
cd "$(dirname "$0")/../../.."
base="--dataset fashion-mnist --width 16 --stem imagenet --crop-min 0.7 --lr 0.03 --lr-schedule const --epochs 5"
base="$base --bf16 0 --ckpt-every 500 --log-every 100"
python -m paper.reproduce --scale laptop --base "$base" --data-dir "${DATA_DIR:-data}" --work out/claims \
    --results paper/results/claims "$@"
