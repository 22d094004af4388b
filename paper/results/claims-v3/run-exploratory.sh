#!/usr/bin/env bash
# Rules v3's exploratory runs (PLAN.md here, "The exploratory verdicts"): seeds 0-4 of the rows that had fewer than 5
# seeds in ../claims (t2-ema-nobias for C4, the two t5-etap-* rows for C5), of the new rows (t1-optimal-solve for
# C13b, pred-linear-authors for C3b and C9b), and of t1-optimal under the rule v3 judges (the authors' solve branch
# as it ran, --optimal-rule solve-as-run, train.py's default; ../claims ran an earlier estimator). At laptop scale
# (SCALES["laptop"], the claims suite's protocol); the random-init baselines of seeds 0-4 are ../claims/baselines.
# paper.verdicts3 reads ../claims with these files over it, and not ../claims/t1-optimal. Finished runs are skipped, stopped ones
# resumed: run it again to continue.
# Usage: bash paper/results/claims-v3/run-exploratory.sh [more paper.reproduce flags, e.g. --dry-run]
set -euo pipefail
cd "$(dirname "$0")/../../.."
python -m paper.reproduce --scale laptop --data-dir "${DATA_DIR:-data}" --work out/claims-v3/exploratory \
    --results paper/results/claims-v3/exploratory \
    --rows t1-optimal,t1-optimal-solve,pred-linear-authors,t2-ema-nobias,t5-etap-ema-reg,t5-etap-ema-sym \
    --seeds 0,1,2,3,4 --baselines none "$@"
