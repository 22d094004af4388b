#!/usr/bin/env bash
# The sweep of PLAN.md: the cosine and the L2 loss x the weight-decay grid x crop-min 0.7 / 0.2, seeds 0-4, at the
# regime's lr (regime/CHOICE.txt: 0.001) on the test split, then the random-init baselines of each seed. Two runs
# side by side, one thread each, seed by seed (seed 0 of every row first). Each (row, seed) trains, is probed once
# (eval_linear.py --protocol fast) and leaves <row>/s<seed>.json here (paper.report.collect's fields and the
# command); a diverged run leaves its record unprobed. A run with a record is skipped, a stopped one resumes
# (--resume auto): run the same command again to continue.
#     bash paper/results/bao/run.sh                 (WORK=out/bao/sweep, RES=this folder, by default)
# Rows: <loss>-wd<wd>-crop<crop-min>; wd 4e-4 and D = lr x wd x 2,340 = 0.03, 0.3, 1, 3 at lr 0.001.
set -u
cd "$(dirname "$0")/../../.."
RES=${RES:-paper/results/bao}
WORK=${WORK:-out/bao/sweep}
BASE="--dataset fashion-mnist --width 16 --stem imagenet --lr 0.001 --lr-schedule const --epochs 5 --bf16 0
      --ckpt-every 500 --log-every 100"
one() {  # loss wd crop seed: train, probe, write the record
  local rid="$1-wd$2-crop$3" seed=$4 out cmd
  out="$WORK/$rid/s$seed"
  [ -f "$RES/$rid/s$seed.json" ] && return 0
  mkdir -p "$out" "$RES/$rid"
  cmd="python train.py $(echo $BASE) --loss $1 --wd $2 --crop-min $3 --seed $seed --resume auto --out-dir $out"
  local t0=$SECONDS
  OMP_NUM_THREADS=1 $cmd > "$out.train.txt" 2>&1
  echo $((SECONDS - t0)) >> "$out.seconds"  # (a resumed run adds its attempts up)
  if ! grep -q "error: training diverged" "$out.train.txt"; then
    grep -q "done: step" "$out.train.txt" || { echo "$rid s$seed failed: see $out.train.txt"; return 1; }
    OMP_NUM_THREADS=1 python eval_linear.py --ckpt "$out/ckpt.pt" --protocol fast --out "$out/eval.json" \
      > "$out.probe.txt" 2>&1 || { echo "$rid s$seed: probe failed, see $out.probe.txt"; return 1; }
  fi
  python - "$rid" "$seed" "$out" "$RES/$rid/s$seed.json" "$cmd" <<'PY'
import json, sys
from paper.report import collect, write_json
rid, seed, out, res, cmd = sys.argv[1:]
text = open(out + ".train.txt").read()
err = next((ln for ln in text.splitlines() if ln.startswith("error: training diverged")), None)
rec = dict(row=rid, seed=int(seed), command=cmd)  # (a diverged run: its error line, no probe)
if err:
    rec["diverged"] = err
else:
    rec.update(collect(out, sum(float(t) for t in open(out + ".seconds").read().split())))
write_json(res, rec)
print(res, {k: rec.get(k) for k in ("final_erank", "final_z_std", "linear_top1", "diverged")}, flush=True)
PY
}
base() {  # seed kind: the network at random init, probed (its config and init from the seed's cosine checkpoint)
  local name="$2-s$1" ckpt="$WORK/cosine-wd4e-4-crop0.7/s$1/ckpt.pt"
  [ -f "$RES/baselines/$name.json" ] && return 0
  mkdir -p "$RES/baselines" "$WORK/baselines"
  OMP_NUM_THREADS=1 python eval_linear.py --ckpt "$ckpt" --baseline "$2" --seed "$1" --protocol fast \
    --out "$WORK/baselines/$name.json" > "$WORK/baselines/$name.txt" 2>&1 || { echo "$name failed"; return 1; }
  python - "$WORK/baselines/$name.json" "$RES/baselines/$name.json" "$name" <<'PY'
import json, sys
from paper.report import write_json
ev = json.load(open(sys.argv[1]))
write_json(sys.argv[2], dict(baseline=sys.argv[3], linear_top1=ev["top1"], knn_top1=ev["knn_top1"],
                             protocol=ev["protocol"], seconds=ev["seconds"]))
print(sys.argv[2], ev["top1"], flush=True)
PY
}
export -f one base
export RES WORK BASE
for seed in 0 1 2 3 4; do
  for crop in 0.7 0.2; do
    for wd in 4e-4 0.0128 0.128 0.427 1.28; do
      for loss in cosine l2; do echo "one $loss $wd $crop $seed"; done
    done
  done
done | xargs -P 2 -I{} bash -c {}
for seed in 0 1 2 3 4; do for kind in random random-bn; do echo "base $seed $kind"; done; done |
  xargs -P 2 -I{} bash -c {}
