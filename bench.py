"""
Speed benchmarks. They print numbers; they assert nothing.

    python bench.py                         # this device: augmentation + the real training loop
    python bench.py --suite profile         # the step's pieces, each timed (main job's network)
    python bench.py --suite step --train-flags "..."      # img/s of one run's real step
    python bench.py --suite roofline --train-flags "..."  # its GFLOP/s against the fp32 matmul rate
    python bench.py --suite precision       # fp32 / bf16 / channels_last / both, 3 runs each,
                                            # and how far bf16 moves DirectPred's Wp
    python bench.py --suite memory --train-flags "--preset imagenet-lars-300"  # GB a GPU
    python bench.py --suite run             # the README's main job end to end, its wall time split
                                            # into start-up, steps, between steps, kNN
    python bench.py --suite peer            # 300 steps of the main job against lightly's BYOL on
                                            # the same network, whole processes, alternated

The prepared GPU run (speed against a DataLoader + torchvision pipeline, Fashion-MNIST at full
width, the CUDA tests, within a time budget) is python -m paper.gpu; it reuses the timing helpers
and the real step here.


"""
import time

T_START = time.perf_counter()  # before the imports: the run suite counts them in the start-up

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn

import plumbing
import train as T
from directpred import DirectPred, diagnostics, feature_stats
from data import DATASETS, load_dataset, normalisation, train_set

HERE = os.path.dirname(os.path.abspath(__file__))
# the README's main job (DirectPred on Fashion-MNIST, the laptop protocol: ResNet-18 with the
# ImageNet stem at width 16, 28 px, crop-min 0.7, batch 128, lr 0.03 constant, 5 epochs); precision
# is left to each suite
MAIN_JOB = ["--dataset", "fashion-mnist", "--predictor", "direct", "--width", "16", "--stem",
            "imagenet", "--crop-min", "0.7", "--epochs", "5"]


def sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, dev, n=6):
    """Median wall time of fn() in ms over n calls, the first (warm-up) left out."""
    times = []
    for _ in range(n):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times[1:])[len(times[1:]) // 2]


def augment_ms(dev, batch):
    """Both views of one batch of 32 px images (train.augment, the cifar preset), in ms."""
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=dev)
    mean, std = normalisation("cifar10", dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    return median_ms(lambda: [T.augment(x, T.AUG["cifar"], v, gen, 32, (0.08, 1.0), mean,
                                        std) for v in (0, 1)], dev)


def run_child(cmd, env=None):
    """Run a child script; a failure raises with the child's last stderr lines (not a bare
    CalledProcessError)."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{os.path.basename(cmd[1])} failed: "
                           f"{' | '.join(r.stderr.strip().splitlines()[-3:])}")


def child_env(dev, **extra):
    """The environment of a child process on device dev: cuda:N is the child's only GPU
    (CUDA_VISIBLE_DEVICES=N), so every child of a suite runs on the GPU the suite was given."""
    return dict(os.environ, **extra,
                **({"CUDA_VISIBLE_DEVICES": dev.split(":")[1]} if ":" in dev else {}))


def train_loop(dev, batch, steps, compile_=0, extra=(), env=None):
    """img/s of the real train.py loop on --dataset fake (32 px), read from its last log interval,
    the second half of `steps` (the start-up, compilation and cudnn autotuning are in the first).
    Returns the last log record. A failure raises with the child's last stderr lines."""
    with tempfile.TemporaryDirectory() as out:
        half = max(1, steps // 2)
        cmd = [sys.executable, os.path.join(HERE, "train.py"), "--dataset", "fake", "--fake-size",
               str(batch * steps), "--batch-size", str(batch), "--max-steps", str(2 * half),
               "--log-every", str(half), "--log-early", "0", "--ckpt-every", str(10 ** 9),
               "--device", dev.split(":")[0], "--compile", str(compile_), "--out-dir", out, *extra]
        run_child(cmd, child_env(dev, **(env or {})))
        return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))][-1]


def real_step(flags, dev):
    """The run's networks, optimizer, DirectPred state and EMA pairs as train.py builds them from
    `flags`, and step(x1, x2) = train.train_step on them (the real step, not a copy). Returns (step,
    cfg, ctx, fmt)."""
    cfg = T.parse_config(flags)
    in_chans = 1 if cfg["dataset"] == "fashion-mnist" else 3
    model = T.build_model(cfg, in_chans).to(dev)
    target = T.build_target(model, cfg, in_chans)
    ctx, fmt = plumbing.precision_and_layout(dev.split(":")[0], cfg["bf16"], cfg["channels_last"],
                                             width=cfg["width"])
    model = model.to(memory_format=fmt)
    target = target.to(memory_format=fmt) if target is not None else None
    opt, dp = T.build_optimizer(model, cfg), T.build_directpred(cfg, dev)
    ema = T.ema_pairs(target, model)

    def step(x1, x2):
        return T.train_step(model, model, target, dp, opt, x1, x2, cfg, ctx, cfg["lr"], cfg["ema"],
                            ema)
    step.parts = (model, target, dp, opt, ema)  # what step_pieces calls piece by piece
    return step, cfg, ctx, fmt


def views(cfg, dev, fmt):
    """views(k): both augmented views of one fixed batch of random images of the run's dataset
    shape, as train.py's loop makes them at step k (train.augment, its preset and crop scale)."""
    C, H = DATASETS[cfg["dataset"]].shape
    size = cfg["img_size"] or H
    x = torch.randint(0, 256, (cfg["batch_size"], C, H, H), dtype=torch.uint8, device=dev)
    mean, std = normalisation(cfg["dataset"], dev)
    aug = T.aug_of(cfg)  # train.py's own: the preset and --jitter, as the run
    gen = torch.Generator(device=dev)

    def make(k):
        gen.manual_seed(k)
        return [T.augment(x, aug, v, gen, size, (cfg["crop_min"], 1.0), mean,
                          std).contiguous(memory_format=fmt)
                for v in (0, 1)]
    return make


def step_img_s(flags, dev, steps, wait=False):
    """img/s of the real step (views + train.train_step) of the run `flags` describes, over `steps`
    steps after 2 warm-up steps. wait: print 'ready' after the warm-up and start when a line arrives
    on stdin."""
    step, cfg, _, fmt = real_step(flags, dev)
    make = views(cfg, dev, fmt)
    for k in range(2):
        step(*make(k))
    if wait:
        print("ready", flush=True)
        sys.stdin.readline()
    sync(dev)
    t = time.perf_counter()
    for k in range(steps):
        step(*make(k))
    sync(dev)
    return cfg["batch_size"] * steps / (time.perf_counter() - t)


def matmul_gflops(dev, sizes=(1024, 2048, 3072), reps=5):
    """This device's fp32 matmul rate in GFLOP/s: the fastest of `reps` n x n products at each size,
    the best size (after a warm-up). The roof that a step's convolutions and matmuls are held
    against."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        for i in range(reps + 1):
            sync(dev)
            t = time.perf_counter()
            a @ b
            sync(dev)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9 if i else 0.0)
    return best


def roofline(flags, dev, steps):
    """The real step of the run `flags` describes against this device's fp32 matmul rate: its FLOPs
    (counted by torch.utils.flop_counter on one step: convolutions and matmuls of the online forward
    + backward and the target forward), its img/s, the GFLOP/s it achieves and their share of the
    matmul rate, measured side by side."""
    from torch.utils.flop_counter import FlopCounterMode
    step, cfg, _, fmt = real_step(flags, dev)
    with FlopCounterMode(display=False) as counter:
        step(*views(cfg, dev, fmt)(0))
    flops, peak = counter.get_total_flops(), matmul_gflops(dev)
    img_s = step_img_s(flags, dev, steps)
    achieved = flops * img_s / cfg["batch_size"] / 1e9
    print(f"torch {torch.__version__}, {dev}, {torch.get_num_threads()} threads, fp32 matmul "
          f"{peak:.0f} GFLOP/s; "
          f"the step: {flops / 1e9:.2f} GFLOP per batch of {cfg['batch_size']}, {img_s:.0f} img/s "
          f"= {achieved:.0f} "
          f"GFLOP/s, {100 * achieved / peak:.0f}% of the matmul rate", flush=True)


def saved_bytes(flags, dev, bf16, batch):
    """Bytes the online forward of both views (train.ssl_loss) keeps for backward at a local batch,
    counted by autograd's saved-tensor hooks, each storage once, the parameters themselves left
    out (the target's forward runs under no_grad and keeps nothing)."""
    step, cfg, ctx, fmt = real_step(flags + ["--bf16", str(int(bf16)), "--batch-size",
                                             str(batch)], dev)
    model, target = step.parts[:2]
    C, H = DATASETS[cfg["dataset"]].shape
    size = cfg["img_size"] or H
    x = torch.randn(batch, C, size, size, device=dev).contiguous(memory_format=fmt)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        T.ssl_loss(model, target, x, x, cfg)
    return sum(seen.values()), model, target


def memory_suite(flags, dev, gpus=(8, 16, 32)):
    """A run's GPU memory, counted on any device: the activations its online forward saves per
    image (the slope between batches 2 and 4, so per-batch copies such as bf16 weights are not
    counted per image), in fp32 and bf16, plus the weights, gradients, optimizer state and EMA
    target, at the local batch --batch-size gives on 8, 16 and 32 GPUs. A floor: the backward's
    transient buffers and the allocator's slack come on top."""
    batch = T.parse_config(flags)["batch_size"]  # the global batch
    for bf16 in (0, 1):
        (b2, model, target), (b4, *_) = (saved_bytes(flags, dev, bf16, b) for b in (2, 4))
        per_image = (b4 - b2) / 2
        n = sum(p.numel() for p in model.parameters()) + \
            sum(p.numel() for p in (target.parameters() if target is not None else []))
        state = 4 * (n + 2 * sum(p.numel() for p in model.parameters()))  # + grads + momentum
        fits = ", ".join(f"{g} GPUs: {batch // g} a GPU, "
                         f"{(per_image * (batch // g) + state) / 1e9:.1f} GB"
                         for g in gpus if batch % g == 0)
        print(f"{'bf16' if bf16 else 'fp32'}: {per_image / 1e6:.1f} MB of saved activations an "
              f"image (two views), {state / 1e9:.2f} GB of weights, gradients, momentum and "
              f"target; global batch {batch}: {fits}", flush=True)


CATEGORIES = [  # (kind of op, substrings of the aten op names it holds); the first match wins
    ("convolutions", ("conv",)), ("BatchNorm", ("batch_norm",)),
    ("matmul (projector, predictor, F)", ("mm", "einsum",
     "linear")), ("eigh", ("linalg",)), ("pooling", ("pool",)), ("augmentation sampling",
                                                                 ("grid_sampler", "affine_grid")),
]


def step_pieces(flags, dev):
    """The pieces of one training step, in train.train_step's order, each a call of the function the
    step calls: [(name, fn(state) -> None)], state a dict the pieces share (the views, the outputs,
    the loss), and the real step (bench's real_step) to hold their sum against."""
    step, cfg, ctx, fmt = real_step(flags, dev)
    model, target, dp, opt, ema = step.parts
    make = views(cfg, dev, fmt)

    def forward(st):
        with ctx:
            st["z1"], st["z2"], st["p1"], st["p2"] = model(st["x1"], st["x2"])

    def target_forward(st):
        with torch.no_grad(), ctx:
            st["t1"], st["t2"], _, _ = target(st["x1"], st["x2"])

    def loss(st):
        st["loss"] = (T.cosine_loss(st["p1"].float(), st["t2"].float())
                      + T.cosine_loss(st["p2"].float(), st["t1"].float()))

    def backward(st):
        opt.zero_grad(set_to_none=True)
        st["loss"].backward()

    def ema_update(st):
        with torch.no_grad():
            torch._foreach_lerp_(*ema, 1 - cfg["ema"])
    pieces = [("views (augment)", lambda st: st.update(zip(("x1", "x2"), make(st["k"])))),
              ("online forward", forward), ("target forward", target_forward), ("loss", loss),
              ("DirectPred statistics", lambda st: dp.update(torch.cat([st["z1"], st["z2"]]))),
              ("backward", backward), ("optimizer step", lambda st: opt.step()),
              ("DirectPred set Wp", lambda st: dp.set_predictor(model.predictor.weight)),
              ("EMA", ema_update)]
    return pieces, step, make, cfg


def profile_suite(args):
    """Where one training step's time goes (the README main job's network at each --widths, batch
    128, this device): each piece of the step (step_pieces: the calls train.train_step makes, in its
    order) timed on its own, median over --steps steps, their sum beside the whole real step's time;
    then the aten ops by kind under torch.profiler over whole real steps, and what is left (Python,
    autograd, the profiler)."""
    from torch.profiler import ProfilerActivity, profile
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, bf16 "
          f"instructions: {plumbing.cpu_has_bf16()}; {args.steps} steps per measurement")
    other = "other aten ops (elementwise, copies, allocation)"
    for width in args.widths:
        pieces, step, make, cfg = step_pieces(MAIN_JOB + ["--width",
                                                          str(width)] + args.extra.split(),
                                                          args.device)
        times = {name: [] for name, _ in pieces}
        for k in range(args.steps + 2):  # 2 warm-up steps
            st = {"k": k}
            for name, fn in pieces:
                sync(args.device)
                t = time.perf_counter()
                fn(st)
                sync(args.device)
                if k >= 2:
                    times[name].append(1000 * (time.perf_counter() - t))
        med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
        whole = median_ms(lambda: step(*make(0)), args.device, n=args.steps + 1)
        stats = feature_stats(None, torch.cat([st["z1"], st["z2"]]))
        Wp = torch.zeros(cfg["proj_dim"], cfg["proj_dim"], device=args.device)
        diag = median_ms(lambda: diagnostics(stats, Wp, st["z1"].detach()), args.device)
        total = sum(med.values())
        print(f"\nwidth {width}: the pieces sum to {total:.1f} ms per step "
              f"({cfg['batch_size'] * 1000 / total:.0f} img/s); one real step of a fixed batch "
              f"(views excluded) takes {whole:.1f} ms")
        for name, v in med.items():
            print(f"  {name:34s} {v:7.2f} ms  {100 * v / total:5.1f}%")
        print(f"  {'diagnostics (once per log step)':34s} {diag:7.2f} ms  = "
              f"{100 * diag / 50 / total:.2f}% of a step at --log-every 50")
        x1, x2 = make(0)
        cuda = [ProfilerActivity.CUDA] if args.device.startswith("cuda") else []
        with profile(activities=[ProfilerActivity.CPU] + cuda) as prof:
            for _ in range(args.steps):
                step(x1, x2)
            sync(args.device)
        cats = dict.fromkeys([n for n, _ in CATEGORIES] + [other], 0.0)
        for e in prof.key_averages():
            if e.key.startswith("aten::"):
                cats[next((n for n, keys in CATEGORIES if any(k in e.key for k in keys)),
                          other)] += \
                    e.self_cpu_time_total / 1000 / args.steps
        in_ops = sum(cats.values())
        print(f"  aten ops by kind under the profiler (self time per real step, {in_ops:.1f} ms in "
              "all):")
        for k, v in cats.items():
            print(f"    {k:48s} {v:7.2f} ms  {100 * v / in_ops:5.1f}%")


def precision_suite(args):
    """fp32 / bf16 autocast / channels_last / both on the main job's network at width 32 (ResNet-18,
    ImageNet stem, 28 px, 1 channel, batch 128: the width paper/results/speed/ab.md measured), 3
    runs of each interleaved; then DirectPred's Wp under bf16 against fp32."""
    main = MAIN_JOB + ["--width", "32", "--data-dir", args.data_dir]
    modes = {"fp32": ("0", "0"), "bf16": ("1", "0"), "channels_last": ("0", "1"),
             "both": ("1", "1")}
    got = {m: [] for m in modes}
    for _ in range(3):
        for m, (bf16, cl) in modes.items():
            rec = train_loop(args.device, 128, args.steps, extra=main + ["--bf16", bf16,
                                                                         "--channels-last", cl])
            got[m].append(round(rec["img_per_s"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 instructions: "
          f"{plumbing.cpu_has_bf16()}")
    for m, v in got.items():
        print(f"{m:14s} img/s {v}")
    # Wp from one batch's predictor inputs: the network in bf16 autocast against the same network in
    # fp32
    x, _ = load_dataset("fashion-mnist", args.data_dir, "train")
    mean, std = normalisation("fashion-mnist", "cpu")
    cfg = T.parse_config(main)
    model = T.build_model(cfg, 1)
    if args.ckpt:
        model.load_state_dict(plumbing.load_checkpoint(args.ckpt, "--ckpt")["online"])

    def wp(z):
        dp = DirectPred(z.shape[1])
        dp.update(z.float())
        w = torch.zeros(z.shape[1], z.shape[1])
        dp.set_predictor(w)
        return w.double()
    gen = torch.Generator().manual_seed(0)
    view = lambda b: T.augment(x[b * 256:(b + 1) * 256], T.AUG["cifar"], 0, gen, 28, (0.9, 1.0),
                               mean, std)
    with torch.no_grad():
        for b in range(3):
            xb = view(b)
            z32 = model.projector(model.backbone(xb))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z16 = model.projector(model.backbone(xb))
            W32 = wp(z32)
            rel = lambda W: ((W - W32).norm() / W32.norm()).item()
            other = wp(model.projector(model.backbone(view(b + 3))))
            print(f"batch {b}: Wp relative error, network in bf16: {rel(wp(z16)):.2e}; fp32 "
                  f"network, its output rounded to bf16: {rel(wp(z32.bfloat16())):.2e}; the next "
                  f"batch in fp32 (batch-to-batch change): {rel(other):.2e}")


# -----------------------------------------------------------------------------
# the whole run: the README's main job end to end, its wall time split by where it goes

README_JOB = MAIN_JOB + ["--bf16", "0", "--eval-every", "1170"]  # README.md's main job, exactly
PARTS = (  # (part, what it times), in the table's order
    ("imports", "python's imports of torch and the repository (bench.py's own beside)"),
    ("data", "train_set: the images read into memory"),
    ("setup", "main() up to the loop, data and kNN aside: flags, networks, optimizer, bf16 choice"),
    ("steps", "train_step: forwards, DirectPred's statistics, backward, optimizer, Wp, EMA"),
    ("batches", "epoch_batches: the next batch's indices and images"),
    ("views", "two_views: both augmented views"),
    ("monitor", "feature_stats: the collapse diagnostics' running statistics"),
    ("guard", "Run.after_step: the divergence guard"),
    ("log", "diagnostics, the bar and log.jsonl (the loss's .item() in the loop counts as loop)"),
    ("checkpoints", "run_state and Run.save"),
    ("knn", "Run.knn: the kNN monitor at init, every --eval-every steps and at the end"),
    ("close", "Run.close: the last lines"),
    ("loop", "the rest of the loop's own lines (schedules, seeding, .item(), bookkeeping)"),
    ("exit", "interpreter start and exit: the child's wall time less everything it timed"),
)


def timed(fn, acc, key, dev):
    """fn, its wall time added to acc[key] (synchronised on CUDA: the split then has no overlap)."""
    def inner(*a, **k):
        sync(dev)
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sync(dev)
            acc[key] += time.perf_counter() - t
    return inner


def timed_batches(fn, acc, dev, mark):
    """epoch_batches, the time of each next() added to acc["batches"]; mark: the clock and acc when
    the first batch is asked for (the end of the set-up)."""
    def inner(*a, **k):
        it = iter(fn(*a, **k))
        if not mark:
            mark.update(acc, at=time.perf_counter())
        while True:
            sync(dev)
            t = time.perf_counter()
            try:
                x = next(it)
            except StopIteration:
                return
            finally:
                sync(dev)
                acc["batches"] += time.perf_counter() - t
            yield x
    return inner


def split_run(flags, out_json):
    """In the child: train.main() on flags with the loop's pieces timed (train's and plumbing.Run's
    functions wrapped in place; what they compute is unchanged), the split written to out_json."""
    acc = {k: 0.0 for k, _ in PARTS}
    acc["imports"] = time.perf_counter() - T_START
    cfg = T.parse_config(flags)
    dev = "cuda" if cfg["device"] != "cpu" and torch.cuda.is_available() else "cpu"  # as train.py
    for name, key in (("train_set", "data"), ("train_step", "steps"), ("two_views", "views"),
                      ("feature_stats", "monitor"), ("diagnostics", "log"),
                      ("run_state", "checkpoints")):
        setattr(T, name, timed(getattr(T, name), acc, key, dev))
    mark = {}
    T.epoch_batches = timed_batches(T.epoch_batches, acc, dev, mark)
    for name, key in (("after_step", "guard"), ("show", "log"), ("write", "log"),
                      ("save", "checkpoints"), ("knn", "knn"), ("close", "close")):
        setattr(plumbing.Run, name, timed(getattr(plumbing.Run, name), acc, key, dev))
    sys.argv = ["train.py", *flags]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    T.main()
    main_s = time.perf_counter() - t
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults  # pages the kernel zeroed
    log = [json.loads(line) for line in open(os.path.join(cfg["out_dir"], "log.jsonl"))]
    timed_in_main = [k for k, _ in PARTS if k not in ("imports", "setup", "loop", "exit")]
    # set-up: main() until the first batch is asked for, less what the timers saw in it (data, kNN)
    acc["setup"] = mark["at"] - t - sum(mark[k] for k in timed_in_main)
    acc["loop"] = main_s - acc["setup"] - sum(acc[k] for k in timed_in_main)
    json.dump(dict(acc=acc, main_s=main_s, steps=log[-1]["step"], wall_in_child=time.perf_counter()
                   - T_START, knn=[r.get("knn_top1") for r in log if "knn_top1" in r],
                   faults=faults),
              open(out_json, "w"))


def run_suite(args):
    """The README's main job (or --train-flags) end to end in a child process, its wall time split
    into PARTS; parts sum to the wall time by construction, so "loop" and "exit" are what no timer
    saw. Prints seconds and shares, and the run's img/s and kNN."""
    with tempfile.TemporaryDirectory() as out:
        flags = args.train_flags.split() + ["--data-dir", args.data_dir, "--out-dir", out]
        cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--suite", "run-child",
               "--train-flags", " ".join(flags), "--out-json", os.path.join(out, "split.json")]
        t = time.perf_counter()
        run_child(cmd, child_env(args.device))
        wall = time.perf_counter() - t
        got = json.load(open(os.path.join(out, "split.json")))
    acc = dict(got["acc"], exit=wall - got["wall_in_child"])
    batch = T.parse_config(args.train_flags.split())["batch_size"]
    print(f"the run: {' '.join(args.train_flags.split())}; {got['steps']} steps; wall {wall:.1f} s "
          f"({got['steps'] * batch / wall:.0f} img/s end to end); kNN {got['knn']}; "
          f"torch {torch.__version__}, {args.device}")
    print(f"{'part':<16} {'s':>8} {'%':>6}  what")
    for k, what in PARTS:
        print(f"{k:<16} {acc[k]:8.2f} {100 * acc[k] / wall:6.1f}  {what}")
    outside = wall - acc["steps"]
    print(f"{'outside the step':<16} {outside:8.2f} {100 * outside / wall:6.1f}  (all but steps)")
    print(f"{'sum':<16} {sum(acc.values()):8.2f} {100 * sum(acc.values()) / wall:6.1f}")
    print(f"page faults in main(): {got['faults']} ({got['faults'] / got['steps']:.0f} a step; "
          "plumbing.keep_freed_memory keeps them few)")


# -----------------------------------------------------------------------------
# a peer side by side: lightly's BYOL (its heads, loss, momentum update and DataLoader transforms)


PEER_STEPS = 300


def peer_child(args):
    """In the child: lightly's BYOL for PEER_STEPS steps of batch 128 on Fashion-MNIST, the main
    job's backbone (train.py's ResNet-18, ImageNet stem, width 16) and recipe where lightly's
    transform has the knob (crop-min 0.7, the colour jitter 0.4 / 0.4 / 0.4 / 0.1 at p 0.8, grey
    0.2, no blur or solarisation, Fashion-MNIST's mean and std); lightly's projection and prediction
    MLPs (512 hidden, 128 out), its negative cosine loss on both pairings, its momentum update
    (0.996); SGD lr 0.03, momentum 0.9, wd 4e-4; views made by DataLoader workers (one per core)
    from PIL images, as lightly's examples do."""
    try:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.transforms.byol_transform import (BYOLTransform, BYOLView1Transform,
                                                       BYOLView2Transform)
    except ImportError:
        raise SystemExit("error: --suite peer needs lightly (pip install lightly)")
    import copy
    from PIL import Image
    cfg = T.parse_config(MAIN_JOB + ["--data-dir", args.data_dir])
    (x, _), _, in_chans, size = train_set(cfg, "cpu")
    kw = dict(input_size=size, min_scale=cfg["crop_min"], cj_prob=0.8, cj_bright=0.4,
              cj_contrast=0.4, cj_sat=0.4, cj_hue=0.1, random_gray_scale=0.2, gaussian_blur=0.0,
              normalize=dict(mean=list(DATASETS["fashion-mnist"].mean),
                             std=list(DATASETS["fashion-mnist"].std)))
    transform = BYOLTransform(BYOLView1Transform(**kw),
                              BYOLView2Transform(**kw, solarization_prob=0))

    class Images(torch.utils.data.Dataset):  # PIL images in, lightly's two views out
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return transform(Image.fromarray(x[i, 0].numpy(), mode="L"))

    loader = torch.utils.data.DataLoader(Images(), batch_size=cfg["batch_size"], shuffle=True,
                                         drop_last=True, num_workers=os.cpu_count())
    backbone = T.build_model(cfg, in_chans).backbone  # (B, 128) at width 16
    d = 8 * cfg["width"]
    online = nn.Sequential(backbone, BYOLProjectionHead(d, 512, 128))
    predictor = BYOLPredictionHead(128, 512, 128)
    target = copy.deepcopy(online)
    deactivate_requires_grad(target)
    loss_fn = NegativeCosineSimilarity()
    opt = torch.optim.SGD([*online.parameters(), *predictor.parameters()], lr=0.03, momentum=0.9,
                          weight_decay=4e-4)
    step = 0
    while step < PEER_STEPS:
        for x1, x2 in loader:  # lightly's transform gives [view 1, view 2]
            update_momentum(online, target, m=0.996)
            p1, p2 = predictor(online(x1)), predictor(online(x2))
            with torch.no_grad():
                t1, t2 = target(x1), target(x2)
            loss = 0.5 * (loss_fn(p1, t2) + loss_fn(p2, t1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == PEER_STEPS:
                break
    print(f"loss {loss.item():.4f} after {step} steps")


def peer_suite(args):
    """PEER_STEPS steps of the main job (train.py, fp32, no kNN, a checkpoint at the end) and of
    lightly's BYOL on the same backbone (peer_child), each a whole process from the interpreter's
    start, alternated --repeats times on this machine; prints each wall time, the ratios and
    their median."""
    with tempfile.TemporaryDirectory() as out:
        ours = [sys.executable, os.path.join(HERE, "train.py"), *MAIN_JOB, "--bf16", "0",
                "--eval-every", "0", "--max-steps", str(PEER_STEPS), "--data-dir", args.data_dir,
                "--out-dir", out]
        peer = [sys.executable, os.path.join(HERE, "bench.py"), "--suite", "peer-child",
                "--data-dir", args.data_dir]
        walls = {"train.py": [], "lightly": []}
        for _ in range(args.repeats):
            for name, cmd in (("train.py", ours), ("lightly", peer)):
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                run_child(cmd, child_env(args.device))
                walls[name].append(time.perf_counter() - t)
    import lightly
    print(f"{PEER_STEPS} steps of batch 128, the main job's network, whole processes alternated; "
          f"torch {torch.__version__}, lightly {lightly.__version__}, {args.device}, "
          f"{os.cpu_count()} cores")
    for name, w in walls.items():
        print(f"{name:10s} " + "  ".join(f"{v:6.1f} s" for v in w))
    ratios = [b / a for a, b in zip(walls["train.py"], walls["lightly"])]
    print(f"lightly / train.py, pair by pair: {', '.join(f'{r:.2f}x' for r in ratios)}; median "
          f"{statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="default",
                   choices=["default", "profile", "step", "roofline", "precision", "memory", "run",
                            "run-child", "peer", "peer-child"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256, help="default suite")
    p.add_argument("--steps", type=int, default=6,
                   help="train steps; img/s is measured over the second half")
    p.add_argument("--compile", type=int, default=0, help="default suite")
    p.add_argument("--extra", default="", help="default suite: more train.py flags, as one string")
    p.add_argument("--data-dir", default="data",
                   help="Fashion-MNIST's --data-dir (precision and run suites)")
    p.add_argument("--out-json", default="", help="run-child: where the split goes (run suite)")
    p.add_argument("--ckpt", default="",
                   help="precision suite: a main-job checkpoint for the Wp measurement")
    p.add_argument("--repeats", type=int, default=2,
                   help="peer suite: alternated pairs of whole processes (train.py, then lightly)")
    p.add_argument("--widths", default="16,32",
                   help="profile suite: the main job's network at these --width")
    p.add_argument("--train-flags", default=None,
                   help="step / roofline / memory / run suites: the run measured (default: the "
                   "main job; the run suite: README.md's main job, exactly)")
    p.add_argument("--wait", action="store_true",
                   help="step suite: say 'ready' after the warm-up, start on a line of stdin "
                   "(reproduce.py --jobs auto times several side by side)")
    args = p.parse_args()
    args.widths = [int(w) for w in args.widths.split(",")]
    if args.train_flags is None:
        args.train_flags = " ".join(README_JOB if args.suite == "run" else MAIN_JOB)
    if args.suite == "profile":
        profile_suite(args)
    elif args.suite == "step":
        img_s = step_img_s(args.train_flags.split(), args.device, args.steps, args.wait)
        print(f"img/s {img_s:.1f}", flush=True)
    elif args.suite == "roofline":
        roofline(args.train_flags.split(), args.device, args.steps)
    elif args.suite == "precision":
        precision_suite(args)
    elif args.suite == "memory":
        memory_suite(args.train_flags.split(), args.device)
    elif args.suite == "run":
        run_suite(args)
    elif args.suite == "run-child":
        split_run(args.train_flags.split(), args.out_json)
    elif args.suite == "peer":
        if args.repeats < 1:
            raise SystemExit(f"error: --repeats {args.repeats}: at least 1 pair is needed")
        peer_suite(args)
    elif args.suite == "peer-child":
        peer_child(args)
    else:
        ms = augment_ms(args.device, args.batch_size)
        print(f"augment: batch {args.batch_size}, 2 views, 32 px: {ms:.1f} ms "
              f"({args.batch_size / ms * 1000:.0f} img/s), {args.device}")
        rec = train_loop(args.device, args.batch_size, args.steps, args.compile, args.extra.split())
        print(f"train: {rec['img_per_s']:.1f} img/s over the last {args.steps // 2} steps "
              f"(resnet18 cifar stem unless --extra says otherwise, batch {args.batch_size}, both "
              f"views + target forward, {args.device})")
        if "mem_gb" in rec:
            print(f"train: peak GPU memory {rec['mem_gb']:.2f} GB")
