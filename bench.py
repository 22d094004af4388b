"""
Speed benchmarks. They print numbers (and write them with --out); they assert nothing.

    python bench.py                                   # this device: augmentation + the real training loop
    python bench.py --suite profile                   # where a step's time goes (main job's network at widths 16, 32)
    python bench.py --suite step --train-flags "..."  # img/s of the real step of one run (reproduce.py --jobs auto)
    python bench.py --suite roofline --train-flags "..."  # that step's GFLOP/s against this CPU's fp32 matmul rate
    python bench.py --suite precision                 # fp32 / bf16 / channels_last / both (3 interleaved runs),
                                                      # and how far bf16 moves DirectPred's Wp
    python bench.py --suite gpu --out DIR             # the prepared GPU run: ends within --budget (540 s)
    python bench.py --suite gpu --out DIR --device cpu --tiny    # its rehearsal on a CPU: every step, tiny sizes

--suite gpu, in order of value, each step only if its estimated cost fits in the time left (bench.json records the
estimate beside what it took, and what was skipped and why): train.py's real loop (32 px images, ResNet-18 with the
CIFAR stem, DirectPred) at batch 128 / 256 / 512, img/s over the last 100 of 200 steps, peak memory, the time of a
50k-image epoch; the same step fed by the pipeline lightly and solo-learn use on CIFAR (torchvision transforms on PIL
images in DataLoader workers, uint8 to float on the GPU), and the ratio; augmentation ms per batch and DirectPred's
update + eigh as a share of a step; the loop at batch 512 with --compile 1; Fashion-MNIST with a full-width
ResNet-18 for the epochs the budget leaves, probed (fast probe + kNN) beside its random init; the CUDA tests of
test_smoke.py last, each with a timeout, their full output in DIR/cuda_tests.txt. The Fashion-MNIST files are
looked for before anything starts (under --data-dir/FashionMNIST/raw or the Debian package's folder; a device
machine has no network, so nothing is downloaded): without them that step is skipped, said in one line. Everything
goes to DIR/bench.json and DIR/bench.md.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import PIL.Image
import torch
import torchvision.transforms as TV

import plumbing
import train as T
from directpred import DirectPred

HERE = os.path.dirname(os.path.abspath(__file__))
# the README's main job (DirectPred on Fashion-MNIST, ResNet-18 with the ImageNet stem at width 64, 28 px, batch 128,
# the reference runs' recipe at 3 epochs); precision is left to each suite
MAIN_JOB = ["--dataset", "fashion-mnist", "--predictor", "direct", "--width", "64", "--stem", "imagenet", "--crop-min",
            "0.7", "--lr", "0.06", "--lr-schedule", "cosine", "--warmup-epochs", "1", "--epochs", "3"]


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
    mean, std = T.normalisation("cifar10", dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    return median_ms(lambda: [T.augment(x, T.AUG["cifar"], v, gen, 32, (0.08, 1.0), mean, std) for v in (0, 1)], dev)


def run_child(cmd, env=None):
    """Run a child script; a failure raises with the child's last stderr lines (not a bare CalledProcessError)."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{os.path.basename(cmd[1])} failed: {' | '.join(r.stderr.strip().splitlines()[-3:])}")


def child_env(dev, **extra):
    """The environment of a child process on device dev: cuda:N is the child's only GPU (CUDA_VISIBLE_DEVICES=N),
    so every child of a suite runs on the GPU the suite was given."""
    return dict(os.environ, **extra, **({"CUDA_VISIBLE_DEVICES": dev.split(":")[1]} if ":" in dev else {}))


def train_loop(dev, batch, steps, compile_=0, extra=(), env=None):
    """img/s of the real train.py loop on --dataset fake (32 px), read from its last log interval, the second half of
    `steps` (the start-up, compilation and cudnn autotuning are in the first). Returns the last log record. A failure
    raises with the child's last stderr lines."""
    with tempfile.TemporaryDirectory() as out:
        half = max(1, steps // 2)
        cmd = [sys.executable, os.path.join(HERE, "train.py"), "--dataset", "fake", "--fake-size", str(batch * steps),
               "--batch-size", str(batch), "--max-steps", str(2 * half), "--log-every", str(half), "--log-early", "0",
               "--ckpt-every", str(10 ** 9), "--device", dev.split(":")[0], "--compile", str(compile_), "--out-dir", out,
               *extra]
        run_child(cmd, child_env(dev, **(env or {})))
        return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))][-1]


class PeerDataset(torch.utils.data.Dataset):
    """CIFAR-style images as PIL, two views by torchvision transforms in the worker: the pipeline of lightly's and
    solo-learn's CIFAR recipes (RandomResizedCrop, flip, ColorJitter p 0.8, grayscale p 0.2), uint8 out."""

    def __init__(self, n):
        g = np.random.default_rng(0)
        self.images = g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.t = TV.Compose([TV.RandomResizedCrop(32, scale=(0.08, 1.0)), TV.RandomHorizontalFlip(),
                             TV.RandomApply([TV.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), TV.RandomGrayscale(0.2),
                             TV.PILToTensor()])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = PIL.Image.fromarray(self.images[i])
        return self.t(img), self.t(img)


def real_step(flags, dev):
    """The run's networks, optimizer, DirectPred state and EMA pairs as train.py builds them from `flags`, and
    step(x1, x2) = train.train_step on them (the real step, not a copy). Returns (step, cfg, ctx, fmt)."""
    cfg = T.parse_config(flags)
    in_chans = 1 if cfg["dataset"] == "fashion-mnist" else 3
    model = T.build_model(cfg, in_chans).to(dev)
    target = T.build_target(model, cfg, in_chans)
    ctx, fmt = plumbing.speed_paths(dev.split(":")[0], cfg["bf16"], cfg["channels_last"], width=cfg["width"])
    model = model.to(memory_format=fmt)
    target = target.to(memory_format=fmt) if target is not None else None
    opt, dp = T.build_optimizer(model, cfg), T.build_directpred(cfg, dev)
    ema = T.ema_pairs(target, model)
    step = lambda x1, x2: T.train_step(model, model, target, dp, opt, x1, x2, cfg, ctx, cfg["lr"], cfg["ema"], ema)
    return step, cfg, ctx, fmt


def peer_loop(dev, batch, steps, workers, width=64):
    """img/s of the same step (train.train_step: model, heads, loss, DirectPred, EMA) fed by PeerDataset through a
    DataLoader (uint8 -> float and normalisation on the device, bf16 autocast and channels_last where train.py would
    use them)."""
    step, cfg, ctx, fmt = real_step(["--dataset", "cifar10", "--batch-size", str(batch), "--width", str(width)], dev)
    mean, std = T.normalisation("cifar10", dev)
    loader = torch.utils.data.DataLoader(PeerDataset(batch * (steps + 2)), batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=dev.startswith("cuda"), drop_last=True,
                                         persistent_workers=workers > 0)
    t0 = None
    for k, (a, b) in enumerate(loader):
        if k == 2:  # the first two batches start the workers and autotune: left out
            sync(dev)
            t0 = time.perf_counter()
        x1, x2 = (((v.to(dev, non_blocking=True).float() / 255 - mean) / std).contiguous(memory_format=fmt)
                  for v in (a, b))
        step(x1, x2)
    sync(dev)
    return batch * (k - 1) / (time.perf_counter() - t0)


def directpred_share(dev, batch, step_ms):
    """DirectPred's per-step work (statistics update + eigh + writing Wp) in ms, and as a share of a step."""
    dp = DirectPred(128).to(dev)
    w = torch.zeros(128, 128, device=dev)
    f = torch.randn(2 * batch, 128, device=dev)

    def one():
        dp.update(f)
        dp.set_predictor(w)
    ms = median_ms(one, dev, n=20)
    return ms, ms / step_ms


def views(cfg, dev, fmt):
    """views(k): both augmented views of one fixed batch of random images of the run's dataset shape, as train.py's
    loop makes them at step k (train.augment, its preset and crop scale)."""
    C, H = T.DATASETS[cfg["dataset"]].shape
    size = cfg["img_size"] or H
    x = torch.randint(0, 256, (cfg["batch_size"], C, H, H), dtype=torch.uint8, device=dev)
    mean, std = T.normalisation(cfg["dataset"], dev)
    aug = T.aug_of(cfg)  # train.py's own: the preset and --jitter, as the run
    gen = torch.Generator(device=dev)

    def make(k):
        gen.manual_seed(k)
        return [T.augment(x, aug, v, gen, size, (cfg["crop_min"], 1.0), mean, std).contiguous(memory_format=fmt)
                for v in (0, 1)]
    return make


def step_img_s(flags, dev, steps, wait=False):
    """img/s of the real step (views + train.train_step) of the run `flags` describes, over `steps` steps after 2
    warm-up steps. wait: print 'ready' after the warm-up and start when a line arrives on stdin."""
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
    """This device's fp32 matmul rate in GFLOP/s: the fastest of `reps` n x n products at each size, the best size
    (after a warm-up). The roof that a step's convolutions and matmuls are held against."""
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
    """The real step of the run `flags` describes against this device's fp32 matmul rate: its FLOPs (counted by
    torch.utils.flop_counter on one step: convolutions and matmuls of the online forward + backward and the target
    forward), its img/s, the GFLOP/s it achieves and their share of the matmul rate, measured side by side."""
    from torch.utils.flop_counter import FlopCounterMode
    step, cfg, _, fmt = real_step(flags, dev)
    with FlopCounterMode(display=False) as counter:
        step(*views(cfg, dev, fmt)(0))
    flops, peak = counter.get_total_flops(), matmul_gflops(dev)
    img_s = step_img_s(flags, dev, steps)
    achieved = flops * img_s / cfg["batch_size"] / 1e9
    print(f"torch {torch.__version__}, {dev}, {torch.get_num_threads()} threads, fp32 matmul {peak:.0f} GFLOP/s; "
          f"the step: {flops / 1e9:.2f} GFLOP per batch of {cfg['batch_size']}, {img_s:.0f} img/s = {achieved:.0f} "
          f"GFLOP/s, {100 * achieved / peak:.0f}% of the matmul rate", flush=True)


CATEGORIES = [  # (kind of op, substrings of the aten op names it holds); the first match wins
    ("convolutions", ("conv",)), ("BatchNorm", ("batch_norm",)), ("matmul (projector, predictor, F)", ("mm", "einsum",
     "linear")), ("eigh", ("linalg",)), ("pooling", ("pool",)), ("augmentation sampling", ("grid_sampler", "affine_grid")),
]
SECTIONS = ("augment", "online forward", "target forward", "directpred statistics", "backward", "directpred set Wp",
            "ema")  # the record_function labels of train.train_step and train.ssl_loss (and the views here)


def profile_suite(args):
    """Where one training step's time goes (the README main job's network at each --widths, batch 128, this device):
    wall ms per step without the profiler, then under torch.profiler the sections of train.train_step and ssl_loss
    (their record_function labels), the aten ops by kind, and what is left (Python, autograd, the profiler)."""
    from torch.profiler import ProfilerActivity, profile, record_function
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, bf16 instructions: "
          f"{plumbing.cpu_has_bf16()}; {args.steps} steps per measurement")
    other = "other aten ops (elementwise, copies, allocation)"
    for width in args.widths:
        step, cfg, _, fmt = real_step(MAIN_JOB + ["--width", str(width)] + args.extra.split(), args.device)
        make = views(cfg, args.device, fmt)

        def one(k):
            with record_function("augment"):
                x1, x2 = make(k)
            return step(x1, x2)
        for k in range(3):
            loss, z1, z2 = one(k)
        wall = median_ms(lambda: [one(k) for k in range(args.steps)], args.device, n=3) / args.steps
        stats = T.feature_stats(None, torch.cat([z1, z2]))
        Wp = torch.zeros(cfg["proj_dim"], cfg["proj_dim"], device=args.device)
        diag = median_ms(lambda: T.diagnostics(stats, Wp, z1.detach()), args.device)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda")
                                                          else [])) as prof:
            for k in range(args.steps):
                one(k)
            sync(args.device)
        events = prof.key_averages()
        per_step = lambda us: us / 1000 / args.steps
        sec = {e.key: per_step(e.cpu_time_total) for e in events
               if e.key in SECTIONS or e.key.startswith(("Optimizer.step", "Optimizer.zero_grad"))}
        cats = dict.fromkeys([n for n, _ in CATEGORIES] + [other], 0.0)
        for e in events:
            if e.key.startswith("aten::"):
                cats[next((n for n, keys in CATEGORIES if any(k in e.key for k in keys)), other)] += \
                    per_step(e.self_cpu_time_total)
        in_sections, in_ops = sum(sec.values()), sum(cats.values())
        print(f"\nwidth {width}: {wall:.1f} ms per step ({cfg['batch_size'] * 1000 / wall:.0f} img/s) without the "
              f"profiler; under it (its own overhead included) the sections take {in_sections:.1f} ms:")
        for k, v in sec.items():
            print(f"  {k:34s} {v:7.2f} ms  {100 * v / in_sections:5.1f}%")
        print(f"  {'diagnostics (once per log step)':34s} {diag:7.2f} ms  = {100 * diag / 50 / wall:.2f}% of a step "
              f"at --log-every 50")
        print(f"  aten ops by kind (self time, {in_ops:.1f} ms in all):")
        for k, v in cats.items():
            print(f"    {k:48s} {v:7.2f} ms  {100 * v / in_sections:5.1f}%")
        left = in_sections - in_ops
        print(f"    {'left: Python, autograd, the profiler':48s} {left:7.2f} ms  {100 * left / in_sections:5.1f}%")


def fmnist(dev, data_dir, out, seconds, width, probe_seconds, tiny):
    """Fashion-MNIST, DirectPred, full-width ResNet-18 (CIFAR stem, 28 px) with these knobs (crop-min 0.9,
    lr 0.015 per 128 images, cosine), for the whole epochs that fit in `seconds` at the speed measured on 32 px
    images, then the fast probe of it and of its random init. Returns a dict."""
    batch = 128 if tiny else 512
    rec = train_loop(dev, batch, 4 if tiny else 40, extra=["--width", str(width)])
    steps_per_epoch = 60000 // batch
    budget_steps = int((seconds - probe_seconds - 30) * rec["img_per_s"] / batch)
    epochs = max(1, budget_steps // steps_per_epoch)
    cmd = [sys.executable, os.path.join(HERE, "train.py"), "--dataset", "fashion-mnist", "--data-dir", data_dir,
           "--width", str(width), "--stem", "cifar", "--batch-size", str(batch), "--lr", str(0.015 * batch / 128),
           "--lr-schedule", "cosine", "--crop-min", "0.9", "--epochs", str(epochs), "--log-every", "50", "--log-early", "0",
           "--device", dev.split(":")[0], "--out-dir", os.path.join(out, "fmnist")]
    if tiny:
        cmd += ["--max-steps", "4"]
    t = time.time()
    run_child(cmd, child_env(dev))
    res = dict(epochs=epochs, batch=batch, width=width, train_seconds=round(time.time() - t, 1),
               command=" ".join(cmd[1:]))
    log = [json.loads(line) for line in open(os.path.join(out, "fmnist", "log.jsonl"))]
    res["img_per_s"] = float(np.median([x["img_per_s"] for x in log[1:]] or [log[-1]["img_per_s"]]))
    for base in ("none", "random"):
        ev = os.path.join(out, "fmnist", f"eval_{base}.json")
        run_child([sys.executable, os.path.join(HERE, "eval_linear.py"), "--ckpt",
                   os.path.join(out, "fmnist", "ckpt.pt"), "--baseline", base, "--device", dev.split(":")[0], "--out", ev],
                  child_env(dev))
        e = json.load(open(ev))
        res[base] = dict(linear_top1=e["top1"], knn_top1=e["knn_top1"], seconds=e["seconds"])
    return res


def cuda_tests(dev, out, seconds, per_test=150):
    """test_smoke.py's test_cuda* tests, each in its own pytest process with a timeout (the whole process group is
    killed, its train.py children too), until `seconds` are used. Every test's full output goes to
    OUT/cuda_tests.txt. Returns {test id: pytest's summary line, or timeout, or not run (no time left)}."""
    env = child_env(dev)
    ids = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-k", "test_cuda", "test_smoke.py"],
                         capture_output=True, text=True, cwd=HERE, env=env).stdout.split()
    got, t0 = {}, time.time()
    for i in [i for i in ids if "::test_cuda" in i]:
        left = seconds - (time.time() - t0)
        if left < 20:
            got[i] = "not run (no time left)"
            continue
        with tempfile.TemporaryFile("w+") as fh:
            p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rs", i], stdout=fh, stderr=subprocess.STDOUT,
                                 cwd=HERE, env=env, start_new_session=True)
            try:
                p.wait(timeout=min(per_test, left - 10))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            fh.seek(0)
            text = fh.read()
        got[i] = (text.strip().splitlines() or ["no output"])[-1] if p.returncode != -signal.SIGKILL else "timeout"
        with open(os.path.join(out, "cuda_tests.txt"), "a") as log:
            log.write(f"===== {i}: {got[i]}\n{text}\n")
    return got


def gpu_suite(args):
    """The prepared GPU run, in order of value, each step only if its estimated cost fits in the time left (the
    estimate and what it took are both recorded): the eager training loop at each batch size; the peer pipeline at
    the same batches (the ratio is the point); augmentation and DirectPred's share of a step; one compiled batch
    size; Fashion-MNIST at full width; the CUDA tests last."""
    dev, t_start = args.device, time.time()
    left = lambda: args.budget - (time.time() - t_start)
    name = torch.cuda.get_device_name(int(dev.split(":")[1]) if ":" in dev else 0) if dev.startswith("cuda") else "cpu"
    res = dict(torch=torch.__version__, device=name, budget_s=args.budget, tiny=args.tiny, ran=[])
    os.makedirs(args.out, exist_ok=True)

    def save():
        res["seconds"] = round(time.time() - t_start, 1)
        with open(os.path.join(args.out, "bench.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        with open(os.path.join(args.out, "bench.md"), "w") as fh:
            fh.write(markdown(res))

    def step(name, need_s, fn):
        if left() < need_s:
            res.setdefault("skipped", []).append(f"{name} (needs ~{need_s} s, {left():.0f} s left)")
            print(f"[{time.time() - t_start:5.0f} s] {name}: skipped, needs ~{need_s} s, {left():.0f} s left", flush=True)
            return
        t = time.time()
        try:
            res[name] = fn()
        except Exception as e:  # a failure is a result too: recorded, the next step runs
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        res["ran"].append(f"{name} (estimated {need_s} s, took {time.time() - t:.0f} s)")
        print(f"[{time.time() - t_start:5.0f} s] {name} (estimated {need_s} s, took {time.time() - t:.0f} s): "
              f"{json.dumps(res[name])[:300]}", flush=True)
        save()

    sizes = (16, 32) if args.tiny else (128, 256, 512)
    steps, width = (4, 8) if args.tiny else (200, 64)  # 200 steps: img/s over the last 100 (G: 15 were noise)
    workers = min(16, os.cpu_count() or 1) if not args.tiny else 1
    missing = plumbing.fmnist_missing(args.data_dir)
    if missing:  # said now, before any step: the Fashion-MNIST step will be skipped, never a download attempt
        res["fmnist"] = {"skipped": f"--data-dir {args.data_dir}: no {', '.join(missing)} (.gz) under "
                                    f"{os.path.join(args.data_dir, 'FashionMNIST', 'raw')} nor {plumbing.FMNIST_SYSTEM_DIR}; "
                                    f"copy the four files there and let that folder travel with the run"}
        print(f"note: Fashion-MNIST step skipped: {res['fmnist']['skipped']}", flush=True)
    cost = lambda gpu, rehearsal: rehearsal if args.tiny else gpu  # estimated seconds (the rehearsal's on 2 cores)
    for b in sizes:
        step(f"train_b{b}_c0", cost(25, 10), lambda b=b: loop_result(dev, b, steps, 0, width))
    for b in sizes:
        step(f"peer_b{b}", cost(30, 5), lambda b=b: dict(batch=b, workers=workers,
                                                          img_per_s=peer_loop(dev, b, steps // 2, workers, width)))
    step("augment", cost(10, 5), lambda: {f"b{b}_ms": augment_ms(dev, b) for b in sizes})
    big = f"train_b{sizes[-1]}_c0"
    if big in res and "img_per_s" in res[big]:
        step_ms = 1000 * sizes[-1] / res[big]["img_per_s"]
        step("directpred", cost(10, 5), lambda: dict(zip(("ms", "share_of_step"),
                                                         directpred_share(dev, sizes[-1], step_ms))))
    step(f"train_b{sizes[-1]}_c1", cost(120, 120), lambda: loop_result(dev, sizes[-1], steps, 1, width))
    if not missing:  # the epochs that fit in what is left after the tests' share
        step("fmnist", cost(150, 150), lambda: fmnist(dev, args.data_dir, args.out, left() - cost(60, 50), width,
                                                       120 if dev.startswith("cpu") else 40, args.tiny))
    step("cuda_tests", cost(60, 50), lambda: cuda_tests(dev, args.out, left() - 5))
    save()
    print(markdown(res))


def loop_result(dev, b, steps, compile_, width):
    """One row of the GPU table: train.py's loop at batch b."""
    rec = train_loop(dev, b, steps, compile_, ["--width", str(width)])
    return dict(batch=b, compile=compile_, img_per_s=rec["img_per_s"], mem_gb=rec.get("mem_gb"),
                epoch_50k_s=50000 / rec["img_per_s"])


def markdown(res):
    """The README's GPU table from the suite's results."""
    lines = [f"torch {res['torch']}, {res['device']}, {res.get('seconds', 0)} s of a {res['budget_s']} s budget",
             "", "| batch | compile | ours img/s | DataLoader + torchvision img/s | ratio | peak GB | 50k-image epoch (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in res.items():
        if k.startswith("train_b") and "img_per_s" in v:
            peer = res.get(f"peer_b{v['batch']}", {}).get("img_per_s")
            ratio = f"{v['img_per_s'] / peer:.1f}x" if peer else ""
            lines.append(f"| {v['batch']} | {v['compile']} | {v['img_per_s']:.0f} | {peer or 0:.0f} | {ratio} | "
                         f"{v['mem_gb'] or 0:.2f} | {v['epoch_50k_s']:.1f} |")
    for k in ("augment", "directpred", "fmnist", "cuda_tests"):
        if k in res:
            lines.append(f"\n{k}: {json.dumps(res[k])}")
    lines.append(f"\nran (estimated / took): {res['ran']}")
    if "skipped" in res:
        lines.append(f"\nskipped: {res['skipped']}")
    return "\n".join(lines) + "\n"


def precision_suite(args):
    """fp32 / bf16 autocast / channels_last / both on the main job's network at width 32 (ResNet-18, ImageNet stem,
    28 px, 1 channel, batch 128: the width paper/results/speed/ab.md measured), 3 runs of each interleaved; then
    DirectPred's Wp under bf16 against fp32."""
    main = MAIN_JOB + ["--width", "32", "--data-dir", args.data_dir]
    modes = {"fp32": ("0", "0"), "bf16": ("1", "0"), "channels_last": ("0", "1"), "both": ("1", "1")}
    got = {m: [] for m in modes}
    for _ in range(3):
        for m, (bf16, cl) in modes.items():
            rec = train_loop(args.device, 128, args.steps, extra=main + ["--bf16", bf16, "--channels-last", cl])
            got[m].append(round(rec["img_per_s"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 instructions: {plumbing.cpu_has_bf16()}")
    for m, v in got.items():
        print(f"{m:14s} img/s {v}")
    # Wp from one batch's predictor inputs: the network in bf16 autocast against the same network in fp32
    x, _ = plumbing.load_dataset("fashion-mnist", args.data_dir, "train")
    mean, std = T.normalisation("fashion-mnist", "cpu")
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
    view = lambda b: T.augment(x[b * 256:(b + 1) * 256], T.AUG["cifar"], 0, gen, 28, (0.9, 1.0), mean, std)
    with torch.no_grad():
        for b in range(3):
            xb = view(b)
            z32 = model.projector(model.backbone(xb))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z16 = model.projector(model.backbone(xb))
            W32 = wp(z32)
            rel = lambda W: ((W - W32).norm() / W32.norm()).item()
            other = wp(model.projector(model.backbone(view(b + 3))))
            print(f"batch {b}: Wp relative error, network in bf16: {rel(wp(z16)):.2e}; fp32 network, its output "
                  f"rounded to bf16: {rel(wp(z32.bfloat16())):.2e}; the next batch in fp32 (batch-to-batch change): "
                  f"{rel(other):.2e}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="default", choices=["default", "profile", "step", "roofline", "precision", "gpu"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256, help="default suite")
    p.add_argument("--steps", type=int, default=6, help="train steps; img/s is measured over the second half")
    p.add_argument("--compile", type=int, default=0, help="default suite")
    p.add_argument("--extra", default="", help="default suite: more train.py flags, as one string")
    p.add_argument("--out", default="out/bench", help="gpu suite: where bench.json and bench.md go")
    p.add_argument("--budget", type=float, default=540, help="gpu suite: seconds it may take in all")
    p.add_argument("--tiny", action="store_true", help="gpu suite: tiny sizes (a CPU rehearsal of every step)")
    p.add_argument("--data-dir", default="data", help="Fashion-MNIST's --data-dir (precision and gpu suites)")
    p.add_argument("--ckpt", default="", help="precision suite: a main-job checkpoint for the Wp measurement")
    p.add_argument("--widths", default="16,32", help="profile suite: the main job's network at these --width")
    p.add_argument("--train-flags", default=" ".join(MAIN_JOB), help="step / roofline suites: the run whose step is "
                   "timed")
    p.add_argument("--wait", action="store_true", help="step suite: say 'ready' after the warm-up, start on a line "
                   "of stdin (reproduce.py --jobs auto times several side by side)")
    args = p.parse_args()
    args.widths = [int(w) for w in args.widths.split(",")]
    if args.suite == "profile":
        profile_suite(args)
    elif args.suite == "step":
        print(f"img/s {step_img_s(args.train_flags.split(), args.device, args.steps, args.wait):.1f}", flush=True)
    elif args.suite == "roofline":
        roofline(args.train_flags.split(), args.device, args.steps)
    elif args.suite == "gpu":
        gpu_suite(args)
    elif args.suite == "precision":
        precision_suite(args)
    else:
        ms = augment_ms(args.device, args.batch_size)
        print(f"augment: batch {args.batch_size}, 2 views, 32 px: {ms:.1f} ms "
              f"({args.batch_size / ms * 1000:.0f} img/s), {args.device}")
        rec = train_loop(args.device, args.batch_size, args.steps, args.compile, args.extra.split())
        print(f"train: {rec['img_per_s']:.1f} img/s over the last {args.steps // 2} steps (resnet18 cifar stem unless "
              f"--extra says otherwise, batch {args.batch_size}, both views + target forward, {args.device})")
        if "mem_gb" in rec:
            print(f"train: peak GPU memory {rec['mem_gb']:.2f} GB")
