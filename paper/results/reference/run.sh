#!/usr/bin/env bash
# The reference runs at the network the regime search chose on the validation split (../regime-search/README.md):
# DirectPred, the trained 2-layer and linear predictors and no predictor, 3 seeds each, trained on Fashion-MNIST's
# 60k training images and probed once on its 10k test images (the kNN monitor, once an epoch, draws the lead
# figure); the baselines of the same network (random init as initialised and with its BN statistics re-estimated,
# raw pixels, the network trained with labels). fp32. Finished runs are skipped, unfinished ones resumed: run it
# again to continue.
# Usage: bash paper/results/reference/run.sh [more paper.reproduce flags, e.g. --dry-run, --report]
set -euo pipefail
cd "$(dirname "$0")/../../.."
base="--dataset fashion-mnist --stem imagenet --width 64 --epochs 5 --crop-min 0.7 --lr 0.06 --lr-schedule cosine"
base="$base --warmup-epochs 1 --bf16 0 --ckpt-every 500 --log-every 100"
python -m paper.reproduce --scale laptop --rows pred-direct,pred-mlp,pred-linear,pred-none --seeds 0,1,2 \
    --baselines all --base "$base" --data-dir "${DATA_DIR:-data}" --work out/reference --results paper/results/reference "$@"
