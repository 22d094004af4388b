"""
The paper's experiments with this code: every row of Tian, Chen, Ganguli (ICML 2021, arXiv 2102.06810) as data,
run at the paper's scale (GPUs, STL-10 / CIFAR-10 / ImageNet) or at laptop scale (Fashion-MNIST on a CPU), with
baselines, per-run result files, a markdown table and figures.

    python -m paper.reproduce --scale laptop --dry-run                # the exact commands, the row count, a time estimate
    python -m paper.reproduce --scale laptop                          # every row; finished runs skipped, unfinished resumed
    python -m paper.reproduce --scale laptop --rows predictors,table3 --seeds 0,1,2
    python -m paper.reproduce --scale paper --data-dir /data --rows table6 --dry-run      # with GPU-hours per row
    python -m paper.reproduce --scale paper --data-dir /data --rows table8 --download     # one run per GPU, data fetched
    python -m paper.reproduce --scale paper --data-dir /data --rows table9                # each ImageNet run on all GPUs
    python -m paper.reproduce --scale laptop --report                 # only the table and figures, from the result files

On a GPU node (--gpus, default every GPU torch sees) single-GPU runs go side by side, one per GPU
(CUDA_VISIBLE_DEVICES); each ImageNet row runs alone on all of them through --launcher (torchrun). On a CPU,
--jobs auto times the layouts of runs side by side at the start and takes the fastest. The plan (runs, devices, the
wall time it implies) is printed first; a missing dataset stops the suite before it starts (--download fetches
what torchvision can).

Each (row, seed) is `python train.py <scale's base flags> <row's flags> --seed S --out-dir WORK/<row>/s<S>`, then
`python eval_linear.py --ckpt WORK/<row>/s<S>/ckpt.pt`, exactly what a user would type (--dry-run prints them). Its
result (linear and kNN top-1, wall time, final z_std and effective rank, the kNN curve) goes to a small JSON file
under --results (default paper/results/<scale>/), meant to be committed: a run with a result file is never recomputed,
so a suite stopped half way is continued, here or on another machine, by running the same command again (an
unfinished run continues from its last checkpoint in WORK with --resume, where WORK survived).
Baselines, once per scale and seed, with the same probe: the same network at random init (as initialised, and with
its BN statistics re-estimated on the training images: the gains are taken over that one), raw pixels, and the same
network trained with labels for the same number of steps (eval_linear.py --baseline supervised).
"""
import argparse
import json
import math
import os
import queue
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from paper import stats
from plumbing import ArgumentParser, RunError
from train import looks_collapsed, parse_config
from data import DATASETS, VAL_SIZE, fmnist_missing

HERE = os.path.dirname(os.path.abspath(__file__))  # paper/
ROOT = os.path.dirname(HERE)  # the repository: train.py, eval_linear.py, bench.py

# -----------------------------------------------------------------------------
# the rows: Tian et al. 2021, STL-10 top-1 of the linear probe (100 epochs, 5 seeds) unless the table says otherwise.
# paper: [(mean, std or None), ...] (None: the std is not in our notes), or a sentence for a figure or a theorem.
# flags: train.py flags on top of the scale's base. laptop: run | same as <row id> (no run of its own) |
# "paper scale only: <why>". seeds: laptop seeds by default, 5 on every row a claim rests on and 1 elsewhere, as
# paper/results/claims/PLAN.md says (the paper scale runs 5 everywhere, as the paper).

# scale_flags: more flags at one scale. At laptop scale the trained predictors of the predictor comparison (and the
# no-stop-gradient control) run with the predictor lr 10x the trunk's (alpha_p, Fig. 6's knob, chosen by the protocol
# search); the ablations of a trained predictor (Tables 2, 3, 5, Fig. 6) keep the paper's alpha_p 1
LAPTOP_AP = {"laptop": "--pred-lr-ratio 10"}
ROWS = [
    # the predictors (Table 8 / Table 9's comparison; Table 3's 2-layer regular EMA row for mlp)
    dict(id="pred-none", table="Thm 2", label="no predictor (Wp = I)", paper="collapses (Theorem 2)",
         flags="--predictor none", seeds=5),
    dict(id="pred-linear", table="Table 8", label="linear predictor, trained by SGD", paper=[(75.06, None)],
         flags="--predictor linear", seeds=5, scale_flags=LAPTOP_AP,
         check="75.06 is also Table 6's eps 0.5 row, and Table 3's same setting reads 74.51"),
    dict(id="pred-mlp", table="Table 3", label="2-layer predictor, trained (EMA, regular)", paper=[(78.85, None)],
         flags="--predictor mlp", seeds=5, scale_flags=LAPTOP_AP),
    dict(id="pred-direct", table="Table 8", label="DirectPred, freq 1 (rho 0.3, eps 0.1)", paper=[(77.86, None)],
         flags="", seeds=5),
    dict(id="pred-direct-f5", table="Table 8", label="DirectPred, freq 5", paper=[(77.54, None)],
         flags="--freq 5", seeds=5),
    dict(id="pred-directcopy", table="DirectCopy", label="DirectCopy (Wang et al. 2021, arXiv 2110.04947)",
         paper="not in this paper", flags="--predictor directcopy"),
    # Table 3: symmetric vs regular Wp, 1- and 2-layer, with and without EMA
    dict(id="t3-1l-ema-sym", table="Table 3", label="1-layer, EMA, symmetric", paper=[(75.09, None)],
         flags="--predictor linear --sym-wp 1", seeds=5),
    dict(id="t3-1l-ema-reg", table="Table 3", label="1-layer, EMA, regular", paper=[(74.51, None)],
         flags="--predictor linear", same_as="pred-linear", seeds=5),
    dict(id="t3-1l-noema-sym", table="Table 3", label="1-layer, no EMA, symmetric", paper=[(36.62, None)],
         flags="--predictor linear --sym-wp 1 --ema 0 --target-init copy", seeds=5),
    dict(id="t3-1l-noema-reg", table="Table 3", label="1-layer, no EMA, regular", paper=[(72.85, None)],
         flags="--predictor linear --ema 0 --target-init copy", seeds=5),
    dict(id="t3-2l-ema-sym", table="Table 3", label="2-layer, EMA, symmetric", paper=[(71.58, 6.46)],
         check="the std 6.46 is not in our notes of the paper",
         flags="--predictor mlp --sym-wp 1", seeds=5),
    dict(id="t3-2l-ema-reg", table="Table 3", label="2-layer, EMA, regular", paper=[(78.85, None)],
         flags="--predictor mlp", same_as="pred-mlp", seeds=5),
    dict(id="t3-2l-noema-sym", table="Table 3", label="2-layer, no EMA, symmetric", paper=[(35.59, None)],
         flags="--predictor mlp --sym-wp 1 --ema 0 --target-init copy", seeds=5),
    dict(id="t3-2l-noema-reg", table="Table 3", label="2-layer, no EMA, regular", paper=[(65.98, None)],
         flags="--predictor mlp --ema 0 --target-init copy", seeds=5),
    # Table 2: no weight decay, linear predictor, with / without EMA and bias (baseline with wd 4e-4: t3-1l-ema-reg)
    dict(id="t2-ema-nobias", table="Table 2", label="wd 0, EMA, no bias", paper=[(70.62, None)],
         flags="--predictor linear --wd 0"),
    dict(id="t2-ema-bias", table="Table 2", label="wd 0, EMA, bias", paper=[(70.99, None)],
         flags="--predictor linear --wd 0 --pred-bias 1"),
    dict(id="t2-noema-nobias", table="Table 2", label="wd 0, no EMA, no bias", paper=[(71.36, None)],
         flags="--predictor linear --wd 0 --ema 0 --target-init copy"),
    dict(id="t2-noema-bias", table="Table 2", label="wd 0, no EMA, bias", paper=[(71.37, None)],
         flags="--predictor linear --wd 0 --ema 0 --target-init copy --pred-bias 1"),
    # Table 5: weight decay on the predictor (eta_p) and the trunk (eta_s) separately
    dict(id="t5-etap-ema-sym", table="Table 5", label="eta_p 4e-4, eta_s 0, EMA, symmetric", paper=[(71.91, None)],
         flags="--predictor linear --wd 0 --pred-wd 4e-4 --sym-wp 1"),
    dict(id="t5-etap-ema-reg", table="Table 5", label="eta_p 4e-4, eta_s 0, EMA, regular", paper=[(70.54, None)],
         flags="--predictor linear --wd 0 --pred-wd 4e-4"),
    dict(id="t5-noeta-noema-sym", table="Table 5", label="eta 0 everywhere, no EMA, symmetric", paper=[(43.04, None)],
         flags="--predictor linear --wd 0 --pred-wd 0 --ema 0 --target-init copy --sym-wp 1"),
    # Figure 6: a larger relative predictor lr alpha_p makes symmetric Wp work without EMA
    dict(id="f6-ap1", table="Fig. 6", label="alpha_p 1, symmetric, no EMA", paper="fails (alpha_p = 1)",
         flags="--predictor linear --sym-wp 1 --ema 0 --target-init copy", same_as="t3-1l-noema-sym"),
    *[dict(id=f"f6-ap{a}", table="Fig. 6", label=f"alpha_p {a}, symmetric, no EMA", paper="alpha_p > 1 works",
           flags=f"--predictor linear --sym-wp 1 --ema 0 --target-init copy --pred-lr-ratio {a}", seeds=5 if a == 5 else 1)
      for a in (2, 5, 10)],
    # Table 6: DirectPred's eps (and rho)
    *[dict(id=f"t6-rho0.3-eps{e}", table="Table 6", label=f"DirectPred rho 0.3, eps {e}", paper=[(p, None)],
           flags=f"--rho 0.3 --eps {e}", seeds=5 if e in (0, 0.5) else 1,
           **({"same_as": "pred-direct"} if e == 0.1 else {}),
           **({"check": "75.06 is also Table 8's SGD linear predictor (100 epochs)"} if e == 0.5 else {}))
      for e, p in ((0, 76.77), (0.01, 77.11), (0.1, 77.86), (0.5, 75.06))],
    *[dict(id=f"t6-rho0.5-eps{e}", table="Table 6", label=f"DirectPred rho 0.5, eps {e}", paper=[(p, None)],
           flags=f"--rho 0.5 --eps {e}", laptop="paper scale only: the laptop suite runs Table 6 at one rho (budget)")
      for e, p in ((0, 76.65), (0.01, 76.76), (0.1, 77.56), (0.5, 75.22))],
    # Table 7: an offset c inside the root, at freq 1 and 2
    *[dict(id=f"t7-f{f}-c{c}", table="Table 7", label=f"offset c {c}, freq {f}", paper=[(p, s)],
           flags=f"--eps 0 --offset {c}" + (" --freq 2" if f == 2 else ""), seeds=5 if (f, c) in ((1, 0.1), (1, -0.1), (2, 0.1)) else 1,
           **({"check": "the std 18.43 is not in our notes of the paper"} if s else {}))
      for f, row in ((1, ((0.1, 46.57, 18.43), (0.05, 65.31, None), (-0.05, 77.11, None), (-0.1, 76.46, None))),
                     (2, ((0.1, 75.01, None), (0.05, 75.10, None), (-0.05, 76.83, None), (-0.1, 76.31, None))))
      for c, p, s in row],
    # Sec. 5 and Table 1
    dict(id="sec5-partitions6", table="Sec. 5", label="feature-dependent Wp, 6 partitions", paper=[(78.20, None)],
         flags="--partitions 6", seeds=5),
    dict(id="t1-optimal", table="Table 1", label="optimal plug-in predictor (N = 1, EMA)", paper=[(40.67, None)],
         flags="--predictor optimal", seeds=5),
    # Theorem 2's other half: no stop-gradient
    dict(id="thm2-no-stop-grad", table="Thm 2", label="no stop-gradient (SimSiam, linear predictor)",
         paper="collapses (Theorem 2)", flags="--predictor linear --ema 0 --target-init copy --stop-grad 0", seeds=5,
         scale_flags=LAPTOP_AP),
    # Figure 2: the eigenvalues of F and Wp, alignment and symmetry over training, from the linear predictor's log
    dict(id="fig2-linear", table="Fig. 2", label="eigenspace alignment of a trained linear Wp",
         paper="alignment rises toward 1", flags="--predictor linear", same_as="pred-linear",
         scale_flags=LAPTOP_AP),
    # Table 8: longer training, and CIFAR-10 (paper scale only)
    *[dict(id=f"t8-stl-{k}-{ep}", table="Table 8", label=f"STL-10 {name}, {ep} epochs", paper=[(p, None)],
           flags=f"{fl} --epochs {ep}".strip(), laptop="paper scale only: 300/500 epochs (laptop analog: " + same + ")")
      for k, name, fl, same, nums in (("direct", "DirectPred freq 1", "", "pred-direct", (78.77, 78.86)),
                                      ("direct-f5", "DirectPred freq 5", "--freq 5", "pred-direct-f5", (79.90, 80.28)),
                                      ("linear", "SGD linear", "--predictor linear", "pred-linear", (75.25,)))
      for ep, p in zip((300, 500), nums)],
    *[dict(id=f"t8-cifar-{k}-{ep}", table="Table 8", label=f"CIFAR-10 {name}, {ep} epochs", paper=[(p, None)],
           flags=f"--preset paper-cifar10 {fl} --epochs {ep}".replace("  ", " "),
           laptop=f"paper scale only: CIFAR-10 (laptop analog: {same})")
      for k, name, fl, same, nums in (("direct", "DirectPred freq 1", "", "pred-direct", (85.21, 88.88, 89.52)),
                                      ("direct-f5", "DirectPred freq 5", "--freq 5", "pred-direct-f5",
                                       (84.93, 88.83, 89.56)),
                                      ("linear", "SGD linear", "--predictor linear", "pred-linear",
                                       (84.49, 88.57, 89.33)))
      for ep, p in zip((100, 300, 500), nums)],
    # Table 9: ImageNet, ResNet-50 (paper scale only, under --launcher)
    *[dict(id=f"t9-{ep}-{pred}", table="Table 9", label=f"ImageNet R50 {ep} ep, {name}", paper=[(p, None)],
           flags=f"--preset {preset} --predictor {pred}", imagenet=True,
           laptop=f"paper scale only: ImageNet ResNet-50 (laptop analog: pred-{pred})")
      for ep, preset, nums in ((60, "imagenet-sgd-60", (64.7, 59.4, 64.4)), (300, "imagenet-lars-300", (72.5, 69.9, 72.4)))
      for pred, name, p in zip(("mlp", "linear", "direct"), ("2-layer", "linear", "DirectPred"), nums)],
]
ROW_IDS = [r["id"] for r in ROWS]
GROUPS = {  # --rows names a table or a group as well as row ids
    "predictors": [r["id"] for r in ROWS if r["id"].startswith("pred-")],
    "table1": ["t1-optimal"], "table2": [r["id"] for r in ROWS if r["id"].startswith("t2-")],
    "table3": [r["id"] for r in ROWS if r["id"].startswith("t3-")],
    "table5": [r["id"] for r in ROWS if r["id"].startswith("t5-")],
    "table6": [r["id"] for r in ROWS if r["id"].startswith("t6-")],
    "table7": [r["id"] for r in ROWS if r["id"].startswith("t7-")],
    "table8": [r["id"] for r in ROWS if r["id"].startswith("t8-")] + ["pred-direct", "pred-direct-f5", "pred-linear"],
    "table9": [r["id"] for r in ROWS if r["id"].startswith("t9-")],
    "fig6": [r["id"] for r in ROWS if r["id"].startswith("f6-")], "sec5": ["sec5-partitions6"],
    "thm2": ["pred-none", "thm2-no-stop-grad"], "fig2": ["fig2-linear"],
}

# the two scales: train.py's base flags, the probe, and where the work and the result files go (seeds: each row's own
# at laptop scale; 5 at paper scale, 1 for the ImageNet rows, parse() below). The laptop protocol is the claims
# suite's (paper/results/claims/PLAN.md), the README's main job and the class demo's: the regime search's width-16
# point (paper/results/regime-search, chosen on the validation split), the paper's constant lr 0.03, crop scale 0.7-1,
# 5 epochs (2,340 steps of batch 128), alpha_p 10 on the predictor comparison's trained rows (LAPTOP_AP); fp32 (a
# verdict must not depend on the CPU's bf16 instructions); a checkpoint every 500 steps (a stopped suite resumes)
SCALES = {
    "laptop": dict(base="--dataset fashion-mnist --width 16 --stem imagenet --crop-min 0.7 --lr 0.03 --lr-schedule const "
                        "--epochs 5 --bf16 0 --ckpt-every 500 --log-every 100",
                   probe="--protocol fast", work="out/claims", results="paper/results/claims"),
    "paper": dict(base="--preset paper-stl10 --dataset stl10 --ckpt-every 5000 --log-every 500",
                  probe="--protocol paper", imagenet_probe="--protocol augmented", work="out/reproduce/paper",
                  results="paper/results/paper"),
}
DEMO_ROWS = ("pred-none", "pred-linear", "pred-direct")  # --demo: collapse against a trained and a set predictor,
DEMO_FLAGS = "--max-steps 600 --eval-every 300 --log-every 20"  # 600 steps of the laptop protocol, side by side
CURVES = ("pred-none", "pred-linear", "pred-mlp", "pred-direct")  # these log the kNN monitor over steps (the lead
EVAL_EVERY = {"laptop": 468, "paper": 5000}  # figure): every seed at laptop scale, seed 0 at paper scale
# paper scale, for planning only: assumed img/s per GPU for one training image (two views, online + target) on an
# A100 in bf16; NOT measured with this code (public anchors: a single-file SimCLR ResNet-18 trains a CIFAR-10 epoch in
# 11.9 s on an A100, ~4200 img/s; ResNet-50 at 224 px costs ~7x ResNet-18 at 32 px with the CIFAR stem)
ASSUMED_IMG_S = {"stl10": 4000, "cifar10": 4000, "imagenet": 550}


def row(rid):
    return ROWS[ROW_IDS.index(rid)]


def row_flags(r, scale):
    """A row's train.py flags at one scale (on top of the scale's base)."""
    return (r["flags"] + " " + r.get("scale_flags", {}).get(scale, "")).strip()


def runs_row(r, scale):
    """The row whose runs give this row's numbers: itself, or the one it is the same run as at this scale (None: not
    at this scale)."""
    extra = lambda x: x.get("scale_flags", {}).get(scale)
    if "same_as" in r and extra(r) == extra(row(r["same_as"])):
        return r["same_as"]
    if scale == "laptop" and r.get("laptop", "run").startswith("paper scale only"):
        return None
    return r["id"]


def script(name):
    """train.py / eval_linear.py as a user in this directory would name it."""
    return os.path.relpath(os.path.join(ROOT, name))


def train_flags(r, base, data_dir, scale):
    """train.py flags of one row on top of the scale's base flags (no --seed / --out-dir)."""
    base = shlex.split(base)
    if "--preset" in r["flags"]:  # CIFAR-10 / ImageNet rows bring their own preset and dataset
        base = [t for i, t in enumerate(base) if t not in ("--preset", "--dataset")
                and (i == 0 or base[i - 1] not in ("--preset", "--dataset"))]
    return base + shlex.split(row_flags(r, scale)) + ["--data-dir", data_dir]


def run_dir(args, rid, seed):
    """A (row, seed)'s training folder in the work folder (train.py's --out-dir: checkpoint, log)."""
    return os.path.join(args.work, rid, f"s{seed}")


def checkpoint(args, rid, seed):
    """Where a (row, seed)'s training run leaves its checkpoint."""
    return os.path.join(run_dir(args, rid, seed), "ckpt.pt")


def commands(r, args, seed):
    """(train command, probe command) of one (row, seed): argument lists, exactly what runs ("python" stands for
    this interpreter)."""
    out = run_dir(args, r["id"], seed)
    flags = train_flags(r, args.base, args.data_dir, args.scale) + ["--seed", str(seed), "--out-dir", out]
    if r["id"] in CURVES and (seed == 0 or args.scale == "laptop") and "--eval-every" not in flags:  # (a --base
        # may set its own, or 0: off)
        flags += ["--eval-every", str(EVAL_EVERY[args.scale])]
    probe = shlex.split(SCALES[args.scale]["imagenet_probe" if r.get("imagenet") else "probe"])
    start = shlex.split(args.launcher) if r.get("imagenet") else ["python"]
    return (start + [script("train.py"), *flags],
            start + [script("eval_linear.py"), "--ckpt", checkpoint(args, r["id"], seed), *probe,
                     "--out", os.path.join(out, "eval.json")])


def baseline_commands(args, seeds):
    """{name: probe command}: the same network at random init (one per seed; as initialised, and with its BN
    statistics re-estimated on the training images), raw pixels, and the supervised ceiling (first seed). The network's config comes from pred-direct's checkpoint (the base recipe)."""
    probe = shlex.split(SCALES[args.scale]["probe"])
    ev = ["python", script("eval_linear.py")]
    ckpt = lambda s: checkpoint(args, "pred-direct", s)
    base = shlex.split(args.base)
    dataset = base[base.index("--dataset") + 1]
    data_dir = ["--data-dir", args.data_dir]
    out = lambda name: ["--out", os.path.join(args.work, "baselines", f"{name}.json")]
    cmds = {f"{b}-s{s}": ev + ["--ckpt", ckpt(s), "--baseline", b, "--seed", str(s), *probe, *out(f"{b}-s{s}")]
            for s in seeds for b in ("random", "random-bn")}
    split = ["--split", base[base.index("--split") + 1]] if "--split" in base else []  # (the runs' probes follow
    # their checkpoints' --split; pixels has no checkpoint)
    cmds["pixels"] = ev + ["--dataset", dataset, *data_dir, *split, "--baseline", "pixels", *probe, *out("pixels")]
    cmds["supervised"] = ev + ["--ckpt", ckpt(seeds[0]), "--baseline", "supervised", *probe, *out("supervised")]
    return cmds


def gpu_hours(cmd):
    """Paper scale: assumed GPU-hours of one training command (ASSUMED_IMG_S; the probe not counted)."""
    return run_images(cmd) / ASSUMED_IMG_S[run_config(cmd)["dataset"]] / 3600


# -----------------------------------------------------------------------------
# results: one small JSON per (row, seed) and per baseline


def read_log(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def collect(work_run, wall):
    """The committed summary of one finished (row, seed): probe numbers, wall time, final diagnostics, kNN curve."""
    ev = json.load(open(os.path.join(work_run, "eval.json")))
    log = read_log(os.path.join(work_run, "log.jsonl"))
    last = [r for r in log if "erank" in r][-1]
    return {"linear_top1": ev["top1"], "knn_top1": ev["knn_top1"], "protocol": ev["protocol"],
            "train_seconds": round(wall, 1), "probe_seconds": ev["seconds"], "steps": last["step"],
            "final_loss": last["loss"], "final_z_std": last["z_std"], "final_erank": last["erank"],
            "curve": [{**{k: r[k] for k in ("step", "loss", "z_std", "erank", "knn_top1") if k in r},
                       **({"align": r["align"][:4]} if "align" in r else {})} for r in log]}  # align: Fig. 2, top 4


def run_one(rid, seed, args, env):
    """Train (fresh, or --resume from WORK's checkpoint), probe, write the result file. Returns its path."""
    res_path = os.path.join(args.results, rid, f"s{seed}.json")
    if os.path.exists(res_path):
        return res_path
    work_run = run_dir(args, rid, seed)
    train, probe = commands(row(rid), args, seed)
    if os.path.exists(checkpoint(args, rid, seed)):
        train.append("--resume")
    wall_file = os.path.join(work_run, "wall.json")  # training time of earlier attempts (a resumed run adds up)
    wall = json.load(open(wall_file))["seconds"] if os.path.exists(wall_file) else 0.0
    t0 = time.time()
    diverged = sh(train, env, os.path.join(args.work, rid, f"s{seed}.train.txt"), ok="error: training diverged")
    wall += time.time() - t0
    with open(wall_file, "w") as fh:
        json.dump({"seconds": wall}, fh)
    if diverged:  # a result too (nan/inf, the run stopped): recorded, never probed, the suite goes on
        write_json(res_path, dict(row=rid, seed=seed, scale=args.scale, command=shlex.join(train), diverged=diverged,
                                  train_seconds=round(wall, 1)))
        return res_path
    sh(probe, env, os.path.join(args.work, rid, f"s{seed}.probe.txt"))
    summary = dict(row=rid, seed=seed, scale=args.scale, command=shlex.join(train), **collect(work_run, wall))
    if rid.startswith(("pred-linear", "t3-1l")) and seed == 0:  # a linear Wp's full log: the Fig. 2 panels
        summary["log"] = read_log(os.path.join(work_run, "log.jsonl"))
    write_json(res_path, summary)
    return res_path


def restore_checkpoint(rid, seed, args, env):
    """The checkpoint of a finished (row, seed) whose work folder is gone (a fresh clone holds only the committed
    result files): its training command run again, not probed, so that the baselines can read its network's config
    and init. Returns the checkpoint's path."""
    ckpt = checkpoint(args, rid, seed)
    if not os.path.exists(ckpt):
        sh(commands(row(rid), args, seed)[0], env, os.path.join(args.work, rid, f"s{seed}.train.txt"))
    return ckpt


def run_baseline(name, cmd, args, env):
    res_path = os.path.join(args.results, "baselines", f"{name}.json")
    if not os.path.exists(res_path):
        sh(cmd, env, os.path.join(args.work, "baselines", f"{name}.txt"))
        ev = json.load(open(cmd[cmd.index("--out") + 1]))
        write_json(res_path, dict(baseline=name, linear_top1=ev["top1"], knn_top1=ev["knn_top1"],
                                  protocol=ev["protocol"], seconds=ev["seconds"], command=shlex.join(cmd)))
    return res_path


def sh(cmd, env, log_path, ok=None):
    """Run one command, its output into log_path. A failure whose last line starts with `ok` returns that line;
    any other failure stops the suite with one line naming the log."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as fh:
        r = subprocess.run([sys.executable if c == "python" else c for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                           env=env)
    if r.returncode:
        tail = (open(log_path).read().strip().splitlines() or [""])[-1]
        if ok and tail.startswith(ok):
            return tail
        script_at = next(i for i, c in enumerate(cmd) if c.endswith(".py"))
        raise RuntimeError(f"{shlex.join(cmd[script_at:script_at + 2])} ... failed (exit {r.returncode}): {tail[:300]} "
                           f"(log: {log_path})")
    return None


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(path + ".tmp", path)


# -----------------------------------------------------------------------------
# the report: mean +- std over seeds, the gain over the same network at random init, a markdown table, figures


def mean_std(xs):
    """(mean, sample std or None for n < 2, n)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs)


def fmt(ms, scale=100, sign=""):
    """mean ± std (n=k); sign="+": a difference, signed."""
    m, s, n = ms
    return f"{scale * m:{sign}.2f} ± {scale * s:.2f} (n={n})" if s is not None else f"{scale * m:{sign}.2f} (n={n})"


def paper_text(r):
    if isinstance(r["paper"], str):
        return r["paper"]
    return " / ".join(f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f}" for m, s in r["paper"])


def load_results(results):
    """{row id: {seed: result}}, {baseline name: result} from a results directory."""
    runs, base = {}, {}
    if os.path.isdir(results):
        for rid in os.listdir(results):
            d = os.path.join(results, rid)
            for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                obj = json.load(open(os.path.join(d, f)))
                if rid == "baselines":
                    base[f[:-5]] = obj
                else:
                    runs.setdefault(rid, {})[obj["seed"]] = obj
    return runs, base


def aggregate(scale, results):
    """One dict per row: the paper's number, ours (linear, kNN) as mean / std / n, and the gain over random init."""
    runs, base = load_results(results)
    rand = random_init(base)
    out = []
    for r in ROWS:
        src = runs_row(r, scale)
        got = runs.get(src, {}) if src else {}
        rec = dict(id=r["id"], table=r["table"], label=r["label"], flags=row_flags(r, scale), paper=paper_text(r),
                   runs_as=src, n=len(got), check=r.get("check"))
        if scale == "laptop" and src is None:
            rec["note"] = r["laptop"]
        rec["diverged"] = sum("diverged" in v for v in got.values())
        got = {s: v for s, v in got.items() if "diverged" not in v}
        if got:
            seeds = sorted(got)
            rec["linear"] = mean_std([got[s]["linear_top1"] for s in seeds])
            rec["knn"] = mean_std([got[s]["knn_top1"] for s in seeds])
            if all(s in rand for s in seeds):
                rec["gain_linear"] = mean_std([got[s]["linear_top1"] - rand[s]["linear_top1"] for s in seeds])
                rec["gain_knn"] = mean_std([got[s]["knn_top1"] - rand[s]["knn_top1"] for s in seeds])
            rec["erank"] = statistics.mean(got[s]["final_erank"] for s in seeds)
            rec["z_std"] = statistics.mean(got[s]["final_z_std"] for s in seeds)
        out.append(rec)
    return out, base


def table_markdown(scale, results):
    """The markdown table of one scale (paper/results/paper/table.md is this, at the paper scale)."""
    rows, base = aggregate(scale, results)
    if scale == "paper":
        lines = ["| paper | row | flags (after `python train.py --preset paper-stl10`; a row's own --preset replaces it) "
                 "| paper (STL-10 unless said; ± std where we have it) | ours (mean ± std over seeds; probe: "
                 "--protocol paper, ImageNet --protocol augmented) |", "| --- | --- | --- | --- | --- |"]
        for r in rows:
            ours = fmt(r["linear"]) if "linear" in r else "not run"
            check = f" (to check against the paper: {r['check']})" if r["check"] else ""
            lines.append(f"| {r['table']} | {r['label']} | `{r['flags'] or '(none)'}` | {r['paper']}{check} | {ours} |")
        return "\n".join(lines)
    lines = ["| paper | row | flags | paper (STL-10) | linear top-1 | kNN top-1 | gain over random init (linear / kNN; BN re-estimated where probed) "
             "| final rank / z_std |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "note" in r:
            continue
        if "linear" not in r:
            what = f"diverged (n={r['diverged']})" if r["diverged"] else "not run"
            lines.append(f"| {r['table']} | {r['label']} | `{r['flags'] or '(base)'}` | {r['paper']} | {what} | | | |")
            continue
        same = f" (= {r['runs_as']})" if r["runs_as"] != r["id"] else ""
        gain = (f"{100 * r['gain_linear'][0]:+.2f} / {100 * r['gain_knn'][0]:+.2f}" if "gain_linear" in r else "")
        div = f"; {r['diverged']} more diverged" if r["diverged"] else ""
        lines.append(f"| {r['table']} | {r['label']}{same} | `{r['flags'] or '(base)'}` | {r['paper']} | "
                     f"{fmt(r['linear'])}{div} | {fmt(r['knn'])} | {gain} | {r['erank']:.1f} / {r['z_std']:.2f} |")
    for name in sorted(base, key=lambda k: (k.startswith("random"), k)):
        b = base[name]
        lines.append(f"| baseline | {name} | | | {100 * b['linear_top1']:.2f} | {100 * b['knn_top1']:.2f} | | |")
    return "\n".join(lines)


# the verdicts: each claim of the paper (arXiv 2102.06810) as a contrast between two rows, judged seed by seed (the
# same seed = the same init and batch order) on the linear probe, kNN beside. sign: +1 = a above b, 0 = about equal.
# b "random": the same network at its random init (the baselines). collapse: the row's runs end collapsed and the
# contrast row's do not. wd: a weight-decay effect, which acts through e^(-2 eta t) (Thm 1; Fig. 2's symmetrisation).
# basin: the paper's mechanism is the weight-decay / EMA basin of its eigenmode dynamics (claims-v2/PLAN.md, rule 6)
CLAIMS = [
    dict(claim="C1", text="no predictor (Wp = I) collapses (Thm 2)", collapse="pred-none", b="pred-direct"),
    dict(claim="C1", text="no stop-gradient collapses (Thm 2)", collapse="thm2-no-stop-grad", b="pred-direct"),
    dict(claim="C2", text="1-layer, no EMA: regular works, symmetric fails (Table 3: 72.85 vs 36.62)",
         a="t3-1l-noema-reg", b="t3-1l-noema-sym", sign=1, basin=True),
    dict(claim="C2", text="1-layer, EMA: symmetric about equal to regular (Table 3: 75.09 vs 74.51)",
         a="t3-1l-ema-sym", b="t3-1l-ema-reg", sign=0, basin=True),
    dict(claim="C3", text="2-layer, no EMA: regular beats symmetric (Table 3: 65.98 vs 35.59)",
         a="t3-2l-noema-reg", b="t3-2l-noema-sym", sign=1, basin=True),
    dict(claim="C3", text="2-layer regular with EMA beats the linear predictor (Tables 3, 8: 78.85 vs 75.06)",
         a="pred-mlp", b="pred-linear", sign=1),
    dict(claim="C3", text="2-layer regular with EMA beats the symmetric one (Table 3: 78.85 vs 71.58)",
         a="t3-2l-ema-reg", b="t3-2l-ema-sym", sign=1, basin=True),
    dict(claim="C4", text="wd 4e-4 helps the linear predictor (Table 2: 74.51 vs 70.62 at wd 0)",
         a="t3-1l-ema-reg", b="t2-ema-nobias", sign=1, wd=True, basin=True),
    dict(claim="C5", text="wd on the predictor only, EMA: symmetric above regular (Table 5: 71.91 vs 70.54)",
         a="t5-etap-ema-sym", b="t5-etap-ema-reg", sign=1, wd=True, basin=True),
    dict(claim="C6", text="alpha_p 5 makes symmetric Wp work without EMA (Fig. 6)",
         a="f6-ap5", b="t3-1l-noema-sym", sign=1, basin=True),
    dict(claim="C7", text="DirectPred learns without training Wp (Table 6)", a="pred-direct", b="random", sign=1),
    dict(claim="C7", text="eps 0.1 above eps 0.5 (Table 6: 77.86 vs 75.06)", a="pred-direct", b="t6-rho0.3-eps0.5",
         sign=1),
    dict(claim="C7", text="eps 0.1 slightly above eps 0 (Table 6: 77.86 vs 76.77)", a="pred-direct",
         b="t6-rho0.3-eps0", sign=1),
    dict(claim="C8", text="freq 1: offset c = -0.1 fine, c = +0.1 hurts (Table 7: 76.46 vs 46.57)",
         a="t7-f1-c-0.1", b="t7-f1-c0.1", sign=1, basin=True),
    dict(claim="C8", text="c = +0.1 hurts less at freq 2 (Table 7: 75.01 vs 46.57)", a="t7-f2-c0.1", b="t7-f1-c0.1",
         sign=1, basin=True),
    dict(claim="C9", text="DirectPred above the SGD-trained linear predictor (Table 8: 77.86 vs 75.06)",
         a="pred-direct", b="pred-linear", sign=1),
    dict(claim="C9", text="freq 5 about equal to freq 1 at 100 epochs (Table 8: 77.54 vs 77.86)",
         a="pred-direct-f5", b="pred-direct", sign=0),
    dict(claim="C10", text="ImageNet R50: DirectPred about equal to the 2-layer predictor (Table 9: 64.4 vs 64.7); "
         "here the Fashion-MNIST analog", a="pred-direct", b="pred-mlp", sign=0, effect=(64.4 - 64.7) / 100,
         untestable="ImageNet ResNet-50 (paper scale only); the row is the laptop analog",
         untestable_brief="ImageNet only; this row is the analog"),
    dict(claim="C11", text="a trained linear Wp aligns with F's eigenvectors (Fig. 2): mean cos(u_j, Wp u_j) of the "
         "top 4, end minus start", align="pred-linear", sign=1),
    dict(claim="C12", text="6 partitions above one Wp (Sec. 5: 78.20 vs 77.86)", a="sec5-partitions6",
         b="pred-direct", sign=1),
    dict(claim="C13", text="the optimal plug-in Wp does badly (Table 1: 40.67 vs DirectPred 77.86)", a="pred-direct",
         b="t1-optimal", sign=1),
]
PAPER_LR_WD = 82_100 * 0.03 * 4e-4  # the paper's STL-10 run: steps x lr x wd (100 epochs of batch 128)
# the tests of the analysis plan (paper/results/claims/PLAN.md, committed before the suite's first run): a claim's
# paired differences over seeds, Student's t with n - 1 degrees of freedom (scipy's, through paper/stats.py). The
# rules that supersede them are paper/results/claims-v2/PLAN.md's (paper/verdicts.py)
ALPHA = 0.05  # one-sided, for every test
EQ_MARGIN = 0.01  # "about equal": the equivalence margin, +-1 point of linear top-1


def paired_test(diffs):
    """The paired t-test of differences a - b over seeds: mean, sample std, n, t, the one-sided p of a > b and of
    a < b, the equivalence test's p (|a - b| < EQ_MARGIN), the 95% interval (two-sided) and the 90% one (the
    equivalence test's: two one-sided tests at ALPHA)."""
    m, s, n = mean_std(diffs)
    se = s / math.sqrt(n)
    t = m / se if se > 0 else math.copysign(math.inf, m) if m else 0.0
    ci = lambda level: (m - stats.t_ppf(1 - (1 - level) / 2, n - 1) * se, m + stats.t_ppf(1 - (1 - level) / 2, n - 1) * se)
    p_within = max(1 - stats.t_cdf((m + EQ_MARGIN) / se, n - 1), stats.t_cdf((m - EQ_MARGIN) / se, n - 1)) if se > 0 else \
        float(abs(m) >= EQ_MARGIN)  # the equivalence test's p: the larger of its two one-sided p's
    return dict(mean=m, std=s, n=n, t=t, p_above=1 - stats.t_cdf(t, n - 1), p_below=stats.t_cdf(t, n - 1), p_within=p_within,
                ci95=ci(0.95), ci90=ci(0.90))


def paper_effect(c):
    """The paper's a - b of a contrast (a fraction, as the results), where both rows have a published number (or
    the claim states its own: C10's ImageNet numbers)."""
    if "effect" in c:
        return c["effect"]
    a, b = row(c["a"])["paper"], (row(c["b"])["paper"] if c["b"] != "random" else None)
    return (a[0][0] - b[0][0]) / 100 if isinstance(a, list) and isinstance(b, list) else None


def judge(diffs, sign, effect=None):
    """The plan's verdict of one contrast a - b from its paired differences. sign +1 (the claim: a above b) or -1:
    holds (one-sided paired t-test at ALPHA); does not hold (the opposite holds, or the 95% interval excludes the
    paper's effect); inconclusive (neither). sign 0 (about equal): holds (equivalence within +-EQ_MARGIN: the 90%
    interval inside it); does not hold (a difference beyond the margin: the 90% interval outside it); inconclusive."""
    if len(diffs) < 2:
        return "inconclusive (n = 1: no seed-to-seed spread)"
    st = paired_test(diffs)
    lo, hi = st["ci90"]
    if sign == 0:
        return ("holds" if -EQ_MARGIN < lo and hi < EQ_MARGIN else "does not hold (a difference beyond the margin)"
                if lo > EQ_MARGIN or hi < -EQ_MARGIN else "inconclusive")
    p_claim, p_opposite = (st["p_above"], st["p_below"]) if sign > 0 else (st["p_below"], st["p_above"])
    lo, hi = st["ci95"]
    if p_claim < ALPHA:
        return "holds"
    if p_opposite < ALPHA:
        return "does not hold (the opposite holds)"
    if effect is not None and not lo <= effect <= hi:
        return f"does not hold (the paper's {100 * effect:+.2f} is outside the interval)"
    return "inconclusive"


def learned(gains):
    """Whether a row beats its random init: the one-sided paired t-test of its gains at ALPHA (n >= 2)."""
    return len(gains) > 1 and paired_test(gains)["p_above"] < ALPHA


def collapsed(res):
    """Whether one run ended collapsed (the thresholds of train.py's collapse warning, at its last log line)."""
    return looks_collapsed(res["final_erank"], res["final_z_std"])


def lr_wd(res):
    """A run's summed lr x weight decay (steps x lr x wd; a constant lr), from its command's config."""
    cfg = run_config(shlex.split(res["command"]))
    return res["steps"] * cfg["lr"] * cfg["wd"]


def random_init(base):
    """{seed: result} of the network at random init: BN statistics re-estimated (random-bn-s*) where probed, else the
    untouched init (random-s*)."""
    for prefix in ("random-bn-s", "random-s"):
        got = {int(k[len(prefix):]): v for k, v in base.items() if k.startswith(prefix)}
        if got:
            return got
    return {}


def verdicts(scale, results):
    """One dict per contrast of CLAIMS, with its per-seed differences (linear, kNN), its test and its verdict."""
    runs, base = load_results(results)
    ok = lambda rid: {s: v for s, v in runs.get(runs_row(row(rid), scale) or rid, {}).items() if "diverged" not in v}
    rand = random_init(base)
    gains = lambda res: [v["linear_top1"] - rand[s]["linear_top1"] for s, v in sorted(res.items()) if s in rand]
    wd = [lr_wd(v) for v in ok("pred-linear").values()][:1]
    g = gains(ok("pred-direct"))  # the regime gate: DirectPred's gain over its random init above 5x its spread
    gate = None if len(g) < 2 else (f"DirectPred's gain over its random init {fmt(mean_std(g), 100, '+')} is not "
                                    f"above 5x its std" if statistics.mean(g) <= 5 * statistics.stdev(g) else "")
    out = []
    for c in CLAIMS:
        rec = dict(c)
        if "collapse" in c:
            a, b = ok(c["collapse"]), ok(c["b"])
            rec["detail"] = (f"{c['collapse']}: " + ", ".join(f"s{s} rank {v['final_erank']:.2f} / z_std "
                                                               f"{v['final_z_std']:.2f}" for s, v in sorted(a.items()))
                             + f"; {c['b']}: {sum(collapsed(v) for v in b.values())} of {len(b)} collapsed")
            k = sum(collapsed(v) for v in a.values())
            rec["brief"] = (f"{k} of {len(a)} collapsed (rank <= {max(v['final_erank'] for v in a.values()):.2f}, "
                            f"z_std <= {max(v['final_z_std'] for v in a.values()):.2f}); {c['b']}: "
                            f"{sum(collapsed(v) for v in b.values())} of {len(b)}") if a else ""
            rec["verdict"] = ("not run" if not a else "holds" if k == len(a) and not any(map(collapsed, b.values()))
                              else "does not hold" if k == 0 else f"inconclusive ({k} of {len(a)} seeds collapsed)")
        elif "align" in c:
            a = ok(c["align"])
            top = lambda cur: statistics.mean(cur["align"])
            rec["linear"] = {s: top(cur[-1]) - top(cur[0]) for s, v in a.items()
                             if len(cur := [r for r in v["curve"] if "align" in r]) > 1}
            rec["verdict"] = judge(list(rec["linear"].values()), 1) if rec["linear"] else "not run"
            rec["detail"] = "; Wp turning symmetric: untestable at this scale (a weight-decay effect, C4)"
        else:
            a = ok(c["a"])
            b = rand if c["b"] == "random" else ok(c["b"])
            seeds = sorted(set(a) & set(b))
            rec["linear"] = {s: a[s]["linear_top1"] - b[s]["linear_top1"] for s in seeds}
            rec["knn"] = {s: a[s]["knn_top1"] - b[s]["knn_top1"] for s in seeds}
            rec["verdict"] = (judge(list(rec["linear"].values()), c["sign"], paper_effect(c)) if seeds
                              else "not run")
            if c["b"] != "random" and seeds and not (learned(gains(a)) or learned(gains(b))):
                text = lambda res: fmt(mean_std(gains(res)), 100, "+") if gains(res) else "no random init"
                rec["untestable"] = (f"neither row beats its random init (gains {c['a']} {text(a)}, {c['b']} "
                                     f"{text(b)}; one-sided paired t-test at {ALPHA})")
                rec["untestable_brief"] = f"neither row beats its random init ({text(a)}, {text(b)})"
        if gate and "collapse" not in c:
            rec["untestable"] = rec["untestable_brief"] = f"the regime gate fails: {gate}"
        if c.get("wd") and wd:
            rec["untestable"] = (f"summed lr x wd {wd[0]:.3f} here vs {PAPER_LR_WD:.2f} in the paper: the "
                                 f"wd factor e^(-2 eta t) is {math.exp(-2 * wd[0]):.2f} here, "
                                 f"{math.exp(-2 * PAPER_LR_WD):.2f} there")
            rec["untestable_brief"] = f"summed lr x wd {wd[0]:.3f}, the paper's {PAPER_LR_WD:.2f}"
        if rec.get("untestable"):
            rec["brief_verdict"] = (f"untestable here: {rec.get('untestable_brief', rec['untestable'])}"
                                    f" (measured: {rec['verdict']})")
            rec["verdict"] = "untestable here: " + rec["untestable"] + f" (measured: {rec['verdict']})"
        out.append(rec)
    return out


def interval(d, k=100):
    """mean [95% interval] (n) of paired differences {seed: a - b}; k scales (100: points of top-1)."""
    if len(d) < 2:
        return f"{k * next(iter(d.values())):+.2f} (n=1)" if d else ""
    st = paired_test(list(d.values()))
    return f"{k * st['mean']:+.2f} [{k * st['ci95'][0]:+.2f}, {k * st['ci95'][1]:+.2f}] (n={st['n']})"


def claims_markdown(scale, results, brief=False):
    """The verdicts as a markdown table: claim, contrast, per-seed paired differences, mean ± std, the 95% interval
    and one-sided p of the paired t-test, verdict. brief (the README's): claim, the linear probe's mean [95% interval]
    (or the collapse count), the verdict in short."""
    recs = verdicts(scale, results)
    diffs = lambda d: ", ".join(f"{100 * v:+.2f}" for _, v in sorted(d.items()))
    ms = lambda d, k=100: fmt(mean_std(list(d.values())), k, "+") if d else ""

    def p_value(r):  # the one-sided p in the claim's direction (about equal: the larger of the two one-sided p's)
        if len(r["linear"]) < 2:
            return ""
        st = paired_test(list(r["linear"].values()))
        return f"{st['p_above'] if r['sign'] > 0 else st['p_below'] if r['sign'] < 0 else st['p_within']:.3f}"

    if brief:
        lines = ["| claim | the paper | linear top-1, paired difference: mean [95% interval] | verdict |",
                 "| --- | --- | --- | --- |"]
        for r in recs:
            value = r["brief"] if "collapse" in r else interval(r["linear"], 1 if "align" in r else 100)
            verdict = r.get("brief_verdict", r["verdict"]) + ("; Wp turning symmetric: untestable" if "align" in r else "")
            lines.append(f"| {r['claim']} | {r['text']} | {value} | {verdict} |")
        return "\n".join(lines)
    lines = ["| claim | the paper | contrast a - b | linear top-1 a - b, per seed | mean ± std | mean [95% interval] "
             "| p (one-sided) | kNN a - b, mean ± std | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in recs:
        if "collapse" in r:
            lines.append(f"| {r['claim']} | {r['text']} | {r['collapse']} vs {r['b']} | {r['detail']} | | | | | "
                         f"{r['verdict']} |")
        elif "align" in r:
            lines.append(f"| {r['claim']} | {r['text']} | {r['align']}: end - start | "
                         f"{', '.join(f'{v:+.2f}' for _, v in sorted(r['linear'].items()))} | "
                         f"{ms(r['linear'], 1)} | {interval(r['linear'], 1)} | {p_value(r)} | | "
                         f"{r['verdict']}{r['detail']} |")
        else:
            lines.append(f"| {r['claim']} | {r['text']} | {r['a']} - {r['b']} | {diffs(r['linear'])} | "
                         f"{ms(r['linear'])} | {interval(r['linear'])} | {p_value(r) if r['linear'] else ''} | "
                         f"{ms(r['knn'])} | {r['verdict']} |")
    return "\n".join(lines)


def write_tables(scale, results):
    """table.md (every row) and, at laptop scale, the verdicts into the results directory: claims.md by
    paper/results/claims/PLAN.md's rules where the folder was judged by them (it holds that claims.md), else
    verdicts.md by paper/results/claims-v2/PLAN.md's (paper/verdicts.py)."""
    with open(os.path.join(results, "table.md"), "w") as fh:
        fh.write(table_markdown(scale, results) + "\n")
    if scale != "laptop":
        return
    if os.path.exists(os.path.join(results, "claims.md")):
        with open(os.path.join(results, "claims.md"), "w") as fh:
            fh.write(claims_markdown(scale, results) + "\n")
        return
    from paper.verdicts import report  # (it imports this module)
    with open(os.path.join(results, "verdicts.md"), "w") as fh:
        fh.write(report(results, f"v2 verdicts of {results}"))


def lead_figure(runs, rows, out_dir, name, title, base=None):
    """The lead figure: the predictor input's effective rank and the kNN monitor over steps, one line per run of
    each row (collapse against not), and on the kNN panel the baselines' kNN as horizontal lines (raw pixels, the
    network at random init as initialised and with BN statistics re-estimated, mean over seeds, the network trained
    with labels). runs: {row id: {seed: result}}; base: {baseline name: result}. Returns the PNG's path."""
    from paper.theory import pyplot, save  # the repo's one plotting module; matplotlib is imported there
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, rid in enumerate(rows):
        for j, (s, res) in enumerate(sorted(runs.get(rid, {}).items())):
            curve = res.get("curve", [])
            kw = dict(color=f"C{i}", lw=1, alpha=0.8, label=f"{rid}: {row(rid)['label']}" if j == 0 else None)
            rank = [c for c in curve if "erank" in c]
            axes[0].plot([c["step"] for c in rank], [c["erank"] for c in rank], **kw)
            knn = [c for c in curve if "knn_top1" in c]
            axes[1].plot([c["step"] for c in knn], [100 * c["knn_top1"] for c in knn], marker=".", **kw)
    # the baselines' kNN on the kNN panel, each line named on it
    for prefix, label, style, va in (("pixels", "raw pixels", "-", "bottom"),
                                     ("supervised", "trained with labels", "-.", "bottom"),
                                     ("random-s", "random init", "--", "top"),
                                     ("random-bn-s", "random init, BN re-estimated", ":", "bottom")):
        got = [v["knn_top1"] for n, v in (base or {}).items()
               if n == prefix or n.startswith(prefix) and n[len(prefix):].isdigit()]
        if got:
            y = 100 * statistics.mean(got)
            axes[1].axhline(y, color="0.35", ls=style, lw=1)
            axes[1].annotate(f"{label} {y:.1f}", (0.45, y), xycoords=("axes fraction", "data"), fontsize=6, va=va,
                             color="0.25")
    axes[0].set(xlabel="step", ylabel="effective rank", yscale="log", title="effective rank of the predictor input "
                "(centered; 1 = collapsed)")
    axes[1].set(xlabel="step", ylabel="kNN top-1 (%), test images", title="kNN monitor (k = 200): step 0 = random init")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7, frameon=False)
    from train import COLLAPSE_ERANK  # the one collapse rule's rank threshold
    axes[0].axhline(COLLAPSE_ERANK, color="0.35", ls=":", lw=1)
    axes[0].annotate(f"collapse rule: rank < {COLLAPSE_ERANK}", (0.99, COLLAPSE_ERANK), xycoords=("axes fraction", "data"),
                     fontsize=6, va="bottom", ha="right", color="0.25")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save(fig, out_dir, name)


def figures(scale, results):
    """Bar charts (one panel per table, seeds as dots), the predictors' kNN curves, the Fig. 2 panels of a linear Wp."""
    from paper.theory import plot_log, pyplot, save  # the repo's one plotting module; matplotlib is imported there
    plt = pyplot()
    rows, base = aggregate(scale, results)
    runs, _ = load_results(results)
    rand = [b["linear_top1"] for b in random_init(base).values()]
    tables = [t for t in dict.fromkeys(r["table"] for r in rows) if any("linear" in r for r in rows if r["table"] == t)]
    ncol = max(1, min(3, len(tables)))  # a grid of panels, 3 to a line; horizontal bars, so the labels read
    nrow = max(1, -(-len(tables) // ncol))
    tall = max(sum(1 for r in rows if r["table"] == t and "linear" in r) for t in tables) if tables else 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, (0.32 * tall + 1.2) * nrow), squeeze=False)
    for ax in axes.flat[len(tables):]:
        ax.axis("off")
    for ax, t in zip(axes.flat, tables):
        rs = [r for r in rows if r["table"] == t and "linear" in r]
        for i, r in enumerate(rs):
            xs = [100 * v["linear_top1"] for v in runs[r["runs_as"]].values() if "linear_top1" in v]
            ax.barh(i, 100 * r["linear"][0], color="C0", alpha=0.5)
            ax.plot(xs, [i] * len(xs), "k.", ms=5)
        if rand:
            ax.axvline(100 * statistics.mean(rand), color="C3", ls="--", lw=1, label="random init")
        ax.set_yticks(range(len(rs)), [r["label"] for r in rs], fontsize=8)
        ax.set_ylim(tall - 0.5, -0.5)  # the first row on top, every panel at the same bar height
        lo = min([100 * v["linear_top1"] for r in rs for v in runs[r["runs_as"]].values() if "linear_top1" in v]
                 + [100 * min(rand or [1])])
        ax.set(title=t, xlim=(lo - 2, None), xlabel="linear top-1 (%), seeds as dots")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths = [save(fig, results, "tables.png")]
    paths.append(lead_figure(runs, CURVES, results, "lead.png", f"Fashion-MNIST, {scale} scale, every seed a line",
                             base))
    log = runs.get("pred-linear", {}).get(0, {}).get("log")
    if log:
        path = os.path.join(results, "fig2_linear.jsonl")
        with open(path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in log)
        paths.append(plot_log(path, os.path.join(results, "fig2_linear.png"),
                              title=f"{os.path.join(results, 'pred-linear', 's0.json')} (its log)"))
        os.remove(path)
    return paths


# -----------------------------------------------------------------------------
def get_parser():
    P = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    P.add_argument("--scale", default="laptop", choices=list(SCALES), help="laptop: Fashion-MNIST on a CPU; paper: "
                   "the paper's data and models (GPUs)")
    P.add_argument("--rows", default="all", help="comma-separated row ids or groups (" + ", ".join(GROUPS) + "), or all")
    P.add_argument("--seeds", default=None, help="comma-separated training seeds. Default: at laptop scale each row's "
                   "own (3 where a claim rests on it, else 1); at paper scale 0,1,2,3,4 for the STL-10 / CIFAR-10 rows "
                   "(the paper's 5 seeds) and 0 for the ImageNet rows (Table 9 gives single numbers; one 300-epoch "
                   "ResNet-50 run is ~194 GPU-hours at the assumed throughput)")
    P.add_argument("--gpus", default="auto", help="GPUs to use, as CUDA_VISIBLE_DEVICES names them (e.g. 0,1,2,3): "
                   "single-GPU runs go side by side, one per GPU; the ImageNet rows run one at a time across all of "
                   "them through --launcher. auto = every GPU torch sees; none = the CPU")
    P.add_argument("--download", action="store_true", help="fetch the missing datasets torchvision can fetch "
                   "(CIFAR-10/100, STL-10, Fashion-MNIST) into --data-dir before the suite starts")
    P.add_argument("--jobs", default="auto", help="runs side by side, each with cores / jobs threads; auto = the layout "
                   "measured fastest on this machine at the start (a few seconds: bench.py --suite step side by side)")
    P.add_argument("--data-dir", default="data", help="train.py's --data-dir")
    P.add_argument("--base", default=None, help="train.py flags every row starts from (default: the scale's, "
                   "SCALES in reproduce.py), e.g. the laptop recipe with --epochs 2")
    P.add_argument("--work", default=None, help="checkpoints and logs (default: the scale's, out/claims at laptop "
                   "scale)")
    P.add_argument("--results", default=None, help="per-run result files, table and figures (default: the scale's, "
                   "paper/results/claims at laptop scale): small, meant to be committed")
    P.add_argument("--launcher", default=None, help="paper scale: how the ImageNet rows (Table 9) start train.py "
                   "and eval_linear.py (default: torchrun --standalone --nproc_per_node=<number of --gpus>)")
    P.add_argument("--baselines", default="all", choices=["all", "random", "none"], help="the baselines probed after "
                   "the runs: random init (one per seed), raw pixels and the supervised ceiling; random: only the "
                   "random init; none")
    P.add_argument("--dry-run", action="store_true", help="print the commands (and GPU-hours at paper scale); run nothing")
    P.add_argument("--report", action="store_true", help="only write the table and figures from the result files")
    P.add_argument("--demo", action="store_true", help="the class demo: no predictor, a trained linear one and "
                   "DirectPred side by side for 600 steps of the laptop protocol (a few minutes on 2 cores), then "
                   "out/demo/results/demo.png: the effective rank collapses without a predictor, the kNN with it")
    return P


def parse(argv=None):
    """Flags -> (args, [(row id, seed), ...]) or exit with one line naming the flag."""
    args = get_parser().parse_args(argv)
    if args.demo:  # the class demo: DEMO_ROWS side by side at seed 0 for DEMO_FLAGS' steps, one figure (out/demo)
        args.scale, args.rows, args.seeds, args.baselines = "laptop", ",".join(DEMO_ROWS), "0", "none"
        args.work = args.work or os.path.join("out", "demo")
        args.results = args.results or os.path.join(args.work, "results")
        args.base = args.base if args.base is not None else f"{SCALES['laptop']['base']} {DEMO_FLAGS}"
        args.jobs = str(len(DEMO_ROWS)) if args.jobs == "auto" else args.jobs
    args.work = args.work or SCALES[args.scale]["work"]
    args.results = args.results or os.path.relpath(os.path.join(ROOT, SCALES[args.scale]["results"]))
    args.base = args.base if args.base is not None else SCALES[args.scale]["base"]
    if args.jobs != "auto" and not (args.jobs.isdigit() and int(args.jobs) >= 1):
        raise RunError(f"--jobs must be auto or an integer >= 1, got {args.jobs!r}")
    args.gpus = visible_gpus(args.gpus)
    args.launcher = args.launcher or f"torchrun --standalone --nproc_per_node={max(1, len(args.gpus))}"
    ids = []
    for name in args.rows.split(","):
        name = name.strip()
        if name not in ROW_IDS and name not in GROUPS and name != "all":
            raise RunError(f"--rows: unknown row or group {name!r} (groups: {', '.join(GROUPS)}; ids: "
                     f"python -m paper.reproduce --dry-run)")
        ids += ROW_IDS if name == "all" else GROUPS.get(name, [name])
    seeds = None
    if args.seeds is not None:
        try:
            seeds = sorted({int(s) for s in args.seeds.split(",")})
        except ValueError:
            raise RunError(f"--seeds must be comma-separated integers >= 0, e.g. 0,1,2; got {args.seeds!r}")
        if not seeds or min(seeds) < 0:
            raise RunError(f"--seeds must be comma-separated integers >= 0, e.g. 0,1,2; got {args.seeds!r}")
    work = []
    for rid in dict.fromkeys(ids):
        src = runs_row(row(rid), args.scale)
        if src is None:
            continue
        n = row(src).get("seeds", 1) if args.scale == "laptop" else 1 if row(src).get("imagenet") else 5
        work += [(src, s) for s in (seeds if seeds is not None else range(n))]
    return args, list(dict.fromkeys(work))


def measure_jobs(base, cores, steps=6):
    """--jobs auto: how many runs side by side (each with cores / jobs threads) give the most img/s in all on this
    machine, for the suite's network. For each layout, `jobs` copies of `bench.py --suite step` (the real training
    step) warm up, then time `steps` steps at the same moment. Returns (jobs, its img/s in all, one line)."""
    got = {}
    for jobs in [j for j in range(1, cores + 1) if cores % j == 0]:
        env = dict(os.environ, OMP_NUM_THREADS=str(cores // jobs))
        procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "bench.py"), "--suite", "step", "--device", "cpu",
                                   "--steps", str(steps), "--wait", "--train-flags", base], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(jobs)]
        if any(p.stdout.readline().strip() != "ready" for p in procs):
            err = next(p.communicate()[1].strip().splitlines()[-1:] for p in procs if p.poll() is not None)
            raise RunError(f"--jobs auto: the timing run failed ({err[0] if err else 'no output'}); give --jobs N")
        for p in procs:  # all warm: start the timed steps together
            p.stdin.write("\n")
            p.stdin.flush()
        got[jobs] = sum(float(p.communicate()[0].split()[-1]) for p in procs)
    best = max(got, key=got.get)
    return best, got[best], (f"--jobs auto: {', '.join(f'{j} x {cores // j} threads {v:.0f} img/s' for j, v in got.items())} "
                             f"in all -> --jobs {best}")


def visible_gpus(spec):
    """--gpus -> the GPU names to give the runs (CUDA_VISIBLE_DEVICES values); [] = the CPU."""
    if spec == "none":
        return []
    if spec == "auto":
        import torch
        n = torch.cuda.device_count()
        named = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        return named[:n] if named else [str(i) for i in range(n)]
    gpus = [g.strip() for g in spec.split(",")]
    if not all(gpus) or len(set(gpus)) != len(gpus):
        raise RunError(f"--gpus must be auto, none or distinct GPU names like 0,1,2; got {spec!r}")
    return gpus


def missing_data(datasets, data_dir):
    """The datasets of the suite whose files are not under --data-dir (Fashion-MNIST: nor in the Debian package's
    folder), as train.py's loaders would look for them (DATASETS)."""
    return [d for d in sorted(datasets) if DATASETS[d].folder and (fmnist_missing(data_dir) if d == "fashion-mnist"
                                                                   else not os.path.isdir(os.path.join(data_dir, DATASETS[d].folder)))]


def fetch(dataset, data_dir):
    """--download: torchvision fetches one dataset into --data-dir (a progress bar per file)."""
    import torchvision.datasets as tv
    {"stl10": lambda: tv.STL10(data_dir, download=True), "cifar10": lambda: tv.CIFAR10(data_dir, download=True),
     "cifar100": lambda: tv.CIFAR100(data_dir, download=True),
     "fashion-mnist": lambda: tv.FashionMNIST(data_dir, download=True)}[dataset]()


def data_error(datasets, data_dir):
    """The first missing dataset as one line: where it was looked for and how to get it; or None."""
    for d in missing_data(datasets, data_dir):
        where = os.path.join(data_dir, DATASETS[d].folder)
        if DATASETS[d].streamed:
            return (f"--data-dir {data_dir}: no {d} there (looked for {where}): it needs "
                    f"{DATASETS[d].files.format(d=data_dir)} (docs/reference.md, Data); torchvision cannot download it")
        hint = " (or: apt-get install dataset-fashion-mnist)" if d == "fashion-mnist" else ""
        return (f"--data-dir {data_dir}: no {d} there (looked for {where}); fetch it with: "
                f"{shlex.join(['python', '-m', 'paper.reproduce', *sys.argv[1:], '--download'])}{hint}")
    return None


def run_config(cmd):
    """train.py's config of one train command (train.parse_config: the command's flags, a --preset's included)."""
    return parse_config(cmd[[i for i, t in enumerate(cmd) if t.endswith("train.py")][0] + 1:])


def run_images(cmd):
    """How many training images one train.py command processes: epochs x whole batches of its pretraining set (the
    dataset's images, less the held-out ones with --split val), or --max-steps batches."""
    cfg = run_config(cmd)
    n = DATASETS[cfg["dataset"]].n_train or cfg["fake_size"]  # (an image folder's size is known once it is read)
    n -= min(VAL_SIZE, n // 6) if cfg["split"] == "val" else 0
    steps = cfg["epochs"] * (n // cfg["batch_size"])
    return cfg["batch_size"] * (min(steps, cfg["max_steps"]) if cfg["max_steps"] else steps)


def main():
    args, work = parse()
    if args.report:
        if not load_results(args.results)[0]:
            raise RunError(f"--results {args.results}: no result files there (run the suite first)")
        print(table_markdown(args.scale, args.results))
        write_tables(args.scale, args.results)
        for p in figures(args.scale, args.results):
            print(f"wrote {p}")
        return
    seeds = sorted({s for _, s in work})
    base_cmds = {} if args.baselines == "none" or ("pred-direct", seeds[0]) not in work else \
        {k: v for k, v in baseline_commands(args, seeds).items() if args.baselines == "all" or k.startswith("random")}
    todo = [(rid, s) for rid, s in work if not os.path.exists(os.path.join(args.results, rid, f"s{s}.json"))]
    pending = [cmd for name, cmd in base_cmds.items()
               if not os.path.exists(os.path.join(args.results, "baselines", f"{name}.json"))]
    ckpt = lambda s: checkpoint(args, "pred-direct", s)
    base_seeds = [s for s in seeds if not os.path.exists(ckpt(s)) and any(ckpt(s) in cmd for cmd in pending)]
    cores = len(os.sched_getaffinity(0))  # the cores this process may use (taskset, cgroups), not the machine's
    if args.gpus:  # one run per GPU; the CPU threads shared out among them
        args.jobs, speed = len(args.gpus), None
    elif args.jobs == "auto" and args.scale == "laptop" and len(todo) > 1:  # measured: the layout and its img/s
        args.jobs, speed, line = measure_jobs(args.base, cores)
        print(line, flush=True)
    else:
        args.jobs, speed = 1 if args.jobs == "auto" else int(args.jobs), None
    args.jobs = min(args.jobs, max(1, len(todo)))  # no more side-by-side slots than runs: the threads go to the runs
    single = [(rid, s) for rid, s in todo if not row(rid).get("imagenet")]
    multi = [(rid, s) for rid, s in todo if row(rid).get("imagenet")]
    where = (f"GPUs {','.join(args.gpus)} ({len(args.gpus)} runs side by side, one per GPU; ImageNet rows one at a "
             f"time on all of them through `{args.launcher}`)" if args.gpus else
             f"the CPU ({args.jobs} run(s) side by side x {max(1, cores // args.jobs)} threads)")
    if args.scale == "paper":
        hours = sum(gpu_hours(commands(row(rid), args, s)[0]) for rid, s in todo)
        wall = (f"{hours:.0f} GPU-hours of training at the assumed throughput (ASSUMED_IMG_S: {ASSUMED_IMG_S} img/s "
                f"per A100 in bf16; an estimate, not a measurement)" + (
                    f", about {hours / len(args.gpus):.0f} h of wall time on these {len(args.gpus)} GPUs" if args.gpus
                    else "; no GPU visible here (--gpus)"))
    else:
        images = sum(run_images(commands(row(rid), args, s)[0]) for rid, s in todo)
        wall = (f"{images / speed / 3600:.1f} h of training at the {speed:.0f} img/s measured just now (probes and "
                f"baselines add ~1 min each)" if speed else f"{images:,} training images")
    plan = f"plan: {len(todo)} of {len(work)} runs to do ({len(work) - len(todo)} done) on {where}; {wall}"
    if args.dry_run:
        for rid, s in work:
            train, probe = commands(row(rid), args, s)
            done = "done" if (rid, s) not in todo else "to run"
            print(f"# {rid} seed {s} ({done})\n{shlex.join(train)}\n{shlex.join(probe)}")
        for s in base_seeds:
            print(f"# pred-direct seed {s}: its checkpoint, if still missing then, is trained again (not probed) "
                  f"before the baselines\n{shlex.join(commands(row('pred-direct'), args, s)[0])}")
        for name, cmd in base_cmds.items():
            print(f"# baseline {name}\n{shlex.join(cmd)}")
        rows_run = sorted({rid for rid, _ in work})
        print(f"# {len(rows_run)} rows to run ({len(work)} runs, {len(todo)} not done yet) of {len(ROWS)} rows; "
              f"{len(base_cmds)} baseline probes")
        if args.scale == "paper":
            total = 0.0
            for rid in rows_run:
                h = sum(gpu_hours(commands(row(rid), args, s)[0]) for r, s in work if r == rid)
                total += h
                print(f"#   {rid}: {h:.1f} GPU-hours")
            imagenet = sum(gpu_hours(commands(row(rid), args, s)[0]) for rid, s in work if row(rid).get("imagenet"))
            print(f"# training, all rows: {total:.0f} GPU-hours ({100 * imagenet / max(total, 1e-9):.0f}% ImageNet)")
        print(f"# {plan}")
        return
    datasets = {run_config(commands(row(rid), args, s)[0])["dataset"] for rid, s in todo}
    if args.download:
        for d in missing_data(datasets, args.data_dir):
            if d in ("imagenet", "imagefolder"):
                break  # not downloadable: data_error says what it needs
            print(f"--download: fetching {d} into {args.data_dir}", flush=True)
            fetch(d, args.data_dir)
    err = data_error(datasets, args.data_dir)
    if err:
        raise RunError(err)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // args.jobs)))
    t0 = time.time()
    print(f"{plan}; results in {args.results}", flush=True)
    free = queue.Queue()  # the GPUs not running anything now
    for g in args.gpus:
        free.put(g)

    def on_one_gpu(fn, *a):
        """fn(*a, env) on a free GPU (CUDA_VISIBLE_DEVICES = that one), or on the CPU without --gpus."""
        if not args.gpus:
            return fn(*a, env)
        g = free.get()
        try:
            return fn(*a, dict(env, CUDA_VISIBLE_DEVICES=g))
        finally:
            free.put(g)
    every_gpu = dict(env, CUDA_VISIBLE_DEVICES=",".join(args.gpus)) if args.gpus else env
    with ThreadPoolExecutor(args.jobs) as pool:  # stages, each submitted when the one before has finished: the
        # single-GPU runs side by side; each ImageNet row alone on all GPUs; pred-direct's checkpoints where a fresh
        # clone lacks them; the baselines (they read those checkpoints)
        stages = [lambda: [pool.submit(on_one_gpu, run_one, rid, s, args) for rid, s in single]]
        stages += [lambda rid=rid, s=s: [pool.submit(run_one, rid, s, args, every_gpu)] for rid, s in multi]
        stages += [lambda: [pool.submit(on_one_gpu, restore_checkpoint, "pred-direct", s, args) for s in base_seeds]]
        stages += [lambda: [pool.submit(on_one_gpu, run_baseline, name, cmd, args) for name, cmd in base_cmds.items()]]
        for stage in stages:
            for fut in as_completed(stage()):
                try:
                    print(f"[{time.time() - t0:7.0f} s] {fut.result()}", flush=True)
                except RuntimeError as e:  # one run failed: start nothing more, let the running ones finish
                    pool.shutdown(cancel_futures=True)
                    raise RunError(f"{e}")
    if not args.demo:  # (the demo's three lines say what it shows)
        print(table_markdown(args.scale, args.results))
    write_tables(args.scale, args.results)
    if args.demo:  # what the class should see, in numbers and in one figure
        runs = load_results(args.results)[0]
        for rid in DEMO_ROWS:
            cur = [c for c in runs[rid][0]["curve"] if "erank" in c]
            knn = [c["knn_top1"] for c in runs[rid][0]["curve"] if "knn_top1" in c]
            print(f"{rid:12s} effective rank {cur[0]['erank']:5.1f} -> {cur[-1]['erank']:5.1f}, z_std "
                  f"{cur[0]['z_std']:.2f} -> {cur[-1]['z_std']:.2f}, kNN {100 * knn[0]:.2f} -> {100 * knn[-1]:.2f}")
        lead_figure(runs, DEMO_ROWS, args.results, "demo.png", "reproduce.py --demo: the laptop protocol, seed 0, "
                    "side by side")  # (it prints the path)
    print(f"done in {time.time() - t0:.0f} s; table in {os.path.join(args.results, 'table.md')} (figures: --report)")


if __name__ == "__main__":
    try:
        main()
    except RunError as e:  # a bad flag, path or file: one line on stderr, no traceback
        sys.exit(f"error: {e}")
