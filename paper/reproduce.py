"""
Runs the paper's rows (paper/rows.py) with this code: at the paper's scale (GPUs, STL-10 / CIFAR-10 / ImageNet)
or at laptop scale (Fashion-MNIST on a CPU, the claims suite's protocol), with the baselines; one small result
file per run; the table, the verdicts and the figures from them (paper/report.py, paper/verdicts.py).

    python -m paper.reproduce --scale laptop --dry-run       # the exact commands, the row count, a time estimate
    python -m paper.reproduce --scale laptop                 # every row; finished runs skipped, stopped resumed
    python -m paper.reproduce --scale laptop --rows predictors,table3 --seeds 0,1,2
    python -m paper.reproduce --scale paper --data-dir /data --rows table6 --dry-run   # with GPU-hours per row
    python -m paper.reproduce --scale paper --data-dir /data --rows table8 --download  # one run per GPU
    python -m paper.reproduce --scale paper --data-dir /data --rows table9   # each ImageNet run on all GPUs
    python -m paper.reproduce --scale laptop --report        # only the table, verdicts and figures
    python -m paper.reproduce --demo                         # the class demo (a few minutes on 2 cores)

On a GPU node (--gpus, default every GPU torch sees) single-GPU runs go side by side, one per GPU
(CUDA_VISIBLE_DEVICES); each ImageNet row runs alone on all of them through --launcher (torchrun). On a CPU,
--jobs auto times the layouts of runs side by side at the start and takes the fastest. The plan (runs, devices, the
wall time it implies) is printed first; a missing dataset stops the suite before it starts (--download fetches
what torchvision can).

Each (row, seed) is `python train.py <scale's base flags> <row's flags> --seed S --out-dir WORK/<row>/s<S>`, then
`python eval_linear.py --ckpt WORK/<row>/s<S>/ckpt.pt`, exactly what a user would type (--dry-run prints them). Its
result goes to a small JSON file under --results, meant to be committed: a run with a result file is never
recomputed, so a suite stopped half way is continued, here or on another machine, by running the same command
again (an unfinished run continues from its last checkpoint with --resume, where WORK survived). The runs go seed
by seed, so a suite stopped half way leaves whole seeds.
"""
import argparse
import json
import os
import queue
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from data import DATASETS, VAL_SIZE, fmnist_missing
from paper.report import claims_markdown, collect, figures, lead_figure, load_results, machine, read_log, \
    run_config, table_markdown, write_json
from paper.rows import ASSUMED_IMG_S, CURVES, DEMO_FLAGS, DEMO_ROWS, EVAL_EVERY, GROUPS, ROW_IDS, ROWS, SCALES, row, \
    row_flags, runs_row
from plumbing import ArgumentParser, RunError

HERE = os.path.dirname(os.path.abspath(__file__))  # paper/


ROOT = os.path.dirname(HERE)  # the repository: train.py, eval_linear.py, bench.py


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
    summary = dict(row=rid, seed=seed, scale=args.scale, command=shlex.join(train), **collect(work_run, wall),
                   machine=machine())
    if rid.startswith(("pred-linear", "t3-1l")) and seed == 0:  # a linear Wp's full log: the Fig. 2 panels
        summary["log"] = read_log(os.path.join(work_run, "log.jsonl"))
    write_json(res_path, summary)
    return res_path


def restore_command(rid, args, seed):
    """restore_checkpoint's command: the (row, seed)'s training command, stopped after one step."""
    return commands(row(rid), args, seed)[0] + ["--max-steps", "1"]


def restore_checkpoint(rid, seed, args, env):
    """The checkpoint of a finished (row, seed) whose work folder is gone (a fresh clone holds only the committed
    result files), for the baselines: its training command run again for one step, not probed. A baseline reads
    only the checkpoint's config (the init comes from its --seed), so one step gives the numbers the whole run's
    checkpoint gives. Returns the checkpoint's path."""
    ckpt = checkpoint(args, rid, seed)
    if not os.path.exists(ckpt):
        sh(restore_command(rid, args, seed), env, os.path.join(args.work, rid, f"s{seed}.train.txt"))
    return ckpt


def run_baseline(name, cmd, args, env):
    res_path = os.path.join(args.results, "baselines", f"{name}.json")
    if not os.path.exists(res_path):
        sh(cmd, env, os.path.join(args.work, "baselines", f"{name}.txt"))
        ev = json.load(open(cmd[cmd.index("--out") + 1]))
        write_json(res_path, dict(baseline=name, linear_top1=ev["top1"], knn_top1=ev["knn_top1"],
                                  protocol=ev["protocol"], seconds=ev["seconds"], command=shlex.join(cmd),
                                  machine=machine()))
    return res_path


def sh(cmd, env, log_path, ok=None):
    """Run one command, its output into log_path. A failure whose reason (the script's one "error: " line, else the
    last line) starts with `ok` returns that line; any other failure stops the suite with one line naming it and the
    log. The reason is the script's own line, not the last one: under torchrun that is the launcher's banner."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as fh:
        r = subprocess.run([sys.executable if c == "python" else c for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                           env=env)
    if r.returncode:
        lines = open(log_path).read().strip().splitlines() or [""]
        tail = next((ln for ln in reversed(lines) if ln.startswith("error: ")), lines[-1])
        if ok and tail.startswith(ok):
            return tail
        script_at = next(i for i, c in enumerate(cmd) if c.endswith(".py"))
        raise RuntimeError(f"{shlex.join(cmd[script_at:script_at + 2])} ... failed (exit {r.returncode}): {tail[:300]} "
                           f"(log: {log_path})")
    return None


def write_tables(scale, results):
    """table.md (every row) and, at laptop scale, the verdicts into the results directory: claims.md by
    paper/results/claims/PLAN.md's rules where the folder was judged by them (it holds that claims.md); for a
    folder rules v3 merge with another (claims-v3/exploratory, claims-v3/confirmation), the v3 report beside it
    (exploratory.md, confirmation.md: paper/verdicts3.py); else verdicts.md by paper/results/claims-v2/PLAN.md's
    (paper/verdicts.py)."""
    with open(os.path.join(results, "table.md"), "w") as fh:
        fh.write(table_markdown(scale, results) + "\n")
    if scale != "laptop":
        return
    from paper import verdicts3
    part = {verdicts3.EXPLORATORY[1]: "exploratory", verdicts3.CONFIRMATION[1]: "confirmation"}.get(
        os.path.relpath(results))
    if part:  # judged only merged with its other folder, under v3
        with open(os.path.join(os.path.dirname(results), f"{part}.md"), "w") as fh:
            fh.write(verdicts3.named(part))
        return
    if os.path.exists(os.path.join(results, "claims.md")):
        with open(os.path.join(results, "claims.md"), "w") as fh:
            fh.write(claims_markdown(scale, results) + "\n")
        return
    from paper.verdicts import named_report  # (a results folder judged by the v2 rules)
    with open(os.path.join(results, "verdicts.md"), "w") as fh:
        fh.write(named_report(os.path.relpath(results)))


def get_parser():
    P = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    P.add_argument("--scale", default="laptop", choices=list(SCALES), help="laptop: Fashion-MNIST on a CPU; paper: "
                   "the paper's data and models (GPUs)")
    P.add_argument("--rows", default="all", help="comma-separated row ids or groups (" + ", ".join(GROUPS) + "), or all")
    P.add_argument("--seeds", default=None, help="comma-separated training seeds. Default: at laptop scale each row's "
                   "own (ROWS: 5 where a claim rests on it, else 1); at paper scale 0,1,2,3,4 for the STL-10 / CIFAR-10 rows "
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
    # seed by seed, the rows in their order within a seed: a suite cut short leaves whole seeds (each contrast
    # paired), and a seed's rows run close in time, so on one machine where a suite spans several
    return args, sorted(dict.fromkeys(work), key=lambda w: w[1])


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


def run_images(cmd):
    """How many training images one train.py command processes: epochs x whole batches of its pretraining set (the
    dataset's images, less the held-out ones with --split val), or --max-steps batches."""
    cfg = run_config(cmd)
    n = DATASETS[cfg["dataset"]].n_train or cfg["fake_size"]  # (an image folder's size is known once it is read)
    n -= min(VAL_SIZE, n // 6) if cfg["split"] == "val" else 0
    steps = cfg["epochs"] * (n // cfg["batch_size"])
    return cfg["batch_size"] * (min(steps, cfg["max_steps"]) if cfg["max_steps"] else steps)


def report_only(args):
    """--report: the table, the verdicts and the figures from the result files, nothing run."""
    if not load_results(args.results)[0]:
        raise RunError(f"--results {args.results}: no result files there (run the suite first)")
    print(table_markdown(args.scale, args.results))
    write_tables(args.scale, args.results)
    for p in figures(args.scale, args.results):
        print(f"wrote {p}")


def plan(args, work):
    """What is left to do and where: a dict of the runs to do (single-GPU / CPU ones and the ImageNet ones), the
    baseline probes, the seeds whose pred-direct checkpoint must be made again for them (a fresh clone), the
    layout (--jobs measured on a CPU, one run per GPU), each run's threads and one line saying it all."""
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
    threads = max(1, cores // args.jobs)
    where = (f"GPUs {','.join(args.gpus)} ({len(args.gpus)} runs side by side, one per GPU; ImageNet rows one at a "
             f"time on all of them through `{args.launcher}`)" if args.gpus else
             f"the CPU ({args.jobs} run(s) side by side x {threads} threads)")
    return dict(todo=todo, single=[w for w in todo if not row(w[0]).get("imagenet")],
                multi=[w for w in todo if row(w[0]).get("imagenet")], base_cmds=base_cmds, base_seeds=base_seeds,
                threads=threads, line=f"plan: {len(todo)} of {len(work)} runs to do ({len(work) - len(todo)} done) on "
                                       f"{where}; {wall_time(args, todo, speed)}")


def wall_time(args, todo, speed):
    """The plan's cost: GPU-hours at the assumed throughput (paper scale), hours at the img/s measured just now, or
    the number of training images."""
    if args.scale == "paper":
        hours = sum(gpu_hours(commands(row(rid), args, s)[0]) for rid, s in todo)
        return (f"{hours:.0f} GPU-hours of training at the assumed throughput (ASSUMED_IMG_S: {ASSUMED_IMG_S} img/s "
                f"per A100 in bf16; an estimate, not a measurement)" + (
                    f", about {hours / len(args.gpus):.0f} h of wall time on these {len(args.gpus)} GPUs" if args.gpus
                    else "; no GPU visible here (--gpus)"))
    images = sum(run_images(commands(row(rid), args, s)[0]) for rid, s in todo)
    return (f"{images / speed / 3600:.1f} h of training at the {speed:.0f} img/s measured just now (probes and "
            f"baselines add ~1 min each)" if speed else f"{images:,} training images")


def dry_run(args, work, todo):
    """--dry-run: every command, what is done, the baselines, and at paper scale each row's GPU-hours."""
    for rid, s in work:
        train, probe = commands(row(rid), args, s)
        print(f"# {rid} seed {s} ({'done' if (rid, s) not in todo['todo'] else 'to run'})\n{shlex.join(train)}\n"
              f"{shlex.join(probe)}")
    for s in todo["base_seeds"]:
        print(f"# pred-direct seed {s}: its checkpoint, if still missing then, is made again (one step, not "
              f"probed) before the baselines\n{shlex.join(restore_command('pred-direct', args, s))}")
    for name, cmd in todo["base_cmds"].items():
        print(f"# baseline {name}\n{shlex.join(cmd)}")
    rows_run = sorted({rid for rid, _ in work})
    print(f"# {len(rows_run)} rows to run ({len(work)} runs, {len(todo['todo'])} not done yet) of {len(ROWS)} rows; "
          f"{len(todo['base_cmds'])} baseline probes")
    if args.scale == "paper":
        hours = {rid: sum(gpu_hours(commands(row(rid), args, s)[0]) for r, s in work if r == rid) for rid in rows_run}
        for rid, h in hours.items():
            print(f"#   {rid}: {h:.1f} GPU-hours")
        total, imagenet = sum(hours.values()), sum(h for rid, h in hours.items() if row(rid).get("imagenet"))
        print(f"# training, all rows: {total:.0f} GPU-hours ({100 * imagenet / max(total, 1e-9):.0f}% ImageNet)")
    print(f"# {todo['line']}")


def check_data(args, todo):
    """The datasets the runs to do read, fetched with --download where torchvision can; one line for a missing one."""
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


def run_stages(args, todo, env, t0):
    """The runs in stages, each submitted when the one before has finished: the single-GPU (or CPU) runs side by
    side, one per GPU; each ImageNet row alone on all GPUs; pred-direct's checkpoints where a fresh clone lacks them;
    the baselines (they read those checkpoints). A failed run starts nothing more and stops with one line."""
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
    with ThreadPoolExecutor(args.jobs) as pool:
        stages = [lambda: [pool.submit(on_one_gpu, run_one, rid, s, args) for rid, s in todo["single"]]]
        stages += [lambda rid=rid, s=s: [pool.submit(run_one, rid, s, args, every_gpu)] for rid, s in todo["multi"]]
        stages += [lambda: [pool.submit(on_one_gpu, restore_checkpoint, "pred-direct", s, args)
                            for s in todo["base_seeds"]]]
        stages += [lambda: [pool.submit(on_one_gpu, run_baseline, name, cmd, args)
                            for name, cmd in todo["base_cmds"].items()]]
        for stage in stages:
            for fut in as_completed(stage()):
                try:
                    print(f"[{time.time() - t0:7.0f} s] {fut.result()}", flush=True)
                except RuntimeError as e:  # one run failed: start nothing more, let the running ones finish
                    pool.shutdown(cancel_futures=True)
                    raise RunError(f"{e}")


def demo_report(args):
    """--demo: what the class should see, each row's rank, z_std and kNN at the start and the end, and one figure."""
    runs = load_results(args.results)[0]
    for rid in DEMO_ROWS:
        cur = [c for c in runs[rid][0]["curve"] if "erank" in c]
        knn = [c["knn_top1"] for c in runs[rid][0]["curve"] if "knn_top1" in c]
        print(f"{rid:12s} effective rank {cur[0]['erank']:5.1f} -> {cur[-1]['erank']:5.1f}, z_std "
              f"{cur[0]['z_std']:.2f} -> {cur[-1]['z_std']:.2f}, kNN {100 * knn[0]:.2f} -> {100 * knn[-1]:.2f}")
    lead_figure(runs, DEMO_ROWS, args.results, "demo.png", "reproduce.py --demo: the laptop protocol, seed 0, "
                "side by side")  # (it prints the path)


def main():
    args, work = parse()
    if args.report:
        return report_only(args)
    todo = plan(args, work)
    if args.dry_run:
        return dry_run(args, work, todo)
    check_data(args, todo["todo"])
    t0 = time.time()
    print(f"{todo['line']}; results in {args.results}", flush=True)
    run_stages(args, todo, dict(os.environ, OMP_NUM_THREADS=str(todo["threads"])), t0)
    if not args.demo:  # (the demo's lines say what it shows)
        print(table_markdown(args.scale, args.results))
    write_tables(args.scale, args.results)
    if args.demo:
        demo_report(args)
    print(f"done in {time.time() - t0:.0f} s; table in {os.path.join(args.results, 'table.md')} (figures: --report)")


if __name__ == "__main__":
    try:
        main()
    except RunError as e:  # a bad flag, path or file: one line on stderr, no traceback
        sys.exit(f"error: {e}")
