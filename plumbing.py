"""
What a training run needs besides the method: train.py's flag ranges and meaningless flag combinations, reading the
datasets' files (the --split val hold-out, the streamed sets' crops, frozen features and their kNN), DDP start-up
with a timeout and a clean exit, the precision and memory-format choice, seeds and RNG state, atomic checkpoints, the
out-dir lock, the log (log.jsonl, W&B), the stop on Ctrl-C / SIGTERM, the divergence guard and the collapse warning.
train.py, eval_linear.py, bench.py and paper/ import from here; nothing in this file knows the method (no model, no
loss), so it can be read, or skipped, on its own. Every failure it handles ends in one line on stderr naming the flag
or path, never a traceback.
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
import random
import shutil
import signal
import sys
import time
import zlib
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
import torch.nn.functional as nnf
from tqdm import tqdm

from directpred import full_fp32

# -----------------------------------------------------------------------------
# bad flags: one line; each flag's range, the predictors it applies to and whether a --resume may change it


class RunError(Exception):
    """A bad flag, path or file, or a run that cannot go on (diverged, stopped): the one line a user sees. The
    functions here raise it; only a script's __main__ turns it into the exit ("error: " + the line, status 1)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a malformed flag reported in one line (no usage block) like every other bad input, and three
    facts a flag can declare where it is declared: valid=(test, "what it must be") (range_error checks it; a float
    must also be finite), needs=(values of --predictor it means something for), free=True (it may differ on
    --resume: it does not change what is computed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.valid, self.needs, self.free = {}, {}, set()

    def add_argument(self, *args, valid=None, needs=None, free=False, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if valid:
            self.valid[action.dest] = valid
        if needs:
            self.needs[action.dest] = needs
        if free:
            self.free.add(action.dest)
        return action

    def error(self, message):
        raise RunError(message)


GE0, GE1, GE2 = (lambda v: v >= 0, ">= 0"), (lambda v: v >= 1, ">= 1"), (lambda v: v >= 2, ">= 2")  # valid= ranges
GT0, UNIT = (lambda v: v > 0, "> 0"), (lambda v: 0 <= v < 1, "in [0, 1)")


def range_error(cfg, ranges):
    """The first flag outside its range (or a non-finite float), as one line naming it, or None."""
    for k, (ok, rule) in ranges.items():
        v = cfg[k]
        if isinstance(v, float) and not math.isfinite(v) or not ok(v):
            return f"--{k.replace('_', '-')} must be {rule}{' and finite' if isinstance(v, float) else ''}, got {v}"
    return None


# -----------------------------------------------------------------------------
# dataset files: read into (uint8 images, labels), or an ImageFolder for the streamed sets; missing or damaged files
# stop with one line naming --data-dir and the layout expected there. The --split val hold-out, the streamed sets'
# crops, frozen features and their kNN

class Dataset(NamedTuple):
    """One --dataset: every fact train.py, eval_linear.py, bench.py and paper/ use about it, stated here once."""
    folder: str  # what load_dataset reads under --data-dir ("" = nothing: made in memory)
    files: str  # the layout expected there, named in the one-line error when it is not
    shape: tuple  # (channels, stored size in pixels); the streamed sets' 224 is their default crop
    n_train: int  # images train.py pretrains on with --split test (0: whatever the folder / --fake-size holds)
    mean: tuple  # per-channel normalisation (CIFAR-10, STL-10: the authors' data/transforms.py at luckmatters@671fca5)
    std: tuple
    aug: str  # train.AUG's preset for --aug auto
    stem: str  # the ResNet stem of --stem auto (cifar: 3x3 stride-1 conv1, no maxpool, for small images)
    streamed: bool = False  # too large for memory: decoded and cropped in DataLoader workers
    val: bool = False  # --split val can hold out labelled training images (val_mask)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DATASETS = {
    "cifar10": Dataset("cifar-10-batches-py", "{d}/cifar-10-batches-py/ with data_batch_1..5 and test_batch (the python "
                       "pickle version)", (3, 32), 50_000, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                       "cifar", "cifar", val=True),
    "cifar100": Dataset("cifar-100-python", "{d}/cifar-100-python/ with train and test (the python pickle version)",
                        (3, 32), 50_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar", "cifar", val=True),
    "stl10": Dataset("stl10_binary", "{d}/stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
                     "unlabeled_X.bin", (3, 96), 105_000, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "stl10", "imagenet"),
    "fashion-mnist": Dataset(os.path.join("FashionMNIST", "raw"), "{d}/FashionMNIST/raw/ with the four *-ubyte(.gz) "
                             f"files (or: apt-get install dataset-fashion-mnist, found in {FMNIST_SYSTEM_DIR})",
                             (1, 28), 60_000, (0.2860,), (0.3530,), "cifar", "cifar", val=True),
    "imagenet": Dataset("train", "{d}/train/<class>/*.JPEG and {d}/val/<class>/*.JPEG (val sorted into class folders)",
                        (3, 224), 1_281_167, IMAGENET_MEAN, IMAGENET_STD, "imagenet", "imagenet", streamed=True),
    "imagefolder": Dataset("train", "{d}/train/<class>/<image> and {d}/val/<class>/<image>", (3, 224), 0,
                           IMAGENET_MEAN, IMAGENET_STD, "imagenet", "imagenet", streamed=True),
    "fake": Dataset("", "nothing (made in memory)", (3, 32), 0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "cifar", "cifar",
                    val=True),
}


def split_val_error():
    """The one line of a --split val on a dataset it cannot hold images out of."""
    return f"--split val holds out labelled training images: it needs --dataset {' / '.join(n for n, d in DATASETS.items() if d.val)}"


def fmnist_missing(data_dir):
    """The Fashion-MNIST files load_dataset would not find (plain or .gz, under DIR/FashionMNIST/raw or the Debian
    package's folder), so that a caller can say so before torchvision tries a download."""
    where = (os.path.join(data_dir, DATASETS["fashion-mnist"].folder), FMNIST_SYSTEM_DIR)
    return [f for f in FMNIST_FILES if not any(os.path.exists(os.path.join(d, f + gz)) for d in where for gz in ("", ".gz"))]


def load_dataset(name, data_dir, split, fake_size=1024):
    """split: pretrain | train | test. Returns (images uint8 (N, C, H, W), labels long (N,)) for the small
    sets, or a torchvision ImageFolder for the streamed ones. Exits with one line if the files are missing."""
    train = split != "test"
    if name == "fake":  # random images, labels 0..9; a different draw for the test split
        g = torch.Generator().manual_seed(1234 + (split == "test"))
        return torch.randint(0, 256, (fake_size, 3, 32, 32), dtype=torch.uint8, generator=g), \
            torch.randint(0, 10, (fake_size,), generator=g)
    import torchvision  # here, not at the top: it imports torch._dynamo, 1.7 s of every start that needs no file
    tv = torchvision.datasets
    try:
        if DATASETS[name].streamed:
            return tv.ImageFolder(os.path.join(data_dir, "train" if train else "val"), loader=load_image)
        if name in ("cifar10", "cifar100"):  # the python pickle batches, read as torchvision reads them
            base = os.path.join(data_dir, DATASETS[name].folder)
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
            base = os.path.join(data_dir, DATASETS[name].folder)
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
            raw = os.path.join(data_dir, DATASETS[name].folder)
            for f in FMNIST_FILES:
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
                        raise RunError(f"--dataset fashion-mnist: {gz} is not a complete gzip file ({e})")
                    os.replace(tmp, os.path.join(raw, f))
            ds = tv.FashionMNIST(data_dir, train=train, download=not os.path.isdir(raw))
            return ds.data[:, None].contiguous(), ds.targets.long()
    except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError, AssertionError) as e:  # (torchvision
        # checks the MNIST file format with assert)
        layout = DATASETS[name].files.format(d=data_dir)
        raise RunError(f"--dataset {name}: no usable data under --data-dir {data_dir!r} ({e}). Expected: {layout}")
    raise ValueError(name)


VAL_SIZE, VAL_SEED = 10_000, 1234  # --split val: 10k of Fashion-MNIST's 60k training images (1/6 of smaller sets)


def val_mask(labels):
    """--split val: which images of a labelled training split are held out for validation. VAL_SIZE of them (at most
    1/6 of the split), stratified by class (each class gives its share), drawn once from a fixed seed, so every run,
    probe and machine holds out the same images. labels: (N,) -> bool (N,)."""
    g = torch.Generator().manual_seed(VAL_SEED)
    n_val = min(VAL_SIZE, len(labels) // 6)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero()[:, 0]
        mask[idx[torch.randperm(len(idx), generator=g)[:round(n_val * len(idx) / len(labels))]]] = True
    return mask


def load_split(name, data_dir, role, split="test", fake_size=1024):
    """The images of one role: pretrain (what train.py trains on), train (the labelled set the probe and the kNN
    memory are fitted on) or eval (what the kNN monitor and the probe report). --split test: the dataset's own
    splits, eval = its test split. --split val: eval = the held-out images (val_mask) of the training split, pretrain
    and train = the rest of it; the test split is not read."""
    if split == "test":
        return load_dataset(name, data_dir, "test" if role == "eval" else role, fake_size)
    x, y = load_dataset(name, data_dir, "train", fake_size)
    held_out = val_mask(y)
    return (x[held_out], y[held_out]) if role == "eval" else (x[~held_out], y[~held_out])


def normalisation(dataset, device):
    """The dataset's per-channel (mean, std), each (C, 1, 1) on the device: made once, outside the loop."""
    return tuple(torch.tensor(v, device=device)[:, None, None] for v in (DATASETS[dataset].mean, DATASETS[dataset].std))


def epoch_indices(n, batch_size, epoch, seed, rank, world_size):
    """This rank's sample indices for one epoch: a fresh permutation of all n (the same on every rank, from
    seed and epoch), cut into global batches (last partial batch dropped), each split into world_size slices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    steps = n // batch_size
    return perm[: steps * batch_size].view(steps, world_size, -1)[:, rank]  # (steps, B_local)


def epoch_batches(data, batch_size, epoch, seed, rank, world_size, device, start=0, workers=8):
    """This rank's batches (x, y) of one epoch, on the device, from batch `start` on. data: (x uint8 (N, C, H, W),
    y (N,)) tensors already on the device (indexed in place), or a Dataset streamed through a DataLoader (x is then
    whatever its transform returns, e.g. TwoCrops' (B, 2, C, H, W))."""
    n = len(data[0]) if isinstance(data, tuple) else len(data)
    idx = epoch_indices(n, batch_size, epoch, seed, rank, world_size)[start:]  # (steps, B_local)
    if isinstance(data, tuple):
        for i in idx.to(device):
            yield data[0][i], data[1][i]
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=idx.shape[1], sampler=idx.flatten().tolist(),
                                             num_workers=workers, pin_memory="cuda" in str(device))
        for x, y in image_batches(loader):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


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
        raise RunError(f"--data-dir: {str(e).strip().splitlines()[-1].split('BadImage: ', 1)[-1]}")


class TwoCrops:
    """Streamed sets: decode, then two independent RandomResizedCrops to uint8 (the colour ops run on the device)."""

    def __init__(self, size, scale):
        import torchvision  # (see load_dataset)
        T = torchvision.transforms
        self.crop = T.Compose([T.RandomResizedCrop(size, scale=scale), T.PILToTensor()])

    def __call__(self, img):
        img = img.convert("RGB")
        return torch.stack([self.crop(img), self.crop(img)])  # (2, 3, size, size) uint8


class EvalCrop:
    """Streamed sets, evaluation: resize to size * 256/224, centre crop (the standard ImageNet test view), uint8."""

    def __init__(self, size):
        import torchvision  # (see load_dataset)
        T = torchvision.transforms
        self.t = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])

    def __call__(self, img):
        return self.t(img.convert("RGB"))


@torch.no_grad()
def extract_features(backbone, data, mean, std, device, ctx, size=None, batch_size=512, workers=8, desc=None,
                     fmt=torch.contiguous_format, bn_pass=False):
    """Frozen features of a labelled split, no augmentation, backbone in eval mode (BN running statistics).
    data: (x uint8 (N, C, H, W), y (N,)) or an ImageFolder (or a Subset of one). size: the training crop size;
    in-memory images are resized to it when it differs from theirs (--img-size), None = as stored (224 for an
    ImageFolder).
    desc: show a progress bar with this title. fmt: the memory format the backbone runs in.
    bn_pass: the same pass in train mode instead, keeping nothing: its only effect is on the BN running statistics
    (eval_linear.reestimate_bn). Returns (features (N, D) float32, labels (N,)) on device (bn_pass: None)."""
    was_training = backbone.training
    backbone.train(bn_pass)
    if isinstance(data, tuple):
        x, y = data
        batches = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    else:  # an ImageFolder, or a Subset of one (eval_linear's shard of it)
        (data.dataset if isinstance(data, torch.utils.data.Subset) else data).transform = EvalCrop(size or 224)
        batches = image_batches(torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers,
                                                            pin_memory="cuda" in str(device)))
    feats, labels = [], []
    n_batches = math.ceil((len(data[0]) if isinstance(data, tuple) else len(data)) / batch_size)
    for xb, yb in tqdm(batches, desc, total=n_batches, disable=desc is None, leave=False, dynamic_ncols=True,
                       file=sys.stdout):
        xb = xb.to(device, non_blocking=True).float() / 255  # (pinned when streamed to a GPU)
        if size and xb.shape[-1] != size:  # the views were resized to size in training: the same scale here
            xb = nnf.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
        xb = ((xb - mean) / std).contiguous(memory_format=fmt)
        with ctx:
            f = backbone(xb).float()
        if not bn_pass:
            feats.append(f)
            labels.append(yb.to(device, non_blocking=True))
    backbone.train(was_training)
    return None if bn_pass else (torch.cat(feats), torch.cat(labels))


@torch.no_grad()
def knn_eval(train_f, train_y, test_f, test_y, k=200, t=0.1, chunk=1024):
    """Weighted kNN top-1 (Wu et al. 2018; the usual SSL monitor): cosine similarity to the k nearest training
    features, each neighbour votes for its class with weight exp(sim / t). The similarities are full fp32 (no TF32,
    whatever the caller set), so the monitor in train.py and eval_linear.py give the same number."""
    n_cls = int(train_y.max()) + 1
    train_f, test_f = nnf.normalize(train_f, dim=1), nnf.normalize(test_f, dim=1)
    correct = 0
    with full_fp32(train_f.device.type):
        for i in range(0, len(test_f), chunk):
            sim, idx = (test_f[i:i + chunk] @ train_f.T).topk(min(k, len(train_f)), dim=1)  # (b, k)
            votes = torch.zeros(len(sim), n_cls, device=sim.device).scatter_add_(1, train_y[idx], (sim / t).exp())
            correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return correct / len(test_f)


# -----------------------------------------------------------------------------
# DDP start-up, precision and memory format


def torchrun_world_size():
    """The number of DDP ranks torchrun started (it sets RANK / LOCAL_RANK / WORLD_SIZE); 1 for a plain launch."""
    return int(os.environ["WORLD_SIZE"]) if int(os.environ.get("RANK", -1)) != -1 else 1


def init_distributed(device, timeout=600):
    """torchrun sets RANK / LOCAL_RANK / WORLD_SIZE: join the process group (nccl on CUDA, gloo on CPU) and pick
    this rank's device. device: auto | cpu | cuda. timeout: seconds a collective waits for a stalled rank; past it
    the collective fails and the job stops with one line naming this rank (not a traceback, never a hang).
    Returns (ddp, rank, local_rank, world_size, device)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
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
        # gloo's timeouts reach Python as a plain RuntimeError: from the DDP reducer ("... timed out ..."), or from
        # DDP's buffer broadcast in forward ("Application timeout caused pair closure")
        text = str(exc).lower()
        if not (isinstance(exc, dist.DistError) or isinstance(exc, RuntimeError) and any(
                w in text for w in ("gloo", "nccl", "timed out", "timeout"))):
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
    if channels_last == "auto":  # CPU: 1.6x faster at width 16, but oneDNN's 1x1 stride-2 weight gradient in
        # channels_last hangs or errs when the conv has fewer input channels than its kernel's block (8 on AVX2;
        # github.com/uxlfoundation/oneDNN/issues/6035): our downsample convs see --width channels and more
        channels_last = device_type == "cuda" or width >= 16
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if int(bf16) else nullcontext()
    return ctx, torch.channels_last if int(channels_last) else torch.contiguous_format


def bf16_if_faster(online, target, loss_fn, x, sync_ranks=False, n=3):
    """--bf16 auto on a CPU with bf16 instructions: whether bf16 autocast is faster than fp32 for this run's networks
    (bf16 instructions do not make every network faster: at small widths the convolutions can lose). Times n forward +
    backward passes, loss_fn(online, target, x) -> loss, of copies of online and target (the run's weights and BN
    statistics are left untouched) on the batch x in each precision, interleaved, after one warm-up each.
    sync_ranks: under DDP every rank takes rank 0's choice (a broadcast: every rank calls this).
    Returns (use bf16?, one line with this rank's numbers)."""
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
    use_bf16 = torch.tensor(int(bf16 < fp32))
    if sync_ranks:  # timings differ between ranks; the precision must not
        dist.broadcast(use_bf16, 0)
    return bool(use_bf16), (f"--bf16 auto: a forward + backward of this network takes {fp32:.0f} ms in fp32, "
                            f"{bf16:.0f} ms in bf16 (best of {n}): {'bf16' if bf16 < fp32 else 'fp32'}")


def decide_bf16(saved, device_type, measure):
    """--bf16 auto, decided once per run. saved: the choice recorded in the checkpoint being resumed ("0" / "1"; None
    on a fresh run, "auto" in a checkpoint older than this rule); measure: () -> (use bf16?, line), bf16_if_faster on
    the run's networks, called only on a CPU with bf16 instructions. Returns ("0" or "1", one line saying how it was
    decided): reused from the checkpoint, GPU capability, no bf16 instructions, or measured."""
    if saved in ("0", "1"):
        return saved, f"--bf16 auto: {'bf16' if saved == '1' else 'fp32'}, reused from the checkpoint (decided at the run's start)"
    if device_type == "cuda":  # native bf16 only (pre-Ampere GPUs emulate it, slower)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return str(int(native)), f"--bf16 auto: {'bf16 (native on this GPU)' if native else 'fp32 (this GPU emulates bf16)'}"
    if not cpu_has_bf16():
        return "0", "--bf16 auto: fp32 (this CPU has no bf16 instructions)"
    use_bf16, line = measure()
    return str(int(use_bf16)), line + " (measured)"


# -----------------------------------------------------------------------------
# seeds, checkpoints, the out-dir, the log, signals, divergence, the collapse warning


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
        raise RunError(f"cannot write the checkpoint {path} ({why}); the previous one is intact")


def load_checkpoint(path, flag):
    """A train.py checkpoint, or one line naming the flag and the path when it is missing, unreadable (truncated,
    corrupt, empty) or not one of ours."""
    if not os.path.isfile(path):
        raise RunError(f"{flag}: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a damaged file (zip, pickle, EOF, unicode, ...)
        raise RunError(f"{flag}: {path} is not a readable checkpoint: truncated, corrupt or not a torch.save file "
                 f"({type(e).__name__})")
    if not isinstance(ckpt, dict) or not {"online", "config", "step"} <= set(ckpt):
        raise RunError(f"{flag}: {path} is not a train.py checkpoint (no online / config / step)")
    return ckpt


def seed_all(seed):
    """torch (CPU and CUDA), numpy and random: the init and anything a library draws."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state(device_type):
    """The torch RNG states a checkpoint keeps (CPU, and CUDA's on a GPU), so a resume draws what the run would have."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}


def restore_rng(state, device_type):
    torch.set_rng_state(state["torch"].cpu())
    if device_type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu())


def nonfinite(state_dict):
    """Name of the first floating tensor holding nan/inf in a state dict, or None."""
    return next((k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
                 and not torch.isfinite(v).all()), None)


def out_dir_error(out_dir, resume):
    """Why --out-dir cannot hold this run, as one line, or None: a file, not writable, or it already holds a run
    (ckpt.pt) and this is not --resume. Creates nothing."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        return f"--out-dir {out_dir} is a file, not a directory"
    p = os.path.abspath(out_dir)
    while not os.path.exists(p):  # the nearest existing ancestor is where the directory would be made
        p = os.path.dirname(p)
    if not os.path.isdir(p) or not os.access(p, os.W_OK):
        return f"--out-dir {out_dir} cannot be written ({p} is {'not a directory' if not os.path.isdir(p) else 'read-only'})"
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not resume:  # never replace someone's run silently
        return (f"--out-dir {out_dir} already holds a run ({ckpt_path}): add --resume to continue it, or choose another "
                f"--out-dir")
    return None


def resume_error(ckpt, cfg, defaults, free, n_train, path):
    """Why a checkpoint cannot be resumed with this config, as one line naming the flag, or None: a flag not in `free`
    (the keys that do not change what is computed) differs from the checkpoint's, or --data-dir now holds another
    number of training images. defaults: the parser's defaults (a key older than the checkpoint)."""
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
        raise RunError(f"another run is writing --out-dir {out_dir} (it holds {lock.name})")
    return lock


class RunLog:
    """Rank 0's log: out_dir/log.jsonl, one JSON record per line, and W&B with --wandb-project (the same records, with
    their step, and the config). Resumed at `step`: the lines up to the checkpoint's step are kept (a run killed after
    its last checkpoint logged steps it will log again: no duplicates), rewritten atomically. wandb is imported only
    here (it is not in requirements.txt); a missing package stops the run with one line."""

    def __init__(self, out_dir, resume, step, wandb_project="", wandb_run_name="", config=None):
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RunError("--wandb-project needs the wandb package: pip install wandb")
            wandb.init(project=wandb_project, name=wandb_run_name or None, config=config)
            self.wandb = wandb
        path = os.path.join(out_dir, "log.jsonl")
        old = open(path).readlines() if resume and os.path.exists(path) else []
        with open(path + ".tmp", "w") as fh:
            fh.writelines(line for line in old if line.endswith("\n") and json.loads(line)["step"] <= step)
        os.replace(path + ".tmp", path)
        self.fh = open(path, "a")

    def write(self, rec):
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        if self.wandb is not None:
            self.wandb.log(rec, step=rec["step"])

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()
        self.fh.close()


def stop_after_the_step_on_signal():
    """SIGINT (Ctrl-C) and SIGTERM no longer kill the run: they are recorded in the returned list, and the loop
    saves a checkpoint after the current step and stops."""
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    return stop


class DivergenceGuard:
    """Never train on, or save, a diverged run. The first step whose loss or F_hat became nan/inf is kept on the
    device, so the step itself never waits for the host; it is read (one sync) at logging and checkpoint steps only.
    A diverged run stops with one line naming the step, --lr and the last good checkpoint (last_ckpt, which the
    caller updates). on_stop: called first (e.g. to close a progress bar)."""

    def __init__(self, device, lr, last_ckpt, on_stop=lambda: None):
        self.bad = torch.zeros((), dtype=torch.long, device=device)  # first bad step + 1 (0: none)
        self.lr, self.last_ckpt, self.on_stop = lr, last_ckpt, on_stop

    def record(self, step, loss, F_hat=None):
        finite = torch.isfinite(loss.detach()) & (torch.isfinite(F_hat).all() if F_hat is not None else True)
        self.bad = torch.where((self.bad == 0) & ~finite, step + 1, self.bad)

    def stop(self, what):
        self.on_stop()
        raise RunError(f"training diverged: {what} (--lr {self.lr}); last good checkpoint: {self.last_ckpt}")

    def stop_if_diverged(self, sync_ranks=False):
        """sync_ranks: stop on the worst of the DDP ranks (a collective: every rank must call it at the same steps)."""
        bad = self.bad.clone()
        if sync_ranks:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad = bad.item()  # the one host sync
        if bad:
            self.stop(f"the loss (or F_hat) became nan/inf at step {bad}")

    def stop_if_nonfinite(self, step, *state_dicts):
        """Weights or buffers about to be saved that are nan/inf (e.g. BatchNorm running statistics gone to inf)."""
        bad = next((k for k in map(nonfinite, state_dicts) if k), None)
        if bad:
            self.stop(f"{bad} became nan/inf by step {step}")


# the collapse warning: printed when a run has looked collapsed (train.looks_collapsed) for COLLAPSE_INTERVALS log
# lines in a row, and a note when it recovers for as many lines (3 lines in a row flag the laptop search's collapse
# controls and none of its 28 runs that learned, paper/results/laptop-search). It warns, never stops a run
COLLAPSE_INTERVALS = 3


class CollapseWatch:
    """The collapse warning of train.py's log lines: a warning once a run has looked collapsed (looks_collapsed(erank,
    z_std), train.py's rule) for COLLAPSE_INTERVALS log lines in a row, once per streak, and a note when it has looked
    healthy for as many again (a slow predictor can dip and recover)."""

    def __init__(self, looks_collapsed):
        self.looks_collapsed = looks_collapsed
        self.streak, self.warned = 0, False  # > 0: low log lines in a row; < 0: healthy ones; a warning standing?

    def line(self, step, erank, z_std, d):
        """What to print for this log line (d: the dimension erank is out of), or None."""
        low = self.looks_collapsed(erank, z_std)
        self.streak = max(self.streak, 0) + 1 if low else min(self.streak, 0) - 1
        if self.streak == COLLAPSE_INTERVALS and not self.warned:
            self.warned = True
            return (f"warning: step {step}: the run looks collapsed: effective rank {erank:.2f} of {d}, z_std "
                    f"{z_std:.3f} for {self.streak} log lines in a row (docs/reference.md, 'has my run collapsed?', "
                    f"lists what to try)")
        if self.streak == -COLLAPSE_INTERVALS and self.warned:
            self.warned = False
            return (f"note: step {step}: the run recovered: effective rank {erank:.2f}, z_std {z_std:.3f} for "
                    f"{-self.streak} log lines in a row")
        return None
