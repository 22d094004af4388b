"""
What a training run needs besides the method: reading the datasets' files, one-line errors for bad flags and
files, DDP start-up with a timeout, the precision and memory-format choice, atomic checkpoints, the out-dir lock,
the stop on Ctrl-C / SIGTERM and the divergence guard. train.py, eval_linear.py, theory.py and bench.py import
from here; nothing in this file knows the method (no model, no loss), so it can be read, or skipped, on its own.
Every failure it handles ends in one line on stderr naming the flag or path, never a traceback.
"""
import argparse
import copy
import datetime
import fcntl
import gzip
import json
import math
import os
import pickle
import shutil
import signal
import sys
import time
import zlib
from contextlib import nullcontext

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
import torchvision

# -----------------------------------------------------------------------------
# bad flags: one line


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a malformed flag reported in one line (no usage block) like every other bad input."""

    def error(self, message):
        sys.exit(f"error: {message}")


def range_error(cfg, ranges):
    """The first flag outside its range (or a non-finite float), as one line naming it, or None."""
    for k, (ok, rule) in ranges.items():
        v = cfg[k]
        if isinstance(v, float) and not math.isfinite(v) or not ok(v):
            return f"--{k.replace('_', '-')} must be {rule}{' and finite' if isinstance(v, float) else ''}, got {v}"
    return None


# -----------------------------------------------------------------------------
# dataset files: read into (uint8 images, labels), or an ImageFolder for the streamed sets; missing or damaged files
# stop with one line naming --data-dir and the layout expected there

STREAMED = ("imagenet", "imagefolder")  # too large for memory: decoded and cropped in DataLoader workers
FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
LAYOUTS = {  # what each --dataset expects under --data-dir
    "cifar10": "{d}/cifar-10-batches-py/ with data_batch_1..5 and test_batch (the python pickle version)",
    "cifar100": "{d}/cifar-100-python/ with train and test (the python pickle version)",
    "stl10": "{d}/stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin",
    "fashion-mnist": "{d}/FashionMNIST/raw/ with the four *-ubyte(.gz) files (or: apt-get install "
                     "dataset-fashion-mnist, found in /usr/share/datasets/fashion-mnist)",
    "imagenet": "{d}/train/<class>/*.JPEG and {d}/val/<class>/*.JPEG (val sorted into class folders)",
    "imagefolder": "{d}/train/<class>/<image> and {d}/val/<class>/<image>",
    "fake": "nothing (made in memory)",
}


def load_dataset(name, data_dir, split, fake_size=1024):
    """split: pretrain | train | test. Returns (images uint8 (N, C, H, W), labels long (N,)) for the small
    sets, or a torchvision ImageFolder for the streamed ones. Exits with one line if the files are missing."""
    tv = torchvision.datasets
    train = split != "test"
    try:
        if name == "fake":  # random images, labels 0..9; a different draw for the test split
            g = torch.Generator().manual_seed(1234 + (split == "test"))
            return torch.randint(0, 256, (fake_size, 3, 32, 32), dtype=torch.uint8, generator=g), \
                torch.randint(0, 10, (fake_size,), generator=g)
        if name in STREAMED:
            return tv.ImageFolder(os.path.join(data_dir, "train" if train else "val"), loader=load_image)
        if name in ("cifar10", "cifar100"):  # the python pickle batches, read as torchvision reads them
            base = os.path.join(data_dir, "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
            if not os.path.isdir(base):  # not on disk: let torchvision download it (where it can)
                (tv.CIFAR10 if name == "cifar10" else tv.CIFAR100)(data_dir, download=True)
            files = ([f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]) if name == "cifar10" \
                else (["train"] if train else ["test"])
            batches = [pickle.load(open(os.path.join(base, f), "rb"), encoding="latin1") for f in files]
            x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
            y = np.concatenate([b["labels" if name == "cifar10" else "fine_labels"] for b in batches])
            if len(x) != len(y):
                raise ValueError(f"{len(x)} images but {len(y)} labels in {base}")
            return torch.from_numpy(x), torch.from_numpy(y).long()
        if name == "stl10":  # binary files; pretraining uses train + unlabeled (105k images, as Tian et al.), y = -1
            base = os.path.join(data_dir, "stl10_binary")
            if not os.path.isdir(base):
                tv.STL10(data_dir, download=True)
            parts = {"pretrain": ["train", "unlabeled"], "train": ["train"], "test": ["test"]}[split]
            xs, ys = [], []
            for p in parts:
                x = np.fromfile(os.path.join(base, f"{p}_X.bin"), np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
                y = np.fromfile(os.path.join(base, f"{p}_y.bin"), np.uint8).astype(np.int64) - 1 \
                    if p != "unlabeled" else np.full(len(x), -1)  # labels on disk are 1..10
                xs.append(x)
                ys.append(y)
            x, y = np.concatenate(xs), np.concatenate(ys)
            if len(x) != len(y):
                raise ValueError(f"{len(x)} images but {len(y)} labels in {base}")
            return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        if name == "fashion-mnist":
            raw = os.path.join(data_dir, "FashionMNIST", "raw")
            for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
                gz = next((p for p in (os.path.join(raw, f + ".gz"), os.path.join(FMNIST_SYSTEM_DIR, f + ".gz"))
                           if os.path.exists(p)), None)
                if not os.path.exists(os.path.join(raw, f)) and gz:  # unpack .gz (ours or the Debian package's)
                    os.makedirs(raw, exist_ok=True)
                    # unpacked to a temp file, then renamed: a kill never leaves a partial file behind, and runs that
                    # unpack at once (reproduce.py --jobs on a fresh machine) each rename their own complete copy
                    tmp = os.path.join(raw, f"{f}.{os.getpid()}.tmp")
                    try:
                        with gzip.open(gz) as src, open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    except (OSError, EOFError, zlib.error) as e:
                        os.remove(tmp)
                        sys.exit(f"error: --dataset fashion-mnist: {gz} is not a complete gzip file ({e})")
                    os.replace(tmp, os.path.join(raw, f))
            ds = tv.FashionMNIST(data_dir, train=train, download=not os.path.isdir(raw))
            return ds.data[:, None].contiguous(), ds.targets.long()
    except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError, AssertionError) as e:  # (torchvision
        # checks the MNIST file format with assert)
        layout = LAYOUTS[name].format(d=data_dir)
        sys.exit(f"error: --dataset {name}: no usable data under --data-dir {data_dir!r} ({e}). Expected: {layout}")
    raise ValueError(name)


class BadImage(ValueError):
    """An image file that does not decode. Raised in a DataLoader worker, re-raised in the main process."""


def load_image(path):
    """ImageFolder's loader, decoding in full here so that a corrupt or truncated file is named."""
    try:
        with open(path, "rb") as fh:
            return PIL.Image.open(fh).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"cannot decode image {path} ({e})") from None


def image_batches(loader):
    """Iterate a DataLoader over an ImageFolder; a file that does not decode stops the run with one line naming it."""
    try:
        yield from loader
    except BadImage as e:  # from a worker it comes wrapped in the worker's traceback, whose last line is ours
        sys.exit(f"error: --data-dir: {str(e).strip().splitlines()[-1].split('BadImage: ', 1)[-1]}")


# -----------------------------------------------------------------------------
# DDP start-up, precision and memory format


def init_distributed(device, timeout=600):
    """torchrun sets RANK / LOCAL_RANK / WORLD_SIZE: join the process group (nccl on CUDA, gloo on CPU) and pick
    this rank's device. device: auto | cpu | cuda. timeout: seconds a collective waits for a stalled rank; past it
    the collective fails and the job stops with one line naming this rank (not a traceback, never a hang).
    Returns (ddp, rank, local_rank, world_size, device)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device is available here (use --device cpu or auto)")
    if int(os.environ.get("RANK", -1)) == -1:  # a plain `python` launch
        return False, 0, 0, 1, device
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":  # this rank's GPU first, and named to the process group (else barrier() guesses one)
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                            timeout=datetime.timedelta(seconds=timeout),
                            device_id=torch.device(device) if device.startswith("cuda") else None)

    def one_line(kind, exc, tb):  # a failed collective: the other ranks stalled or died
        text = str(exc)  # gloo's timeouts reach Python as a plain RuntimeError from the DDP reducer
        if not (isinstance(exc, dist.DistError) or isinstance(exc, RuntimeError) and (
                "gloo" in text or "NCCL" in text or "timed out" in text.lower())):
            return sys.__excepthook__(kind, exc, tb)
        print(f"error: rank {rank}: a DDP collective failed after waiting up to {timeout:g} s (--ddp-timeout): another "
              f"rank stalled or died ({str(exc).strip().splitlines()[0][:160]})", file=sys.stderr, flush=True)
        os._exit(1)  # no atexit handlers: tearing down a broken process group can hang
    sys.excepthook = one_line
    return True, rank, local_rank, world_size, device


def end_distributed():
    """The last line of a torchrun job, on every rank once its work is written: leave the process group, then exit 0
    at once. gloo's worker threads can outlive destroy_process_group, and at random (about 1 run in 40 on 2 CPU
    cores, torch 2.14) the interpreter's teardown then aborts a rank that has finished ("terminate called without
    an active exception", exit -6), so torchrun reports a completed run as failed; os._exit skips that teardown.
    Callers close their own files first (nothing else is lost: stdout/stderr are flushed here)."""
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cpu_has_bf16():
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX; read from Linux's /proc/cpuinfo). With them bf16
    autocast is faster than fp32; without them oneDNN emulates bf16 and it is slower."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def speed_paths(device_type, bf16="auto", channels_last="auto", deterministic=0, width=64):
    """--bf16 / --channels-last ('auto': on where measured faster, docs/reference.md, Speed) and --deterministic for this
    device. width: the network's --width. Returns (ctx: bf16 autocast or a null context, fmt: the memory format of the
    networks and their inputs)."""
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic  # autotuning picks kernels by timing: not repeatable
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9 (its legacy allow_tf32 warns)
            torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = \
                "ieee" if deterministic else "tf32"
        else:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable GEMMs
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns
    if bf16 == "auto":  # CUDA: native bf16 only (emulated on pre-Ampere GPUs, slower); a CPU: fp32 here, and
        # train.py turns bf16 on where bf16_if_faster measures it faster for the run's network
        bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if channels_last == "auto":  # CPU: 1.6x faster for the main job, but oneDNN's 1x1 stride-2 weight gradient in
        # channels_last hangs or errs when the conv has fewer input channels than its kernel's block (8 on AVX2;
        # github.com/uxlfoundation/oneDNN/issues/6035): our downsample convs see --width channels and more
        channels_last = device_type == "cuda" or width >= 16
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if int(bf16) else nullcontext()
    return ctx, torch.channels_last if int(channels_last) else torch.contiguous_format


def bf16_if_faster(online, target, loss_fn, x, n=3):
    """--bf16 auto on a CPU with bf16 instructions: whether bf16 autocast is faster than fp32 for this run's networks
    (bf16 instructions do not make every network faster: at small widths the convolutions can lose). Times n forward +
    backward passes, loss_fn(online, target, x) -> loss, of copies of online and target (the run's weights and BN
    statistics are left untouched) on the batch x in each precision, interleaved, after one warm-up each. Returns
    (use bf16?, one line with the numbers)."""
    online, target = copy.deepcopy(online), copy.deepcopy(target)
    ctxs = {"fp32": nullcontext(), "bf16": torch.autocast(x.device.type, dtype=torch.bfloat16)}
    ms = {k: [] for k in ctxs}
    for i in range(n + 1):
        for k, c in ctxs.items():
            t = time.perf_counter()
            with c:
                loss = loss_fn(online, target, x)
            loss.backward()
            if i:  # the first pass of each builds oneDNN's kernels
                ms[k].append(1000 * (time.perf_counter() - t))
    fp32, bf16 = min(ms["fp32"]), min(ms["bf16"])
    return bf16 < fp32, (f"--bf16 auto: a forward + backward of this network takes {fp32:.0f} ms in fp32, {bf16:.0f} ms "
                         f"in bf16 (best of {n}): {'bf16' if bf16 < fp32 else 'fp32'}")


# -----------------------------------------------------------------------------
# checkpoints, the out-dir, signals, divergence


def save_checkpoint(obj, path):
    """Atomic: written to path.tmp, flushed to disk (fsync), then renamed over path, so a crash, a kill or a host
    failure leaves the previous checkpoint intact, never a half-written or empty one. A failed write (disk full)
    removes the .tmp and stops with one line."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        if os.path.exists(tmp):
            os.remove(tmp)
        why = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed: disk full?"
        sys.exit(f"error: cannot write the checkpoint {path} ({why}); the previous one is intact")


def load_checkpoint(path, flag):
    """A train.py checkpoint, or one line naming the flag and the path when it is missing, unreadable (truncated,
    corrupt, empty) or not one of ours."""
    if not os.path.isfile(path):
        sys.exit(f"error: {flag}: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a damaged file (zip, pickle, EOF, unicode, ...)
        sys.exit(f"error: {flag}: {path} is not a readable checkpoint: truncated, corrupt or not a torch.save file "
                 f"({type(e).__name__})")
    if not isinstance(ckpt, dict) or not {"online", "config", "step"} <= set(ckpt):
        sys.exit(f"error: {flag}: {path} is not a train.py checkpoint (no online / config / step)")
    return ckpt


def nonfinite(state_dict):
    """Name of the first floating tensor holding nan/inf in a state dict, or None."""
    return next((k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
                 and not torch.isfinite(v).all()), None)


def out_dir_error(out_dir):
    """Why --out-dir cannot hold a run (a file, or not writable), as one line, or None. Creates nothing."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        return f"--out-dir {out_dir} is a file, not a directory"
    p = os.path.abspath(out_dir)
    while not os.path.exists(p):  # the nearest existing ancestor is where the directory would be made
        p = os.path.dirname(p)
    if not os.path.isdir(p) or not os.access(p, os.W_OK):
        return f"--out-dir {out_dir} cannot be written ({p} is {'not a directory' if not os.path.isdir(p) else 'read-only'})"
    return None


def resume_error(ckpt, cfg, defaults, free, n_train, path):
    """Why a checkpoint cannot be resumed with this config, as one line naming the flag, or None: a flag outside
    free (the keys that do not change what is computed) differs from the checkpoint's, or --data-dir now holds
    another number of training images. defaults: the parser's defaults (a key older than the checkpoint)."""
    saved = {**defaults, **ckpt["config"]}
    diff = [k for k in cfg if k not in free and saved[k] != cfg[k]]
    if diff:
        return f"--resume: --{diff[0].replace('_', '-')} is {cfg[diff[0]]!r} here but {saved[diff[0]]!r} in {path}"
    if ckpt.get("n_train", n_train) != n_train:  # e.g. --data-dir now points at another copy of the data
        return (f"--resume: --data-dir {cfg['data_dir']} holds {n_train} training images, but {path} was trained on "
                f"{ckpt['n_train']}")
    return None


def refuse_busy_out_dir(out_dir):
    """One run at a time per out-dir: an exclusive lock on out_dir/lock, held until this process ends, however it
    ends (the kernel drops it). A second run stops with one line. Returns the lock's file (keep it open)."""
    os.makedirs(out_dir, exist_ok=True)
    lock = open(os.path.join(out_dir, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"error: another run is writing --out-dir {out_dir} (it holds {lock.name})")
    return lock


def open_log(out_dir, resume, step):
    """out_dir/log.jsonl for appending. Resumed at `step`: the lines up to the checkpoint's step are kept (a run
    killed after its last checkpoint logged steps it will log again: no duplicates), rewritten atomically."""
    path = os.path.join(out_dir, "log.jsonl")
    old = open(path).readlines() if resume and os.path.exists(path) else []
    with open(path + ".tmp", "w") as fh:
        fh.writelines(line for line in old if line.endswith("\n") and json.loads(line)["step"] <= step)
    os.replace(path + ".tmp", path)
    return open(path, "a")


def stop_after_the_step_on_signal():
    """SIGINT (Ctrl-C) and SIGTERM no longer kill the run: they are recorded in the returned list, and the loop
    saves a checkpoint after the current step and stops."""
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    return stop


class DivergenceGuard:
    """The first step whose loss or F_hat became nan/inf, kept on the device, so the step itself never waits for
    the host; read (one sync) only at logging and checkpoint steps."""

    def __init__(self, device):
        self.bad = torch.zeros((), dtype=torch.long, device=device)  # first bad step + 1 (0: none)

    def record(self, step, loss, F_hat=None):
        finite = torch.isfinite(loss.detach()) & (torch.isfinite(F_hat).all() if F_hat is not None else True)
        self.bad = torch.where((self.bad == 0) & ~finite, step + 1, self.bad)

    def first_bad_step(self, sync_ranks=False):
        """The first diverged step (0: none). sync_ranks: the worst over the DDP ranks (a collective: every rank
        must call it at the same steps)."""
        bad = self.bad.clone()
        if sync_ranks:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad.item()
