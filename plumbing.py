"""
What a training run needs besides the method and its data: flags that declare their ranges (one line
for a bad one), DDP start-up with a timeout and a clean exit, the precision and memory-format
choice, seeds and RNG state, atomic checkpoints and what a resume checks, and the run's upkeep (Run:
the out-dir lock, the log and W&B, the progress bar, the stop on Ctrl-C / SIGTERM, the divergence
guard, img/s, saving a checkpoint). Nothing in this file knows the method (no model, no loss, no
statistic of it) or a dataset. Every failure it handles ends in one line on stderr naming the flag
or path, never a traceback.

"""
import argparse
import copy
import ctypes
import ctypes.util
import datetime
import fcntl
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

# -----------------------------------------------------------------------------
# bad flags: one line; each flag's range, the predictors it applies to and whether a --resume may
# change it


class RunError(Exception):
    """A bad flag, path or file, or a run that cannot go on (diverged, stopped): the one line a user
    sees. The functions here raise it; only a script's __main__ turns it into the exit ("error: " +
    the line, status 1)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a malformed flag reported in one line (no usage block) like every other bad
    input, and three facts a flag can declare where it is declared: valid=(test, "what it must be")
    (range_error checks it; a float must also be finite), needs=(values of --predictor it means
    something for), free=True (it may differ on --resume: it does not change what is computed)."""

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


# valid= ranges: (test, what it must be)
POSITIVE, FRACTION = (lambda v: v > 0, "> 0"), (lambda v: 0 <= v < 1, "in [0, 1)")


def at_least(k):
    return (lambda v: v >= k, f">= {k}")


def range_error(cfg, ranges):
    """The first flag outside its range (or a non-finite float), as one line naming it, or None."""
    for k, (ok, rule) in ranges.items():
        v = cfg[k]
        if isinstance(v, float) and not math.isfinite(v) or not ok(v):
            finite = " and finite" if isinstance(v, float) else ""
            return f"--{k.replace('_', '-')} must be {rule}{finite}, got {v}"
    return None


# -----------------------------------------------------------------------------
# DDP start-up, precision and memory format


def torchrun_world_size():
    """The number of DDP ranks torchrun started (it sets RANK / LOCAL_RANK / WORLD_SIZE); 1 for a
    plain launch."""
    return int(os.environ["WORLD_SIZE"]) if int(os.environ.get("RANK", -1)) != -1 else 1


def init_distributed(device, timeout=600):
    """torchrun sets RANK / LOCAL_RANK / WORLD_SIZE: join the process group (nccl on CUDA, gloo on
    CPU) and pick this rank's device. device: auto | cpu | cuda. timeout: seconds a collective waits
    for a stalled rank; past it the collective fails and the job stops with one line naming this
    rank (not a traceback, never a hang). Returns (ddp, rank, local_rank, world_size, device)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if int(os.environ.get("RANK", -1)) == -1:  # a plain `python` launch
        return False, 0, 0, 1, device
    rank, local_rank, world_size = (int(os.environ[k])
                                    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    # this rank's GPU first, and named to the process group (else barrier() guesses one)
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    store = next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=timeout)))[0]
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = attempt_store(store)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", store=store,
                            rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout),
                            device_id=torch.device(device) if device.startswith("cuda") else None)

    def one_line(kind, exc, tb):  # a failed collective: the other ranks stalled or died
        # gloo's timeouts reach Python as a plain RuntimeError: from the DDP reducer ("... timed out
        # ..."), or from DDP's buffer broadcast in forward ("Application timeout caused pair
        # closure")
        text = str(exc).lower()
        if not (isinstance(exc, dist.DistError) or isinstance(exc, RuntimeError) and any(
                w in text for w in ("gloo", "nccl", "timed out", "timeout"))):
            return sys.__excepthook__(kind, exc, tb)
        print(f"error: rank {rank}: a DDP collective failed after waiting up to {timeout:g} s "
              "(--ddp-timeout): another "
              f"rank stalled or died ({str(exc).strip().splitlines()[0][:160]})", file=sys.stderr,
              flush=True)
        os._exit(1)  # no atexit handlers: tearing down a broken process group can hang
    sys.excepthook = one_line
    return True, rank, local_rank, world_size, device


def attempt_store(store):
    """torchrun's own store, as the ranks of one attempt use it. It outlives a --max-restarts
    restart with the failed attempt's keys in it, so a restarted rank would read the dead ranks'
    addresses and never connect (pytorch#135712). One node's torchrun numbers the attempts for the
    whole job: their keys go under the attempt's prefix. Several nodes' torchruns number them each
    their own way: a restart there stops with one line naming the setting that gives each attempt
    a fresh store."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt != "0" and os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        raise RunError("torchrun restarted a job of several nodes on its shared store, which still "
                       "holds the failed attempt's addresses: launch torchrun with "
                       "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 to restart it")
    return dist.PrefixStore(f"attempt_{attempt}", store)


def same_on_every_rank(flag, device, message):
    """every rank: stop with `message` (one line) where the ranks disagree on a bool, e.g. whether
    out_dir holds a checkpoint (ranks on nodes that do not share --out-dir's filesystem)."""
    t = torch.tensor([int(flag), -int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # (any rank true, -(every rank true))
    if t[0].item() != -t[1].item():
        raise RunError(message)


def end_distributed():
    """The last line of a torchrun job, on every rank once its work is written: leave the process
    group, then exit 0 at once. gloo's worker threads can outlive destroy_process_group, and at
    random the interpreter's teardown then aborts a rank that has finished ("terminate called
    without an active exception", exit -6), so torchrun reports a completed run as failed; os._exit
    skips that teardown. Callers close their own files first (nothing else is lost: stdout/stderr
    are flushed here)."""
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cpu_has_bf16():
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX; read from Linux's /proc/cpuinfo).
    With them bf16 autocast is faster than fp32; without them oneDNN emulates bf16, slower."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16():
    """Whether this GPU computes bf16 natively (pre-Ampere GPUs emulate it, slower)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def keep_freed_memory():
    """glibc's malloc hands large freed blocks back to the kernel (mmap'd chunks, a trimmed heap),
    so on a CPU every step's activations land on fresh pages the kernel must fault in and zero
    (docs/reference.md, Speed). Keep freed memory in the heap instead (the process's peak stays its
    resident size). The numbers are unchanged: only where the buffers live moves. A no-op without
    glibc."""
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is not None:
        mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MiB (glibc's most) in the heap
        mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: give back the heap's top only past 1 GiB free
        mallopt(-2, 64 << 20)  # M_TOP_PAD: grow the heap 64 MiB at a time


def precision_and_layout(device_type, bf16="auto", channels_last="auto", deterministic=0, width=64):
    """--bf16 / --channels-last ('auto': on where measured faster, docs/reference.md, Speed) and
    --deterministic for this device; on a CPU, the allocator keeps freed memory
    (keep_freed_memory). width: the network's --width. Returns (ctx: bf16 autocast or a null
    context, fmt: the memory format of the networks and their inputs)."""
    if device_type == "cpu":
        keep_freed_memory()
    if device_type == "cuda":
        # autotuning picks kernels by timing: not repeatable
        torch.backends.cudnn.benchmark = not deterministic
        # the setters every torch has: torch >= 2.9's fp32_precision would leave allow_tf32 and
        # get_float32_matmul_precision raising in other code (a "mix of legacy and new APIs")
        torch.set_float32_matmul_precision("highest" if deterministic else "high")
        torch.backends.cudnn.allow_tf32 = not deterministic
        if deterministic:
            # cuBLAS's condition for repeatable GEMMs
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic = True
            # an op without a deterministic kernel warns
            torch.use_deterministic_algorithms(True, warn_only=True)
    if bf16 == "auto":  # CUDA: native bf16 only (pre-Ampere GPUs emulate it, slower); a CPU: fp32
        # here, and train.py turns bf16 on where bf16_if_faster measures it faster for the network
        bf16 = device_type == "cuda" and native_bf16()
    if channels_last == "auto":  # faster on a CPU from width 16 (docs/reference.md, Speed); below,
        # oneDNN's 1x1 stride-2 weight gradient in channels_last fails (oneDNN issue 6035)
        channels_last = device_type == "cuda" or width >= 16
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if int(bf16) else nullcontext()
    return ctx, torch.channels_last if int(channels_last) else torch.contiguous_format


def bf16_if_faster(online, target, loss_fn, x, sync_ranks=False, n=3):
    """--bf16 auto on a CPU with bf16 instructions: whether bf16 autocast is faster than fp32 for
    this run's networks (bf16 instructions do not make every network faster: at small widths the
    convolutions can lose). Times n forward + backward passes, loss_fn(online, target, x) -> loss,
    of copies of online and target (the run's weights and BN statistics are left untouched) on the
    batch x in each precision, interleaved, after one warm-up each. sync_ranks: under DDP every rank
    takes rank 0's choice (a broadcast: every rank calls this). Returns (use bf16?, one line with
    this rank's numbers)."""
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
    return bool(use_bf16), (f"--bf16 auto: a forward + backward of this network takes {fp32:.0f} "
                            f"ms in fp32, {bf16:.0f} ms in bf16 (best of {n}): "
                            f"{'bf16' if bf16 < fp32 else 'fp32'}")


def decide_bf16(saved, device_type, measure):
    """--bf16 auto, decided once per run. saved: the choice recorded in the checkpoint being resumed
    ("0" / "1"; None on a fresh run, "auto" in a checkpoint older than this rule); measure: () ->
    (use bf16?, line), bf16_if_faster on the run's networks, called only on a CPU with bf16
    instructions. Returns ("0" or "1", one line saying how it was decided): reused from the
    checkpoint, GPU capability, no bf16 instructions, or measured."""
    if saved in ("0", "1"):
        return saved, (f"--bf16 auto: {'bf16' if saved == '1' else 'fp32'}, reused from the "
                       f"checkpoint (decided at the run's start)")
    if device_type == "cuda":  # native bf16 only (pre-Ampere GPUs emulate it, slower)
        native = native_bf16()
        which = "bf16 (native on this GPU)" if native else "fp32 (this GPU emulates bf16)"
        return str(int(native)), f"--bf16 auto: {which}"
    if not cpu_has_bf16():
        return "0", "--bf16 auto: fp32 (this CPU has no bf16 instructions)"
    use_bf16, line = measure()
    return str(int(use_bf16)), line + " (measured)"


# -----------------------------------------------------------------------------
# the run's flags and state: what train.py's main() asks of the upkeep


def add_run_flags(P):
    """The run's own flags, after the method's in --help: where it writes, resuming, logging and
    checkpoints, the device and DDP, precision and speed, W&B. None changes what is computed."""
    a = P.add_argument
    a("--out-dir", default="out", free=True, help="where ckpt.pt and log.jsonl go")
    a("--resume", nargs="?", const="1", default="0", choices=["0", "1", "auto"], free=True,
      help="continue from out_dir/ckpt.pt (--resume alone: 1); auto: if it exists, else start "
      "fresh (a run that torchrun --max-restarts brings back resumes itself)")
    a("--ckpt-every", type=int, default=1000, valid=at_least(1), free=True,
      help="steps between checkpoints (and the end)")
    a("--save-every-rank", action="store_true", free=True,
      help="each DDP rank also writes ckpt_rank{r}.pt")
    a("--log-every", type=int, default=50, valid=at_least(1), free=True,
      help="steps between log.jsonl lines (and step 0)")
    a("--log-early", type=int, default=200, valid=at_least(0), free=True,
      help="log every 10th step up to N (early collapse)")
    a("--eval-every", type=int, default=0, valid=(lambda v: v >= 0, ">= 0 (0 = off)"), free=True,
      help="steps between kNN monitors (k=200, t=0.1; rank 0); 0 = off")
    a("--seed", type=int, default=0, valid=at_least(0),
      help="seeds the init, the batch order and the augmentations")
    add_device_flags(P, "bf16 autocast of the networks (the loss, F_hat and its eigh stay fp32); "
                     "auto = on GPUs with native bf16, on a CPU where timed passes find it faster "
                     "(decided once per run: a resume reuses it)")
    a("--deterministic", type=int, default=0, choices=[0, 1], free=True,
      help="CUDA: deterministic cuDNN / cuBLAS kernels, no autotuning, no TF32, so that two runs "
      "(and a resume) give the same bits, at a speed cost; the CPU is already")
    a("--compile", type=int, default=0, choices=[0, 1], free=True,
      help="torch.compile the online network")
    a("--wandb-project", default="", free=True,
      help="also log to W&B under this project (rank 0; pip install wandb); empty = off")
    a("--wandb-run-name", default="", free=True, help="the W&B run's name (empty: W&B picks one)")


def add_device_flags(P, bf16_help):
    """Where and how a run computes (train.py's and eval_linear.py's): the device, the DDP timeout,
    bf16 (bf16_help: what auto means there) and the memory format."""
    a = P.add_argument
    a("--device", default="auto", choices=["auto", "cpu", "cuda"], free=True,
      help="auto = cuda if available")
    a("--ddp-timeout", type=float, default=600, valid=(lambda v: v > 0, "> 0 seconds"), free=True,
      help="seconds a DDP collective waits for a stalled rank, then stops")
    a("--bf16", default="auto", choices=["auto", "0", "1"], free=True, help=bf16_help)
    a("--channels-last", default="auto", choices=["auto", "0", "1"], free=True,
      help="channels_last memory format for the convolutions; auto = on CUDA, and on CPUs for "
      "--width >= 16 (faster; narrower nets hit a oneDNN bug)")


def resolve_resume(cfg):
    """--resume 0 / 1 / auto -> whether there is a checkpoint to continue (auto: if one exists)."""
    ckpt = os.path.join(cfg["out_dir"], "ckpt.pt")
    cfg["resume"] = os.path.isfile(ckpt) if cfg["resume"] == "auto" else cfg["resume"] == "1"


def flags_error(cfg, P, world_size):
    """The first flag out of its range, a global --batch-size that does not split over the DDP
    ranks, or a flag set for a --predictor it means nothing for, as one line; or None."""
    err = range_error(cfg, P.valid)
    if err:
        return err
    if cfg["batch_size"] % world_size or cfg["batch_size"] // world_size < 2:
        return (f"--batch-size {cfg['batch_size']} must split evenly over {world_size} DDP ranks, "
                ">= 2 each")
    defaults = vars(P.parse_args([]))  # a flag left at its default is never an error
    for k, predictors in P.needs.items():
        if cfg["predictor"] not in predictors and cfg[k] != defaults[k]:
            flag, which = k.replace("_", "-"), " or ".join(predictors)
            return f"--{flag} is an option of --predictor {which} only"
    return None


def to_device_layout(online, target, ddp, sync_bn, device, fmt, master_process):
    """The networks as the run holds them: SyncBatchNorm under DDP on CUDA (global-batch BN), in
    the run's memory format. Returns (online, target)."""
    if ddp and sync_bn and "cuda" in device:
        online = nn.SyncBatchNorm.convert_sync_batchnorm(online)
        target = nn.SyncBatchNorm.convert_sync_batchnorm(target) if target is not None else None
    elif ddp and sync_bn and master_process:
        print("note: SyncBatchNorm needs CUDA; on CPU each rank normalises with its own batch "
              "statistics")
    online = online.to(memory_format=fmt)
    return online, target.to(memory_format=fmt) if target is not None else None


def load_run(cfg, P, n_train, device, **state):
    """--resume: the checkpoint's state into this run's (each of `state`, by name: a module or an
    optimizer, or None; the RNG), or one line naming the flag that differs. Returns the checkpoint,
    its tensors moved to the device."""
    path = os.path.join(cfg["out_dir"], "ckpt.pt")
    ckpt = load_checkpoint(path, "--resume")
    err = resume_error(ckpt, cfg, vars(P.parse_args([])), P.free, n_train, path)
    if err:
        raise RunError(err)
    for name, obj in state.items():
        if obj is not None:
            try:
                obj.load_state_dict(ckpt[name])
            except (RuntimeError, KeyError, ValueError) as e:  # another layout: one line
                why = " ".join(str(e).split())[:300]
                raise RunError(f"--resume: {path} holds {name} in another layout than this "
                               f"train.py builds (written by another version?): {why}")
    restore_rng(ckpt["rng"], "cuda" if "cuda" in device else "cpu")
    stats = ckpt.get("monitor_stats")
    return dict(ckpt, monitor_stats=tuple(t.to(device) for t in stats) if stats else None)


def run_state(step, cfg, n_train, device, extra, **state):
    """Everything a resume needs: each of `state` by name (its state_dict, or None), the step, the
    config, `extra` (the run's other records) and the RNG."""
    return {**{name: obj.state_dict() if obj is not None else None for name, obj in state.items()},
            "step": step, "config": cfg, **extra, "n_train": n_train,
            "rng": rng_state("cuda" if "cuda" in device else "cpu")}


def choose_bf16(cfg, saved, online, target, loss_fn, shape, device, fmt, ddp):
    """--bf16 auto, decided once per run and recorded in its config as "0" / "1" (the checkpoint,
    the log's first record): timed at the start on a CPU with bf16 instructions (loss_fn(online,
    target, x) on a batch of `shape` from its own RNG), reused by every --resume, so a run never
    switches precision midway. Every rank calls it (under DDP rank 0's choice wins). Returns (the
    autocast context, the line saying how it was decided)."""
    device_type = "cuda" if "cuda" in device else "cpu"
    x = torch.rand(*shape, generator=torch.Generator(device).manual_seed(0), device=device)
    cfg["bf16"], line = decide_bf16(saved, device_type, lambda: bf16_if_faster(
        online, target, loss_fn, x.contiguous(memory_format=fmt), ddp))
    return (torch.autocast(device_type,
                           dtype=torch.bfloat16) if cfg["bf16"] == "1" else nullcontext()), line


def wrap(online, cfg, ddp, local_rank, device, master_process):
    """The online network as the loop calls it: compiled (--compile 1), then DDP under torchrun."""
    if cfg["compile"] and ddp and cfg["sync_bn"] and "cuda" in device and master_process:
        print("warning: --compile 1 with DDP and SyncBatchNorm: the graph breaks at every "
              "SyncBatchNorm, and the combination has failed in PyTorch (docs/reference.md, "
              "When something goes wrong); --sync-bn 0 compiles whole")
    model = torch.compile(online) if cfg["compile"] else online
    return DDP(model, device_ids=[local_rank] if "cuda" in device else None) if ddp else model


# -----------------------------------------------------------------------------
# seeds, checkpoints, the out-dir, the log, signals, divergence


def save_checkpoint(obj, path):
    """Atomic: written to path.tmp, flushed to disk (fsync), then renamed over path, so a crash, a
    kill or a host failure leaves the previous checkpoint intact, never a half-written or empty one.
    A failed write (disk full) removes the .tmp and stops with one line."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # (torch's zip writer: RuntimeError for a failed write)
        if os.path.exists(tmp):
            os.remove(tmp)
        why = e.strerror if isinstance(e, OSError) and e.strerror else \
            "the write failed: disk full?"
        raise RunError(f"cannot write the checkpoint {path} ({why}); the previous one is intact")


def load_checkpoint(path, flag):
    """A train.py checkpoint, or one line naming the flag and the path when it is missing,
    unreadable (truncated, corrupt, empty) or not one of ours."""
    if not os.path.isfile(path):
        raise RunError(f"{flag}: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a damaged file (zip, pickle, EOF)
        raise RunError(f"{flag}: {path} is not a readable checkpoint: truncated, corrupt or not a "
                       f"torch.save file ({type(e).__name__})")
    if not isinstance(ckpt, dict) or not {"online", "config", "step"} <= set(ckpt):
        raise RunError(f"{flag}: {path} is not a train.py checkpoint (no online / config / step)")
    return ckpt


def seed_all(seed):
    """torch (CPU and CUDA), numpy and random: the init and anything a library draws."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_of(*parts):
    """A 63-bit seed from a tuple (e.g. seed, step, rank): distinct tuples give unrelated seeds, the
    same tuple the same seed on any machine, so randomness keyed to where it is drawn replays."""
    text = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def rng_state(device_type):
    """The torch RNG states a checkpoint keeps (CPU, and CUDA's on a GPU), so a resume draws what
    the run would have."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}


def restore_rng(state, device_type):
    torch.set_rng_state(state["torch"].cpu())
    if device_type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu())


def nonfinite(state_dict):
    """Name of the first floating tensor holding nan/inf in a state dict, or None."""
    return next((k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
                 and not torch.isfinite(v).all()), None)


def out_dir_error(out_dir, resume):
    """Why --out-dir cannot hold this run, as one line, or None: a file, not writable, or it already
    holds a run (ckpt.pt) and this is not --resume. Creates nothing."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        return f"--out-dir {out_dir} is a file, not a directory"
    p = os.path.abspath(out_dir)
    # the nearest existing ancestor is where the directory would be made
    while not os.path.exists(p):
        p = os.path.dirname(p)
    if not os.path.isdir(p) or not os.access(p, os.W_OK):
        what = "not a directory" if not os.path.isdir(p) else "read-only"
        return f"--out-dir {out_dir} cannot be written ({p} is {what})"
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not resume:  # never replace someone's run silently
        return (f"--out-dir {out_dir} already holds a run ({ckpt_path}): add --resume to continue "
                "it, or choose another --out-dir")
    return None


def resume_error(ckpt, cfg, defaults, free, n_train, path):
    """Why a checkpoint cannot be resumed with this config, as one line naming the flag, or None: a
    flag not in `free` (the keys that do not change what is computed) differs from the checkpoint's,
    or --data-dir now holds another number of training images. defaults: the parser's defaults (a
    key older than the checkpoint)."""
    saved = {**defaults, **ckpt["config"]}
    diff = [k for k in cfg if k not in free and saved[k] != cfg[k]]
    if diff:
        k = diff[0]
        return f"--resume: --{k.replace('_', '-')} is {cfg[k]!r} here but {saved[k]!r} in {path}"
    # e.g. --data-dir now points at another copy of the data
    if ckpt.get("n_train", n_train) != n_train:
        return (f"--resume: --data-dir {cfg['data_dir']} holds {n_train} training images, but "
                f"{path} was trained on {ckpt['n_train']}")
    return None


def refuse_busy_out_dir(out_dir):
    """One run at a time per out-dir: an exclusive lock on out_dir/lock, held until this process
    ends, however it ends (the kernel drops it). A second run stops with one line. Returns the
    lock's file (keep it open)."""
    os.makedirs(out_dir, exist_ok=True)
    lock = open(os.path.join(out_dir, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunError(f"another run is writing --out-dir {out_dir} (it holds {lock.name})")
    return lock


class RunLog:
    """Rank 0's log: out_dir/log.jsonl, one JSON record per line, and W&B with --wandb-project (the
    same records, with their step, and the config). Resumed at `step`: the lines up to the
    checkpoint's step are kept (a run killed after its last checkpoint logged steps it will log
    again: no duplicates), rewritten atomically. wandb is imported only here (it is not in
    requirements.txt); a missing package stops the run with one line."""

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
            fh.writelines(line for line in old
                          if line.endswith("\n") and json.loads(line)["step"] <= step)
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
    """SIGINT (Ctrl-C) and SIGTERM no longer kill the run: they are recorded in the returned list,
    and the loop saves a checkpoint after the current step and stops."""
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    return stop


class DivergenceGuard:
    """Never train on, or save, a diverged run. The first step whose loss (or a watched tensor,
    named in the line) became nan/inf is kept on the device, so the step itself never waits for the
    host; it is read (one sync) at logging and checkpoint steps only. A diverged run stops with one
    line naming the step, --lr and the last good checkpoint (last_ckpt, which the caller updates).
    on_stop: called first (e.g. to close a progress bar)."""

    def __init__(self, device, lr, last_ckpt, on_stop=lambda: None):
        self.bad = torch.zeros((), dtype=torch.long, device=device)  # first bad step + 1 (0: none)
        self.lr, self.last_ckpt, self.on_stop = lr, last_ckpt, on_stop
        self.watched = []  # the names of the tensors record() watched

    def record(self, step, loss, **watched):
        finite = torch.isfinite(loss.detach())
        for t in watched.values():
            finite = finite & torch.isfinite(t).all()
        self.watched = list(watched)
        self.bad = torch.where((self.bad == 0) & ~finite, step + 1, self.bad)

    def stop(self, what):
        self.on_stop()
        raise RunError(f"training diverged: {what} (--lr {self.lr}); last good checkpoint: "
                       f"{self.last_ckpt}")

    def stop_if_diverged(self, sync_ranks=False):
        """sync_ranks: stop on the worst of the DDP ranks (a collective: every rank must call it at
        the same steps)."""
        bad = self.bad.clone()
        if sync_ranks:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad = bad.item()  # the one host sync
        if bad:
            what = "".join(f" (or {name})" for name in self.watched)
            self.stop(f"the loss{what} became nan/inf at step {bad}")

    def stop_if_nonfinite(self, step, *state_dicts):
        """Weights or buffers about to be saved that are nan/inf (e.g. BatchNorm running statistics
        gone to inf)."""
        bad = next((k for k in map(nonfinite, state_dicts) if k), None)
        if bad:
            self.stop(f"{bad} became nan/inf by step {step}")


# -----------------------------------------------------------------------------
# the run's upkeep, in one object: train.py's loop calls it at the points it names


class Run:
    """Everything a training run does besides the method: the out-dir's lock, the log (log.jsonl and
    W&B), the progress bar, the stop on Ctrl-C / SIGTERM, the divergence guard, img/s and the
    checkpoint. Each method's docstring starts with who calls it: "every
    rank" (all ranks at the same steps: a collective under DDP, or state each rank keeps) or "rank
    0" (the others may call it; it does nothing there)."""

    def __init__(self, out_dir, step, max_steps, *, resume, rank, ddp, device, lr, batch_size,
                 log_every, log_early, ckpt_every, save_every_rank, wandb_project="",
                 wandb_run_name="", config=None):
        """every rank: the signal stop and the divergence guard (the first step whose watched
        tensors went nan/inf, kept on the device). Rank 0 also takes the out-dir's lock and opens
        the log (W&B with wandb_project, logging `config`). lr: named by a divergence's line."""
        self.out_dir, self.master, self.rank, self.ddp = out_dir, rank == 0, rank, ddp
        self.max_steps, self.batch_size = max_steps, batch_size
        self.log_every, self.log_early = log_every, log_early
        self.ckpt_every, self.save_every_rank = ckpt_every, save_every_rank
        self.cuda = str(device).startswith("cuda")
        self.ckpt_path = os.path.join(out_dir, "ckpt.pt")
        os.makedirs(out_dir, exist_ok=True)
        self.lock = self.log = self.bar = None
        if self.master:
            # one run per out_dir, held until the process ends
            self.lock = refuse_busy_out_dir(out_dir)
            self.log = RunLog(out_dir, resume, step, wandb_project, wandb_run_name, config)
        # Ctrl-C / SIGTERM: checkpoint after this step, then stop
        self.stop = stop_after_the_step_on_signal()
        self.guard = DivergenceGuard(device, lr, f"step {step} in {self.ckpt_path}" if resume
                                     else "none written", on_stop=self.close_bar)
        # img/s: steps since the last log line over its time, the kNN monitor's left out
        self.step0, self.t0, self.t_eval = step, time.time(), 0.0

    def open_bar(self, step):
        """rank 0: the progress bar, on stdout (stderr carries errors alone, so a failure is exactly
        one line)."""
        self.bar = tqdm(total=self.max_steps, initial=step, disable=not self.master,
                        dynamic_ncols=True, file=sys.stdout)

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()

    def knn(self, monitor, backbone):
        """rank 0: the kNN monitor, monitor(backbone) -> top-1, under the bar's description (feature
        extraction takes a while on a CPU), its time left out of img/s, its value on the bar."""
        t = time.time()
        self.bar.set_description("kNN monitor")
        top1 = monitor(backbone)
        self.bar.set_description(None)
        self.t_eval += time.time() - t
        self.bar.set_postfix(knn=f"{top1:.4f}")
        return top1

    def log_due(self, step):
        """every rank: whether `step` gets a log line (every --log-every, every 10th up to
        --log-early, the last)."""
        early = step <= self.log_early and step % 10 == 0
        return step % self.log_every == 0 or early or step == self.max_steps

    def ckpt_due(self, step):
        """every rank: whether the loop saves after `step` (every --ckpt-every, the last, or a
        signal came)."""
        return step % self.ckpt_every == 0 or step == self.max_steps or bool(self.stop)

    def after_step(self, step, loss, **watched):
        """every rank, after each optimizer step: the divergence guard records whether the loss and
        the watched tensors stayed finite, on the device (no host sync); the bar moves, and before
        the first log line it shows the loss at steps 1, 2, 4, 8, ... (few host syncs). At log and
        checkpoint steps it stops a diverged run: a collective under DDP, the worst rank decides."""
        self.guard.record(step - 1, loss, **watched)
        self.bar.update(1)
        if self.master and step < self.log_every and step & (step - 1) == 0:
            self.bar.set_postfix(loss=f"{loss.item():.4f}")
        if self.log_due(step) or step % self.ckpt_every == 0:
            self.guard.stop_if_diverged(sync_ranks=self.ddp)

    def write(self, rec):
        """rank 0: one log record (log.jsonl, W&B)."""
        if self.master:
            self.log.write(rec)

    def img_per_s(self, step):
        """rank 0, at a log line: images per second since the last call (or the start), the kNN
        monitor's time left out; the next interval starts now."""
        if self.cuda:
            torch.cuda.synchronize()
        now = time.time()
        imgs = (step - self.step0) * self.batch_size / (now - self.t0 - self.t_eval)
        self.step0, self.t0, self.t_eval = step, now, 0.0
        return imgs

    def memory(self):
        """rank 0, at a log line: the peak GPU memory so far ({} on a CPU)."""
        return {"mem_gb": torch.cuda.max_memory_allocated() / 1e9} if self.cuda else {}

    def show(self, numbers, line=None):
        """rank 0: the bar's numbers ({name: text}) and, if given, a line above the bar (on stdout:
        stderr carries errors alone)."""
        self.bar.set_postfix(**numbers)
        if line:
            self.bar.write(line)

    def save(self, state, *checked):
        """every rank, when ckpt_due: the checkpoint, atomically, by rank 0 (and by every rank with
        --save-every-rank, as ckpt_rank{r}.pt); never a diverged run's. state: everything a resume
        needs; checked: the state dicts that must hold no nan/inf."""
        paths = [self.ckpt_path] if self.master else []
        if self.save_every_rank:
            paths.append(os.path.join(self.out_dir, f"ckpt_rank{self.rank}.pt"))
        for path in paths:
            self.guard.stop_if_diverged()
            self.guard.stop_if_nonfinite(state["step"], *checked)
            save_checkpoint(state, path)
            if path == self.ckpt_path:
                self.guard.last_ckpt = f"step {state['step']} in {path}"

    def stop_if_signalled(self, step):
        """every rank, after the checkpoint: a Ctrl-C / SIGTERM stops the run here, with one line
        (each rank stops at its own next step; torchrun ends any rank still waiting on the
        others)."""
        if self.stop:
            self.close_bar()
            where = f"; checkpoint {self.ckpt_path}: continue with the same flags plus --resume"
            raise RunError(f"stopped by {signal.Signals(self.stop[0]).name} at step {step}"
                           + (where if self.master else ""))

    def close(self, step, knn_init=None, knn_last=None):
        """every rank, at the end: the bar closes; rank 0 says where the checkpoint is and, with the
        kNN monitor, the gain over the same network at random init, then closes the log (and W&B)
        and the lock."""
        self.close_bar()
        if self.master:
            print(f"done: step {step}, checkpoint {self.ckpt_path}")
            if knn_init is not None and knn_last is not None:
                print(f"kNN top-1: random init {100 * knn_init:.2f} -> trained "
                      f"{100 * knn_last:.2f} ({100 * (knn_last - knn_init):+.2f}) after {step} "
                      "steps")
            self.log.close()
            self.lock.close()

