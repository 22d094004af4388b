#!/usr/bin/env bash
# The regime search of ../PLAN.md: the L2 loss at both ends of the weight-decay grid (wd 4e-4, and the summed decay
# D = lr x wd x 2,340 steps = 3), seed 0, crop-min 0.7, the validation split, for lr 0.01, 0.003, 0.001 in that
# order, the two runs of an lr side by side (one thread each); it stops at the first lr where both finish without
# diverging (their whole run: 1,950 steps on the validation split's 50,000 training images; PLAN.md's 2,340 is the
# sweep's length on all 60,000). Each run's record (its command, whether it diverged, its last log line) goes to this folder as
# lr<lr>-wd<wd>.json; a run with a record is not run again, a stopped one resumes (--resume auto).
#     bash paper/results/bao/regime/run.sh          (WORK=out/bao/regime by default)
set -u
cd "$(dirname "$0")/../../../.."
RES=paper/results/bao/regime
WORK=${WORK:-out/bao/regime}
BASE="--dataset fashion-mnist --split val --width 16 --stem imagenet --crop-min 0.7 --lr-schedule const --epochs 5
      --bf16 0 --ckpt-every 500 --log-every 100 --loss l2 --seed 0 --resume auto"
one() {  # lr wd: train, then write the record
  local name="lr$1-wd$2" cmd
  [ -f "$RES/$name.json" ] && return 0
  mkdir -p "$WORK/$name"
  cmd="python train.py $(echo $BASE) --lr $1 --wd $2 --out-dir $WORK/$name"
  OMP_NUM_THREADS=1 $cmd > "$WORK/$name.txt" 2>&1
  python - "$WORK/$name" "$RES/$name.json" "$cmd" <<'PY'
import json, sys
work, out, cmd = sys.argv[1:]
text = open(work + ".txt").read()
last = [json.loads(line) for line in open(work + "/log.jsonl")][-1]
rec = {"command": cmd, "finished": "done: step" in text, "diverged": "error: training diverged" in text,
       "error": next((ln for ln in text.splitlines() if ln.startswith("error: ")), None),
       "last_log": {k: last.get(k) for k in ("step", "loss", "erank", "z_std")}}
json.dump(rec, open(out, "w"), indent=1)
print(out, json.dumps(rec))
PY
}
for lr in 0.01 0.003 0.001; do
  wd_hi=$(python -c "print(f'{3 / ($lr * 2340):.3g}')")
  one "$lr" 4e-4 & one "$lr" "$wd_hi" & wait
  if python -c "import json, sys; sys.exit(not all(json.load(open(f'$RES/lr$lr-wd{w}.json'))['finished']
                                                   for w in ('4e-4', '$wd_hi')))"; then
    echo "the regime's lr: $lr" | tee "$RES/CHOICE.txt"
    exit 0
  fi
done
echo "no candidate lr finished both runs" | tee "$RES/CHOICE.txt"
