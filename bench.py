"""
Speed benchmarks. They print numbers (and write them with --out); they assert nothing.

    python bench.py                                   # this device: augmentation + the real training loop
    python bench.py --suite precision                 # fp32 / bf16 / channels_last / both (3 interleaved runs),
                                                      # and how far bf16 moves DirectPred's Wp
    python bench.py --suite gpu --out DIR             # the prepared GPU run: ends within --budget (540 s)
    python bench.py --suite gpu --out DIR --device cpu --tiny    # its rehearsal on a CPU: every step, tiny sizes

--suite gpu, in order, each step only if the time left allows it (its JSON says which ran): the CUDA tests of
test_smoke.py; the real training loop (train.py on 32 px images, ResNet-18 with the CIFAR stem, DirectPred) at batch
128 / 256 / 512 with --compile 0 / 1: img/s, peak memory, the time of a 50k-image epoch; the same model and heads fed
by the pipeline lightly and solo-learn use on CIFAR (torchvision transforms on PIL images in DataLoader workers, uint8
to float on the GPU, bf16 autocast), and the ratio; augmentation ms per batch and DirectPred's update + eigh as a
share of a step; then Fashion-MNIST with a full-width ResNet-18 for the epochs the budget leaves, probed (fast
probe + kNN) beside its random init. Everything goes to DIR/bench.json and DIR/bench.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import PIL.Image
import torch
import torchvision.transforms as TV

import train as T
from directpred import DirectPred

HERE = os.path.dirname(os.path.abspath(__file__))


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
    mean, std = (torch.tensor(v, device=dev)[:, None, None] for v in T.DATASETS["cifar10"][2:4])
    gen = torch.Generator(device=dev).manual_seed(0)
    return median_ms(lambda: [T.augment(x, T.AUG["cifar"], v, gen, 32, (0.08, 1.0), mean, std) for v in (0, 1)], dev)


def run_child(cmd, env=None):
    """Run a child script; a failure raises with the child's last stderr lines (not a bare CalledProcessError)."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{os.path.basename(cmd[1])} failed: {' | '.join(r.stderr.strip().splitlines()[-3:])}")


def train_loop(dev, batch, steps, compile_=0, extra=(), env=None):
    """img/s of the real train.py loop on --dataset fake (32 px), read from its last log interval (the start-up,
    compilation and cudnn autotuning are in the first one). Returns the last log record. A failure raises with the
    child's last stderr lines."""
    with tempfile.TemporaryDirectory() as out:
        half = max(1, steps // 2)
        cmd = [sys.executable, os.path.join(HERE, "train.py"), "--dataset", "fake", "--fake-size", str(batch * steps),
               "--batch-size", str(batch), "--max-steps", str(2 * half), "--log-every", str(half), "--ckpt-every",
               str(10 ** 9), "--device", dev.split(":")[0], "--compile", str(compile_), "--out-dir", out, *extra]
        env = dict(os.environ, **(env or {}), **({"CUDA_VISIBLE_DEVICES": dev.split(":")[1]} if ":" in dev else {}))
        run_child(cmd, env)
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


def peer_loop(dev, batch, steps, workers, width=64):
    """img/s of the same model, heads, loss, EMA and DirectPred fed by PeerDataset through a DataLoader (uint8 ->
    float and normalisation on the device, bf16 autocast and channels_last where train.py would use them)."""
    cfg = T.parse_config(["--dataset", "cifar10", "--batch-size", str(batch), "--width", str(width)])
    model = T.build_model(cfg, 3).to(dev)
    target = T.build_target(model, cfg, 3)
    ctx, fmt = T.speed_paths(dev.split(":")[0], width=width)
    model, target = model.to(memory_format=fmt), target.to(memory_format=fmt)
    opt = T.build_optimizer(model, cfg)
    dp = DirectPred(cfg["proj_dim"]).to(dev)
    mean, std = (torch.tensor(v, device=dev)[:, None, None] for v in T.DATASETS["cifar10"][2:4])
    online_p = [p for n, p in model.named_parameters() if not n.startswith("predictor.")]
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
        with ctx:
            loss, z1, z2, _, _ = T.ssl_loss(model, target, x1, x2, cfg)
        dp.update(torch.cat([z1, z2]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dp.set_predictor(model.predictor.weight)
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), online_p, 0.004)
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


def fmnist(dev, data_dir, out, seconds, width, probe_seconds, tiny):
    """Fashion-MNIST, DirectPred, full-width ResNet-18 (CIFAR stem, 28 px) with the main job's knobs (crop-min 0.9,
    lr 0.015 per 128 images, cosine), for the whole epochs that fit in `seconds` at the speed measured on 32 px
    images, then the fast probe of it and of its random init. Returns a dict."""
    batch = 128 if tiny else 512
    rec = train_loop(dev, batch, 4 if tiny else 20, extra=["--width", str(width)])
    steps_per_epoch = 60000 // batch
    budget_steps = int((seconds - probe_seconds - 30) * rec["img_per_s"] / batch)
    epochs = max(1, budget_steps // steps_per_epoch)
    cmd = [sys.executable, os.path.join(HERE, "train.py"), "--dataset", "fashion-mnist", "--data-dir", data_dir,
           "--width", str(width), "--stem", "cifar", "--batch-size", str(batch), "--lr", str(0.015 * batch / 128),
           "--lr-schedule", "cosine", "--crop-min", "0.9", "--epochs", str(epochs), "--log-every", "50",
           "--device", dev.split(":")[0], "--out-dir", os.path.join(out, "fmnist")]
    if tiny:
        cmd += ["--max-steps", "4"]
    t = time.time()
    run_child(cmd)
    res = dict(epochs=epochs, batch=batch, width=width, train_seconds=round(time.time() - t, 1),
               command=" ".join(cmd[1:]))
    log = [json.loads(line) for line in open(os.path.join(out, "fmnist", "log.jsonl"))]
    res["img_per_s"] = float(np.median([x["img_per_s"] for x in log[1:]] or [log[-1]["img_per_s"]]))
    for base in ("none", "random"):
        ev = os.path.join(out, "fmnist", f"eval_{base}.json")
        run_child([sys.executable, os.path.join(HERE, "eval_linear.py"), "--ckpt",
                   os.path.join(out, "fmnist", "ckpt.pt"), "--baseline", base, "--device", dev.split(":")[0], "--out", ev])
        e = json.load(open(ev))
        res[base] = dict(linear_top1=e["top1"], knn_top1=e["knn_top1"], seconds=e["seconds"])
    return res


def gpu_suite(args):
    dev, t_start = args.device, time.time()
    left = lambda: args.budget - (time.time() - t_start)
    res = dict(torch=torch.__version__, device=torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
               budget_s=args.budget, tiny=args.tiny, ran=[])
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
            return
        t = time.time()
        try:
            res[name] = fn()
        except Exception as e:  # a failure is a result too: recorded, the next step runs
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        res["ran"].append(f"{name} ({time.time() - t:.0f} s)")
        print(f"[{time.time() - t_start:5.0f} s] {name}: {json.dumps(res[name])[:300]}", flush=True)
        save()

    def tests():
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", os.path.join(HERE, "test_smoke.py")],
                           capture_output=True, text=True, timeout=max(30, int(left()) - 30), cwd=HERE)
        return dict(returncode=r.returncode, tail=r.stdout.strip().splitlines()[-12:])

    sizes = (16, 32) if args.tiny else (128, 256, 512)
    steps, width = (4, 8) if args.tiny else (30, 64)
    workers = min(16, os.cpu_count() or 1) if not args.tiny else 1
    step("cuda_tests", 60, tests)
    for compile_ in (0, 1):
        for b in sizes:
            def loop(b=b, compile_=compile_):
                rec = train_loop(dev, b, steps, compile_, ["--width", str(width)])
                return dict(batch=b, compile=compile_, img_per_s=rec["img_per_s"], mem_gb=rec.get("mem_gb"),
                            epoch_50k_s=50000 / rec["img_per_s"])
            step(f"train_b{b}_c{compile_}", 25 if not compile_ else 90, loop)
    for b in sizes:
        step(f"peer_b{b}", 30, lambda b=b: dict(batch=b, workers=workers,
                                                img_per_s=peer_loop(dev, b, steps, workers, width)))
    step("augment", 10, lambda: {f"b{b}_ms": augment_ms(dev, b) for b in sizes})
    big = f"train_b{sizes[-1]}_c0"
    if big in res and "img_per_s" in res[big]:
        step_ms = 1000 * sizes[-1] / res[big]["img_per_s"]
        step("directpred", 10, lambda: dict(zip(("ms", "share_of_step"), directpred_share(dev, sizes[-1], step_ms))))
    step("fmnist", 120, lambda: fmnist(dev, args.data_dir, args.out, left(), width,
                                       120 if dev.startswith("cpu") else 40, args.tiny))
    save()
    print(markdown(res))


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
    if "skipped" in res:
        lines.append(f"\nskipped: {res['skipped']}")
    return "\n".join(lines) + "\n"


def precision_suite(args):
    """fp32 / bf16 autocast / channels_last / both on the main job's network (width-32 ResNet-18, ImageNet stem,
    28 px, 1 channel, batch 128), 3 runs of each interleaved; then DirectPred's Wp under bf16 against fp32."""
    main = ["--dataset", "fashion-mnist", "--data-dir", args.data_dir, "--width", "32", "--stem", "imagenet",
            "--crop-min", "0.9", "--lr", "0.015", "--lr-schedule", "cosine", "--epochs", "3"]
    modes = {"fp32": ("0", "0"), "bf16": ("1", "0"), "channels_last": ("0", "1"), "both": ("1", "1")}
    got = {m: [] for m in modes}
    for _ in range(3):
        for m, (bf16, cl) in modes.items():
            rec = train_loop(args.device, 128, args.steps, extra=main + ["--bf16", bf16, "--channels-last", cl])
            got[m].append(round(rec["img_per_s"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 instructions: {T.cpu_has_bf16()}")
    for m, v in got.items():
        print(f"{m:14s} img/s {v}")
    # Wp from one batch's predictor inputs: the network in bf16 autocast against the same network in fp32
    x, _ = T.load_dataset("fashion-mnist", args.data_dir, "train")
    mean, std = (torch.tensor(v)[:, None, None] for v in T.DATASETS["fashion-mnist"][2:4])
    cfg = T.parse_config(main)
    model = T.build_model(cfg, 1)
    if args.ckpt:
        model.load_state_dict(T.load_checkpoint(args.ckpt, "--ckpt")["online"])

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
    p.add_argument("--suite", default="default", choices=["default", "precision", "gpu"])
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
    args = p.parse_args()
    if args.suite == "gpu":
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
