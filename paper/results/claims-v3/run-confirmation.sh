#!/usr/bin/env bash
# Rules v3's confirmation: the paper.reproduce lines of CONFIRMATION.md here (python -m paper.verdicts3 size), in
# their order (seed block by seed block). Finished runs are skipped and stopped ones resumed: run it again to go on.
# Usage: bash paper/results/claims-v3/run-confirmation.sh   (DATA_DIR: Fashion-MNIST's --data-dir, default data)
set -euo pipefail
cd "$(dirname "$0")/../../.."
plan=paper/results/claims-v3/CONFIRMATION.md
[ -f "$plan" ] || { echo "error: $plan is missing: it is written and committed before the first run" >&2; exit 1; }
grep '^python -m paper.reproduce ' "$plan" | while read -r line; do
    echo "== $line"
    $line --data-dir "${DATA_DIR:-data}" < /dev/null
done
