#!/usr/bin/env bash
# The laptop claims suite under its analysis plan (PLAN.md here): every laptop row of paper/reproduce.py at laptop
# scale (SCALES["laptop"]: the regime search's width-16 point, crop-min 0.7), 5 seeds where a claim rests on a row and
# 1 elsewhere (ROWS' seeds), and the baselines; work in out/claims, results here. Finished runs are skipped,
# unfinished ones resumed: run it again to continue.
# Usage: bash paper/results/claims/run.sh [more paper.reproduce flags, e.g. --dry-run, --rows table3, --report]
set -euo pipefail
cd "$(dirname "$0")/../../.."
python -m paper.reproduce --scale laptop --data-dir "${DATA_DIR:-data}" "$@"
