"""
The prepared GPU run: train.py's speed, its ratio to a DataLoader + torchvision pipeline, Fashion-MNIST at full
width and the CUDA tests, within a time budget (a lent GPU machine gives minutes, start-up included).

    python -m paper.gpu --out DIR --data-dir DATA                   # on the GPU: ends within --budget (540 s)
    python -m paper.gpu --out DIR --data-dir DATA --device cpu --tiny   # its rehearsal on a CPU: every step, tiny sizes

In order of value, each step only if its estimated cost fits in the time left (bench.json records the estimate
beside what it took, and what was skipped and why): train.py's real loop (32 px images, ResNet-18 with the CIFAR
stem, DirectPred) at batch 128 / 256 / 512, img/s over the last 100 of 200 steps, peak memory, the time of a
50k-image epoch; the same step fed by the pipeline lightly and solo-learn use on CIFAR (torchvision transforms on PIL
images in DataLoader workers, uint8 to float on the GPU), and the ratio; augmentation ms per batch and DirectPred's
update + eigh as a share of a step; the loop at batch 512 with --compile 1; Fashion-MNIST with a full-width
ResNet-18 for the epochs the budget leaves, probed (fast probe + kNN) beside its random init; the CUDA tests of
test_smoke.py last, each with a timeout, their full output in DIR/cuda_tests.txt. The Fashion-MNIST files are
looked for before anything starts (under --data-dir/FashionMNIST/raw or the Debian package's folder; a device
machine has no network, so nothing is downloaded): without them that step is skipped, said in one line. Everything
goes to DIR/bench.json and DIR/bench.md. The timing helpers and the real step are bench.py's.
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

from bench import augment_ms, child_env, median_ms, real_step, run_child, sync, train_loop
from data import FMNIST_SYSTEM_DIR, fmnist_missing, normalisation
from directpred import DirectPred

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py, test_smoke.py


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
    """img/s of the same step (train.train_step: model, heads, loss, DirectPred, EMA) fed by PeerDataset through a
    DataLoader (uint8 -> float and normalisation on the device, bf16 autocast and channels_last where train.py would
    use them)."""
    step, cfg, ctx, fmt = real_step(["--dataset", "cifar10", "--batch-size", str(batch), "--width", str(width)], dev)
    mean, std = normalisation("cifar10", dev)
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


def fmnist(dev, data_dir, out, seconds, width, probe_seconds, tiny):
    """Fashion-MNIST, DirectPred, full-width ResNet-18 (CIFAR stem, 28 px) with these knobs (crop-min 0.9,
    lr 0.015 per 128 images, cosine), for the whole epochs that fit in `seconds` at the speed measured on 32 px
    images, then the fast probe of it and of its random init. Returns a dict."""
    batch = 128 if tiny else 512
    rec = train_loop(dev, batch, 4 if tiny else 40, extra=["--width", str(width)])
    steps_per_epoch = 60000 // batch
    budget_steps = int((seconds - probe_seconds - 30) * rec["img_per_s"] / batch)
    epochs = max(1, budget_steps // steps_per_epoch)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", "fashion-mnist", "--data-dir", data_dir,
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
        run_child([sys.executable, os.path.join(ROOT, "eval_linear.py"), "--ckpt",
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
                         capture_output=True, text=True, cwd=ROOT, env=env).stdout.split()
    got, t0 = {}, time.time()
    for i in [i for i in ids if "::test_cuda" in i]:
        left = seconds - (time.time() - t0)
        if left < 20:
            got[i] = "not run (no time left)"
            continue
        with tempfile.TemporaryFile("w+") as fh:
            p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rs", i], stdout=fh, stderr=subprocess.STDOUT,
                                 cwd=ROOT, env=env, start_new_session=True)
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
    missing = fmnist_missing(args.data_dir)
    if missing:  # said now, before any step: the Fashion-MNIST step will be skipped, never a download attempt
        res["fmnist"] = {"skipped": f"--data-dir {args.data_dir}: no {', '.join(missing)} (.gz) under "
                                    f"{os.path.join(args.data_dir, 'FashionMNIST', 'raw')} nor {FMNIST_SYSTEM_DIR}; "
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


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/gpu", help="where bench.json, bench.md and cuda_tests.txt go")
    p.add_argument("--data-dir", default="data", help="a folder with FashionMNIST/raw/*-ubyte.gz")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget", type=float, default=540, help="seconds it may take in all")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU rehearsal of every step)")
    gpu_suite(p.parse_args())
