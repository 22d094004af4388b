"""
Speed benchmark: prints numbers, asserts nothing.

    python bench.py                       # CPU or GPU, ResNet-18 CIFAR stem, batch 256
    python bench.py --batch-size 512 --compile 1 --extra "--arch resnet50"

1. augmentation: time to make both views of one batch on the device (train.augment, the cifar preset);
2. training: img/s of the real train.py loop (subprocess on --dataset fake, 32 px images), read from its
   log.jsonl after the first log interval so that start-up and cudnn autotuning are left out.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

import train as T

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--batch-size", type=int, default=256)
p.add_argument("--steps", type=int, default=6, help="train steps; img/s is measured over the second half")
p.add_argument("--predictor", default="direct")
p.add_argument("--compile", type=int, default=0)
p.add_argument("--extra", default="", help="more train.py flags, as one string")
args = p.parse_args()
dev = args.device

# --- augmentation of one batch, both views
x = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8, device=dev)
mean, std = (torch.tensor(v, device=dev)[:, None, None] for v in T.DATASETS["cifar10"][2:4])
gen = torch.Generator(device=dev).manual_seed(0)
times = []
for i in range(6):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for view in (0, 1):
        T.augment(x, T.AUG["cifar"], view, gen, 32, (0.08, 1.0), mean, std)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
aug_ms = 1000 * sorted(times[1:])[len(times[1:]) // 2]  # median, first call left out
print(f"augment: batch {args.batch_size}, 2 views, 32 px: {aug_ms:.1f} ms ({args.batch_size / aug_ms * 1000:.0f} img/s), {dev}")

# --- the real training loop
with tempfile.TemporaryDirectory() as out:
    half = max(1, args.steps // 2)
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"), "--dataset", "fake",
           "--fake-size", str(args.batch_size * args.steps), "--batch-size", str(args.batch_size),
           "--max-steps", str(2 * half), "--log-every", str(half), "--predictor", args.predictor,
           "--device", dev.split(":")[0], "--compile", str(args.compile), "--out-dir", out, *args.extra.split()]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rec = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))][-1]
    print(f"train: {rec['img_per_s']:.1f} img/s over steps {half}-{2 * half} (resnet18 cifar stem unless --extra says "
          f"otherwise, predictor {args.predictor}, batch {args.batch_size}, both views + target forward, {dev})")
    if "mem_gb" in rec:
        print(f"train: peak GPU memory {rec['mem_gb']:.2f} GB")
