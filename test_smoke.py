"""
CPU tests against independent references: hand-computed predictors, a second DDP rank's weights, torchvision.
Run (with the paper tooling's tests): python -m pytest -q test_smoke.py paper/test_paper.py
"""
import copy
import datetime
import json
import math
import os
import pickle
import random
import re
import shutil
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF

import plumbing
import train as T
from data import (FMNIST_SYSTEM_DIR, extract_features, knn_eval, load_dataset, load_split, normalisation,
                  val_mask)
from directpred import (COLLAPSE_ERANK, CollapseWatch, DirectCopy, DirectPred, OptimalPredictor,
                        PartitionedPredictor, diagnostics, effective_rank, feature_stats)

ROOT = Path(__file__).resolve().parent
# fp32 pinned (--bf16 0): runs compared with each other or with an fp32 reference must not depend on whether this
# CPU has bf16 instructions (--bf16 auto measures); the bf16 paths have their own tests, which pass --bf16 1
TINY = ["--dataset", "fake", "--fake-size", "128", "--width", "4", "--proj-hidden", "32", "--proj-dim", "16",
        "--batch-size", "32", "--log-every", "1", "--bf16", "0", "--device", "cpu"]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run(args, nproc=1, expect_ok=True, script="train.py", env=None):
    """Run train.py (or another script of the repo; under torchrun if nproc > 1) in a fresh process, on the CPU
    unless the arguments name a --device: the suite tests the CPU paths on any machine (GPU tests: CUDA below)."""
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = [*map(str, args)] + ([] if "--device" in map(str, args) else ["--device", "cpu"])
    r = subprocess.run(launcher + [str(ROOT / script), *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env=env)
    if expect_ok:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def one_line_error(r, needle):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stdout[-500:] + r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def load_json(path):
    return json.loads(Path(path).read_text())


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def log_lines(out_dir):
    return [json.loads(line) for line in open(Path(out_dir) / "log.jsonl")]


def config_error(cfg, world_size=1):
    """train.py's check of a parsed config (train.config_error), as train.py calls it."""
    return T.config_error(cfg, T.get_parser(), world_size)


# -----------------------------------------------------------------------------
# DirectPred against hand computations (directpred.py), in fp32 and under bf16 autocast


Q = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]

LAM = torch.tensor([4.0, 1.0, 0.25, 0.0, -0.1], dtype=torch.float64)  # one negative eigenvalue, to be clamped

def wp_from(F, cls=DirectPred, **kw):
    dp = cls(5, **kw).double()  # F_hat in float64: sqrt would magnify fp32 rounding of the zero eigenvalue
    dp.F_hat.copy_(F)
    dp.n_updates = 1
    W = torch.zeros(5, 5, dtype=torch.float64)
    assert dp.set_predictor(W)
    return W

@pytest.mark.parametrize("kw, p_hand", [
    # s / s_max = [1, 1/4, 1/16, 0, 0 (clamped)] -> sqrt = [1, 1/2, 1/4, 0, 0] -> + eps
    (dict(eps=0.1), [1.1, 0.6, 0.35, 0.1, 0.1]),
    (dict(eps=0.0), [1.0, 0.5, 0.25, 1e-4, 1e-4]),  # the 1e-4 floor
    (dict(eps=0.1, exponent=1.0), [1.1, 0.35, 0.1625, 0.1, 0.1]),  # DirectSet(1)
    # Table 7's offset c inside the root, floored at 1e-4 BEFORE the root, as the authors' code: byol_trainer.py,
    # compute_w_corr, dyn_eps_inside branch, `(eigen_values + self.dyn_eps).clamp(1e-4).pow(1/self.dyn_convert)`
    # with dyn_eps = -c: s - c = [0.9, 0.15, -0.0375, -0.1, -0.1] -> the floor gives sqrt(1e-4) = 1e-2, not 1e-4
    (dict(eps=0.0, offset=0.1), [0.9 ** 0.5, 0.15 ** 0.5, 1e-2, 1e-2, 1e-2]),
    (dict(eps=0.0, offset=-0.1), [1.1 ** 0.5, 0.35 ** 0.5, 0.1625 ** 0.5, 0.1 ** 0.5, 0.1 ** 0.5]),  # c < 0: no floor
    (dict(eps=0.1, cls=DirectCopy), [1.1, 0.35, 0.1625, 0.1, 0.075]),  # F / lambda_max + eps I, no clamp
])
def test_directpred_matches_hand_computed_predictor(kw, p_hand):
    F = Q @ torch.diag(LAM) @ Q.T
    W = wp_from(F, **kw)
    torch.testing.assert_close(W, Q @ torch.diag(torch.tensor(p_hand, dtype=torch.float64)) @ Q.T, atol=2e-6, rtol=0)


def test_directpred_ema_and_freq_with_sgd_in_between():
    """F_hat = first batch, then rho-EMA; Wp set on updates 1, 1+freq, ...; plain SGD moves it in between."""
    torch.manual_seed(0)
    rho, freq = 0.3, 3
    dp = DirectPred(4, rho=rho, eps=0.1, freq=freq)
    pred = torch.nn.Linear(4, 4, bias=False)
    opt = torch.optim.SGD(pred.parameters(), lr=0.1, momentum=0.9)
    F_ref, last_set = None, None
    for t in range(8):
        f = torch.randn(8, 4)
        dp.update(f)
        F_t = f.double().T @ f.double() / 8
        F_ref = F_t if F_ref is None else rho * F_ref + (1 - rho) * F_t
        torch.testing.assert_close(dp.F_hat.double(), F_ref, atol=1e-6, rtol=0)
        ((pred(torch.randn(8, 4)) - torch.randn(8, 4)) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        after_sgd = pred.weight.detach().clone()
        did_set = dp.set_predictor(pred.weight.data)
        assert did_set == (t % freq == 0)
        if did_set:
            s, U = torch.linalg.eigh(F_ref)
            p = (s.clamp(min=0) / s.max()).sqrt() + 0.1
            torch.testing.assert_close(pred.weight.detach().double(), U @ torch.diag(p) @ U.T, atol=1e-5, rtol=0)
            last_set = pred.weight.detach().clone()
        else:
            assert torch.equal(pred.weight.detach(), after_sgd)  # SGD's result kept...
            assert not torch.allclose(after_sgd, last_set)  # ...and SGD did move Wp
    assert dp.n_sets == 3  # updates 1, 4, 7


DP_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from directpred import DirectPred, PartitionedPredictor
dist.init_process_group("gloo")
r = dist.get_rank()
out = {}
for center in (False, True):
    dp = DirectPred(4, rho=0.3, eps=0.1, center=center)
    for t in range(3):  # each rank sees its own half of the global batch
        dp.update(torch.randn(6, 4, generator=torch.Generator().manual_seed(100 * t + r)) + r)
    W = torch.zeros(4, 4)
    dp.set_predictor(W)
    out[center] = (dp.F_hat, W, dp.mu_hat if center else None)
torch.save(out, f"{sys.argv[2]}/rank{r}.pt")
from plumbing import end_distributed
end_distributed()
"""

def test_directpred_ddp_F_hat_is_the_global_batch_one(tmp_path):
    script = tmp_path / "dp_ddp.py"
    script.write_text(DP_DDP_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(ROOT), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = [load(tmp_path / f"rank{i}.pt") for i in range(2)]
    for center in (False, True):
        F_ref = mu_ref = None
        for t in range(3):
            f = torch.cat([torch.randn(6, 4, generator=torch.Generator().manual_seed(100 * t + i)) + i
                           for i in range(2)]).double()  # the global batch (12, 4)
            F_ref = f.T @ f / 12 if F_ref is None else 0.3 * F_ref + 0.7 * f.T @ f / 12
            mu_ref = f.mean(0) if mu_ref is None else 0.3 * mu_ref + 0.7 * f.mean(0)
        for rank in got:
            torch.testing.assert_close(rank[center][0].double(), F_ref, atol=1e-5, rtol=0)
            if center:  # --center: the mean's EMA over the global batch too
                torch.testing.assert_close(rank[center][2].double(), mu_ref, atol=1e-5, rtol=0)
        assert torch.equal(got[0][center][0], got[1][center][0]) and torch.equal(got[0][center][1], got[1][center][1])


def test_directpred_statistics_stay_fp32_under_bf16_autocast():
    """DirectPred's statistics (and the partitions' side thresholds) are computed in fp32 whatever the autocast
    context: under CPU bf16 autocast they equal a float64 computation of the same inputs to fp32 precision (a bf16
    einsum was off by ~1e-3, which moved Wp by 0.3-4%)."""
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(64, 16, generator=g) * torch.linspace(3, 0.1, 16) + 0.5 for _ in range(2)]
    pp = PartitionedPredictor(16, 3)
    ref = PartitionedPredictor(16, 3).double()
    ref.directions.copy_(pp.directions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pp(*views)
        dp = DirectPred(16)
        dp.update(torch.cat(views))
    ref(*[v.double() for v in views])
    assert pp.F_hat.dtype == dp.F_hat.dtype == torch.float32
    torch.testing.assert_close(pp.F_hat.double(), ref.F_hat, rtol=1e-6, atol=1e-6)
    f = torch.cat(views).double()
    torch.testing.assert_close(dp.F_hat.double(), f.T @ f / len(f), rtol=1e-6, atol=1e-6)


def test_bf16_rounding_of_the_predictor_input_moves_wp_by_less_than_1e_3():
    """Under bf16 autocast the projector's output (DirectPred's input f) is bf16. F_hat is built in fp32 from it; the
    rounding of f alone moves Wp by less than 1e-3 (relative, Frobenius) on a spectrum like a trained run's.
    (The whole network in bf16 against fp32 moves Wp by more, 0.5-1.7% on the width-16 laptop network, mostly through
    the backbone's activations and far below Wp's batch-to-batch change of 15-27%: README, Speed.)"""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(256, 128, generator=g) @ torch.diag(torch.logspace(0, -2, 128)) + 0.3
    W = []
    for x in (f, f.bfloat16().float()):
        dp = DirectPred(128)
        dp.update(x)
        W.append(torch.zeros(128, 128))
        dp.set_predictor(W[-1])
    assert (W[1] - W[0]).norm() / W[0].norm() < 1e-3


# -----------------------------------------------------------------------------
# the whole training step against an independent float64 reference: train.py's train_step and a plain rewrite of the
# paper's step (Tian, Chen, Ganguli 2021, Sec. 4, Eq. 18, in the authors' order) share only the network definition
# (the same initial modules, deep-copied) and the two views


def ref_wp(F, cfg):
    """Wp from F (d, d) by the paper's rule, as the authors' compute_w_corr (byol_trainer.py, balance_type
    boost_scale): eigenvalues clamped at 0 and max-normalised; p_j = s_j^1/2 + eps floored at 1e-4, or with Table 7's
    offset (dyn_eps_inside, dyn_eps = -c) p_j = max(s_j - c, 1e-4)^1/2. DirectCopy (arXiv 2110.04947): F / lambda_max
    + eps I."""
    s, U = torch.linalg.eigh(F)
    if cfg["predictor"] == "directcopy":
        return F / s[-1] + cfg["eps"] * torch.eye(len(F), dtype=F.dtype)
    s = s.clamp(min=0) / s.max()
    if cfg["offset"]:
        p = (s - cfg["offset"]).clamp(min=1e-4).sqrt()
    else:
        p = (s.sqrt() + cfg["eps"]).clamp(min=1e-4)
    return U @ torch.diag(p) @ U.T


def ref_ema(F_hat, F, rho):
    """F_hat <- rho F_hat + (1 - rho) F; the first batch sets it."""
    return F if F_hat is None else rho * F_hat + (1 - rho) * F


def reference_run(online, target, cfg, views, shards=1):
    """The paper's step in float64, steps t = 0, 1, ...: online z = projector(backbone(x)) of both views; DirectPred's
    F = mean f f^T of both views' z (every rank's rows), F_hat its rho-EMA, taken before backward; p = Wp z (or the
    2-layer predictor; or, with --partitions n, the mean over n random projections of the Wp of the side of each
    projection's mean the sample lies on, one F_hat per side); targets from the EMA network under no_grad (SimSiam:
    the online z), detached; loss 2 - 2 cos(p, t) (or 1/2 ||p - t||^2) per pair, batch-averaged, summed over the two
    pairings; SGD (momentum, weight decay, the predictor's lr ratio); --sym-wp; Wp <- U diag(p) U^T every freq steps
    after the SGD step; target <- tau target + (1 - tau) online, predictor excluded. shards > 1: DDP without SyncBN,
    each rank's shard normalised by its own BN statistics, gradients averaged, F over the global batch, BN running
    statistics those of rank 0. Returns (online, target, F_hat, Wp)."""
    net, tgt = copy.deepcopy(online), copy.deepcopy(target)
    pred = net.predictor
    trunk = [p for n, p in net.named_parameters() if not n.startswith("predictor.")]
    groups = [dict(params=trunk, weight_decay=cfg["wd"])]
    if list(pred.parameters()):
        groups.append(dict(params=list(pred.parameters()), lr=cfg["lr"] * cfg["pred_lr_ratio"],
                           weight_decay=cfg["pred_wd"]))
    opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
    n_part = cfg["partitions"]
    F_hat = [None] * (2 * n_part if n_part > 1 else 1)
    mu_hat = M2_hat = None  # --center: the EMA of E[f]; --predictor optimal: the EMA of E[z f^T]

    def embed(m, x):
        return m.projector(m.backbone(x))

    def loss_fn(p, t):
        if cfg["loss"] == "cosine":
            return 2 - 2 * torch.nn.functional.cosine_similarity(p, t, dim=-1).mean()
        return 0.5 * (p - t).pow(2).sum(-1).mean()

    for t, (x1, x2) in enumerate(views):
        bn_rank0 = None
        losses, fs, crosses = [], [], []
        for x1s, x2s in zip(x1.chunk(shards), x2.chunk(shards)):
            z1, z2 = embed(net, x1s), embed(net, x2s)
            if tgt is not None:
                with torch.no_grad():
                    t1, t2 = embed(tgt, x1s), embed(tgt, x2s)
            else:
                t1, t2 = z1, z2
            t1, t2 = t1.detach(), t2.detach()
            fs.append(torch.cat([z1, z2]).detach())
            crosses.append(t2.T @ z1.detach() + t1.T @ z2.detach())  # sums of z f^T, each f with its target
            if n_part > 1:  # statistics of every side first (both views), then each sample's mean Wp
                R = pred.directions
                sides = [z.detach() @ R >= (z.detach() @ R).mean(0) for z in (z1, z2)]  # (N, n) positive side
                for i in range(n_part):
                    for k, side in ((2 * i, True), (2 * i + 1, False)):
                        rows = torch.cat([z.detach()[s[:, i] == side] for z, s in zip((z1, z2), sides)])
                        F_hat[k] = ref_ema(F_hat[k], rows.T @ rows / len(rows), cfg["rho"])
                Wps = [ref_wp(F, cfg) for F in F_hat]
                p1, p2 = (torch.stack([sum(Wps[2 * i + (0 if s[n, i] else 1)] @ z[n] for i in range(n_part)) / n_part
                                       for n in range(len(z))]) for z, s in zip((z1, z2), sides))
            else:
                p1, p2 = pred(z1), pred(z2)
            losses.append(loss_fn(p1, t2) + loss_fn(p2, t1) if cfg["symmetric"] else loss_fn(p1, t2))
            if bn_rank0 is None:  # rank 0's BN running statistics (DDP broadcasts rank 0's buffers)
                bn_rank0 = [b.clone() for m in (net, tgt) if m is not None for b in m.buffers()]
        if cfg["predictor"] in ("direct", "directcopy", "optimal") and n_part == 1:  # before backward: this F
            f = torch.cat(fs)  # (2N, d) the global batch's predictor inputs
            F_hat[0] = ref_ema(F_hat[0], f.T @ f / len(f), cfg["rho"])
            if cfg["center"]:
                mu_hat = ref_ema(mu_hat, f.mean(0), cfg["rho"])
            if cfg["predictor"] == "optimal":
                M2_hat = ref_ema(M2_hat, sum(crosses) / len(f), cfg["rho"])
        opt.zero_grad()
        (sum(losses) / shards).backward()  # DDP averages the ranks' gradients
        opt.step()
        with torch.no_grad():
            for b, b0 in zip([b for m in (net, tgt) if m is not None for b in m.buffers()], bn_rank0):
                b.copy_(b0)  # (after backward: batch norm saves its running statistics for it)
            if cfg["sym_wp"] and cfg["predictor"] == "mlp":  # (pred[-1]: the second Linear, with or without BN)
                W = 0.5 * (pred[0].weight + pred[-1].weight.T)
                pred[0].weight.copy_(W)
                pred[-1].weight.copy_(W.T)
            elif cfg["sym_wp"]:
                pred.weight.copy_(0.5 * (pred.weight + pred.weight.T))
            if cfg["predictor"] in ("direct", "directcopy") and n_part == 1 and t % cfg["freq"] == 0:
                F = F_hat[0] - torch.outer(mu_hat, mu_hat) if cfg["center"] else F_hat[0]
                pred.weight.copy_(ref_wp(F, cfg))
            if cfg["predictor"] == "optimal" and t % cfg["freq"] == 0:
                pred.weight.copy_(authors_optimal(F_hat[0], M2_hat, cfg["eps"], cfg["optimal_rule"]))
            if tgt is not None:
                for pt, po in zip(tgt.parameters(), trunk):
                    pt.copy_(cfg["ema"] * pt + (1 - cfg["ema"]) * po)
    Wp = torch.stack([ref_wp(F, cfg) for F in F_hat]) if n_part > 1 else getattr(pred, "weight", None)
    return net, tgt, F_hat, Wp


REF_BASE = TINY + ["--ema", "0.9", "--lr", "0.05"]  # a target that moves 10% a step: an EMA mistake shows
REF_VIEWS = 10


def ref_init(cfg):
    """float64 online and target networks from one seed, and the 10 steps' views (16 images of 3 x 16 x 16 each)."""
    torch.manual_seed(0)
    online = T.build_model(cfg, 3).double()
    target = T.build_target(online, cfg, 3)
    g = torch.Generator().manual_seed(1)
    views = [tuple(torch.randn(16, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
             for _ in range(REF_VIEWS)]
    return online, target, views


def train_py_run(online, target, cfg, views, model=None, shard=slice(None)):
    """train.py's own pieces: build_directpred, build_optimizer, ema_pairs, tau_at and train_step, in float64.
    model: the online network as called (DDP-wrapped), shard: this rank's rows of each view."""
    dp = T.build_directpred(cfg, "cpu")
    dp = dp.double() if dp is not None else None
    optimizer, ema = T.build_optimizer(online, cfg), T.ema_pairs(target, online)
    for step, (x1, x2) in enumerate(views):
        T.train_step(model or online, online, target, dp, optimizer, x1[shard], x2[shard], cfg, nullcontext(),
                     T.lr_at(step, cfg, 1000, 100), T.tau_at(step, cfg, 1000), ema)
    pred = online.predictor
    if dp is not None:
        F_hat, Wp = dp.F_hat, pred.weight
    elif cfg["partitions"] > 1:
        F_hat, Wp = pred.F_hat, pred.compute_Wp()
    else:
        F_hat, Wp = None, getattr(pred, "weight", None)
    return dict(online=online.state_dict(), target=target.state_dict() if target is not None else None,
                F_hat=F_hat, Wp=Wp)


def assert_matches_reference(got, ref):
    net, tgt, F_hat, Wp = ref
    close = dict(atol=1e-10, rtol=0)
    assert got["online"].keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        if k in ("predictor.F_hat", "predictor.seen"):  # the partitioned predictor's statistics: as F_hat below
            continue
        torch.testing.assert_close(got["online"][k], v, **close, msg=lambda m: f"online {k}: {m}")
    assert (got["target"] is None) == (tgt is None)
    if tgt is not None:
        assert got["target"].keys() == tgt.state_dict().keys()
        for k, v in tgt.state_dict().items():
            torch.testing.assert_close(got["target"][k], v, **close, msg=lambda m: f"target {k}: {m}")
    if F_hat[0] is not None:
        torch.testing.assert_close(got["F_hat"], torch.stack(F_hat).view_as(got["F_hat"]), **close)
    if Wp is not None:
        torch.testing.assert_close(got["Wp"].view_as(Wp), Wp, **close)


REF_CONFIGS = {
    "direct freq 1": [], "direct freq 3 (Wp trained between sets)": ["--freq", "3"],
    "offset 0.1, eps 0 (Table 7)": ["--offset", "0.1", "--eps", "0"], "directcopy": ["--predictor", "directcopy"],
    "2 partitions": ["--partitions", "2"], "asymmetric loss": ["--symmetric", "0"], "SimSiam": ["--ema", "0"],
    "2-layer predictor, sym-wp": ["--predictor", "mlp", "--sym-wp", "1"],
    "2-layer predictor without BN, sym-wp": ["--predictor", "mlp", "--pred-bn", "0", "--sym-wp", "1"],
    "centred F (dyn_zero_mean)": ["--center", "1"],
    **{f"optimal plug-in, {r}": ["--predictor", "optimal", "--optimal-rule", r]
       for r in ("solve-as-run", "solve", "minimal-space")},
    "linear predictor, l2 loss, alpha_p 3": ["--predictor", "linear", "--loss", "l2", "--pred-lr-ratio", "3"],
}


@pytest.mark.parametrize("flags", REF_CONFIGS.values(), ids=REF_CONFIGS.keys())
def test_the_training_step_equals_a_float64_reference_of_the_papers_step(flags):
    """10 steps of train.py's train_step and of reference_run from one init on the same views, in float64: online and
    target weights (and BN statistics), F_hat and Wp equal to 1e-10."""
    cfg = T.parse_config(REF_BASE + flags)
    online, target, views = ref_init(cfg)
    ref = reference_run(online, target, cfg, views)
    init = {k: v.clone() for k, v in online.state_dict().items() if torch.is_tensor(v)}
    got = train_py_run(online, target, cfg, views)
    moved = max((got["online"][k] - v).abs().max() for k, v in init.items() if v.is_floating_point())
    assert moved > 1e-3  # the weights did move: a step that did nothing would not pass as equal
    assert_matches_reference(got, ref)


REF_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from contextlib import nullcontext
from torch.nn.parallel import DistributedDataParallel as DDP
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import test_smoke, train as T, plumbing
dist.init_process_group("gloo")
r = dist.get_rank()
cfg = T.parse_config(test_smoke.REF_BASE)
online, target, views = test_smoke.ref_init(cfg)
B = len(views[0][0]) // 2
got = test_smoke.train_py_run(online, target, cfg, views, model=DDP(online), shard=slice(r * B, (r + 1) * B))
if r == 0:
    torch.save(got, sys.argv[3])
plumbing.end_distributed()
"""


def test_a_2_rank_ddp_step_equals_the_float64_reference_on_the_global_batch(tmp_path):
    """2 gloo ranks, each with half of every view, against reference_run on the whole batch in 2 shards: gradients
    averaged over the ranks, F_hat of the global batch, BN statistics per rank (no SyncBN on a CPU)."""
    script = tmp_path / "ref_ddp.py"
    script.write_text(REF_DDP_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(ROOT), str(Path(__file__).parent), str(tmp_path / "got.pt")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = T.parse_config(REF_BASE)
    online, target, views = ref_init(cfg)
    assert_matches_reference(load(tmp_path / "got.pt"), reference_run(online, target, cfg, views, shards=2))
    with pytest.raises(AssertionError):  # the 2-rank run is not the single-process one (per-rank BN statistics)
        assert_matches_reference(load(tmp_path / "got.pt"), reference_run(online, target, cfg, views, shards=1))


# -----------------------------------------------------------------------------
# train.py end to end: DDP ranks, resume, every predictor, the EMA target, the saved backbone


def test_ddp_ranks_hold_bitwise_identical_weights(tmp_path):
    run(TINY + ["--fake-size", "256", "--predictor", "direct", "--ema", "0.99", "--max-steps", "5",
                "--save-every-rank", "--sync-bn", "0", "--out-dir", tmp_path], nproc=2)
    a, b = load(tmp_path / "ckpt_rank0.pt"), load(tmp_path / "ckpt_rank1.pt")
    assert a["step"] == b["step"] == 5
    names = {n for n, _ in T.build_model(a["config"], 3).named_parameters()}
    for key in ("online", "target"):
        params = [k for k in a[key] if k in names]  # weights; BN running stats are per-rank without SyncBN
        assert len(params) > 40
        for k in params:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs between ranks"
    assert torch.equal(a["directpred"]["F_hat"], b["directpred"]["F_hat"])
    assert a["directpred"]["_extra_state"]["n_updates"] == 5
    # the two ranks trained on different halves of each batch: rank 1's BN statistics are its own
    assert not torch.equal(a["online"]["backbone.bn1.running_mean"], b["online"]["backbone.bn1.running_mean"])


def test_resume_is_exact(tmp_path):
    flags = TINY + ["--predictor", "direct", "--freq", "2", "--ema", "0.99", "--ema-schedule", "cosine",
                    "--lr-schedule", "cosine", "--warmup-epochs", "1", "--epochs", "3"]  # 4 steps/epoch
    run(flags + ["--max-steps", "6", "--out-dir", tmp_path / "straight"])
    run(flags + ["--max-steps", "3", "--out-dir", tmp_path / "split"])  # stops mid-epoch
    run(flags + ["--max-steps", "6", "--out-dir", tmp_path / "split", "--resume"])
    a, b = load(tmp_path / "straight" / "ckpt.pt"), load(tmp_path / "split" / "ckpt.pt")
    assert a["step"] == b["step"] == 6
    for key in ("online", "target"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k}"
    assert torch.equal(a["directpred"]["F_hat"], b["directpred"]["F_hat"])
    assert a["directpred"]["_extra_state"] == b["directpred"]["_extra_state"] == {"n_updates": 6, "n_sets": 3}
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in a["online"])
    steps = [r["step"] for r in log_lines(tmp_path / "split")]
    assert steps == [0, 1, 2, 3, 4, 5, 6]  # step 0: the random init


@pytest.mark.parametrize("predictor", ["none", "linear", "mlp", "direct", "directcopy", "optimal"])
@pytest.mark.parametrize("ema", ["0", "0.996"])
def test_every_predictor_trains(tmp_path, predictor, ema):
    run(TINY + ["--predictor", predictor, "--ema", ema, "--max-steps", "3", "--out-dir", tmp_path])
    logs = log_lines(tmp_path)
    assert [r["step"] for r in logs] == [0, 1, 2, 3]
    assert all(np.isfinite(r["loss"]) and 0 <= r["loss"] <= 8 for r in logs)  # two pairings of 2 - 2cos in [0, 4]
    ckpt = load(tmp_path / "ckpt.pt")
    assert (ckpt["target"] is None) == (ema == "0")
    if predictor == "direct":  # Wp = U diag(p) U^T was just written: symmetric, with F_hat's eigenvectors
        Wp, F_hat = ckpt["online"]["predictor.weight"].double(), ckpt["directpred"]["F_hat"].double()
        U = torch.linalg.eigh(F_hat).eigenvectors
        assert (Wp - Wp.T).norm() < 1e-6 * Wp.norm() and torch.cosine_similarity(U, Wp @ U, dim=0).min() > 0.999
        assert min(logs[-1]["align"]) > 0.5  # the log's F is the running statistic of every predictor, not F_hat
    if predictor == "linear":  # trained by SGD from a random init: not symmetric
        assert logs[-1]["asym"] > 0.1


def torchvision_resnet18(ckpt):
    """torchvision's resnet18 with the checkpoint's backbone loaded (strict; its fc dropped for an Identity)."""
    tv = torchvision.models.resnet18()
    sd = {k[len("backbone."):]: v for k, v in ckpt["online"].items() if k.startswith("backbone.")}
    tv.load_state_dict({**sd, "fc.weight": tv.fc.weight, "fc.bias": tv.fc.bias}, strict=True)
    tv.fc = torch.nn.Identity()
    return tv

@pytest.mark.parametrize("precision", [[], ["--bf16", "1", "--channels-last", "1"]])
def test_backbone_loads_into_torchvision_resnet18(tmp_path, precision):
    """The saved backbone loads into torchvision.models.resnet18 (strict) and computes the same features, also when
    trained in bf16 with channels_last."""
    run(["--dataset", "fake", "--fake-size", "16", "--batch-size", "8", "--stem", "imagenet", "--proj-hidden", "32",
         "--proj-dim", "16", "--max-steps", "1", *precision, "--out-dir", tmp_path])
    ckpt = load(tmp_path / "ckpt.pt")
    tv = torchvision_resnet18(ckpt)
    ours = T.build_model(ckpt["config"], 3)
    ours.load_state_dict(ckpt["online"])
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours.backbone.eval()(x), tv.eval()(x))


def test_ema_update_leaves_the_target_without_an_autograd_graph():
    """The EMA update runs under no_grad: after train.py's steps every target parameter is a leaf with requires_grad
    False and no grad_fn, so nothing is chained step after step (without no_grad each step added one LerpBackward0
    node per parameter, never freed: host memory grew with the step count)."""
    cfg = T.parse_config(REF_BASE)
    online, target, views = ref_init(cfg)
    train_py_run(online, target, cfg, views[:4])
    bad = [n for n, p in target.named_parameters() if p.requires_grad or p.grad_fn is not None or not p.is_leaf]
    assert len(list(target.parameters())) > 40 and bad == [], bad[:3]


# -----------------------------------------------------------------------------
# augmentation: per sample, and each op against torchvision


@pytest.mark.parametrize("preset", list(T.AUG))
@pytest.mark.parametrize("channels", [3, 1])
def test_augmentation_is_per_sample(preset, channels):
    x = torch.randint(0, 256, (1, channels, 32, 32), dtype=torch.uint8).expand(16, -1, -1, -1)  # identical images
    mean, std = torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1)
    gen = torch.Generator().manual_seed(0)
    for view in (0, 1):
        v = T.augment(x, T.AUG[preset], view, gen, 32, (0.08, 1.0), mean, std)
        assert v.shape == (16, channels, 32, 32)
        flat = v.flatten(1)
        dist = torch.cdist(flat, flat) + torch.eye(16) * 1e9
        assert dist.min() > 1e-3, "two images of the batch got the same view"


def jitter_reference(img, order, factors):
    """torchvision's functional ops on one image (C, H, W), in the image's own order."""
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for op in order.tolist():
        img = ops[op](img, factors[op])
    return img

@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_equals_torchvisions_ops_per_image(channels):
    """Given each image's parameters (jitter_params), the batched jitter equals torchvision's adjust_brightness /
    contrast / saturation / hue applied to that image alone in that image's order (saturation and hue leave
    1-channel images unchanged in both); each op alone too."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, channels, 12, 14, generator=g)
    on, factors, order = T.jitter_params(8, (0.8, 0.8, 0.8, 0.2), 1.0, g)
    out = T.apply_jitter(x, on, factors, order)
    for i in range(8):
        ref = jitter_reference(x[i], order[i], [float(f[i]) for f in factors])
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)
    identity = [torch.ones(8), torch.ones(8), torch.ones(8), torch.zeros(8)]
    for op in range(4):  # one op at a time, the others at their identity
        fs = [f if k == op else identity[k] for k, f in enumerate(factors)]
        out = T.apply_jitter(x, on, fs, order)
        for i in range(8):
            ref = jitter_reference(x[i], torch.tensor([op]), [float(f[i]) for f in fs])
            torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)
    off = T.apply_jitter(x, torch.zeros(8, dtype=torch.bool), factors, order)
    assert torch.equal(off, x)  # images that drew "no jitter" are untouched


@pytest.mark.parametrize("dataset, mean, std", [
    ("stl10", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # ToTensor only, train and test
    ("cifar10", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
])
def test_normalisation_is_the_authors_per_dataset(dataset, mean, std):
    """The per-channel normalisation of a view (and of the probe's features), as the authors' data/transforms.py at
    luckmatters@671fca5: a constant image (unchanged by crops and flips) comes out as (v / 255 - mean) / std."""
    cfg = T.parse_config(["--dataset", dataset, "--jitter", "0"])
    aug = dict(T.aug_of(cfg), gray_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))
    m, s = normalisation(dataset, "cpu")
    x = torch.full((2, 3, 40, 40), 200, dtype=torch.uint8)
    got = T.augment(x, aug, 0, torch.Generator().manual_seed(0), 32, (0.5, 1.0), m, s)
    for c in range(3):
        torch.testing.assert_close(got[:, c], torch.full_like(got[:, c], (200 / 255 - mean[c]) / std[c]))


def test_grey_solarize_hue_and_blur_equal_torchvisions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 24, 24, generator=g)
    torch.testing.assert_close(T.gray(x).expand_as(x), TF.rgb_to_grayscale(x, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(T.solarize(x), TF.solarize(x, 0.5))
    for shift in (-0.3, 0.1):
        torch.testing.assert_close(T.adjust_hue(x, torch.full((4,), shift)), TF.adjust_hue(x, shift), atol=1e-5, rtol=0)
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0])
    blurred = T.gaussian_blur(x, sigma, 9)
    for i in range(4):
        ref = TF.gaussian_blur(x[i], [9, 9], [sigma[i].item()] * 2)
        torch.testing.assert_close(blurred[i], ref, atol=1e-5, rtol=0)


def test_resized_crop_equals_torchvisions_crop_then_resize():
    """Given the boxes, one grid_sample for the batch equals torchvision's resized_crop (bilinear, no antialias) and
    hflip per image, to float precision, for every box at least as large as the output. Smaller boxes (upsampling)
    differ only in the outer half pixel, where grid_sample reads the neighbouring pixels and the crop clamps; the
    README gives the measured size of that, and of torchvision's antialiasing when a large box is shrunk."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 40, 48, generator=g)
    i, j, h, w = (torch.tensor(v, dtype=torch.float32) for v in ([0, 3, 10, 0, 5, 2], [0, 7, 1, 16, 20, 0],
                                                                  [40, 30, 24, 20, 35, 38], [48, 33, 40, 20, 28, 25]))
    flip = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    out = T.resized_crop(x, i, j, h, w, flip, 20)
    for k in range(6):
        ref = TF.resized_crop(x[k], int(i[k]), int(j[k]), int(h[k]), int(w[k]), [20, 20], antialias=False)
        ref = ref.flip(-1) if flip[k] < 0 else ref
        torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max()

@pytest.mark.parametrize("H, W, scale", [(32, 32, (0.08, 1.0)), (32, 48, (0.08, 1.0)), (32, 64, (0.7, 1.0))])
def test_crop_boxes_are_distributed_as_torchvisions_get_params(H, W, scale):
    """20000 boxes of crop_params against 20000 of torchvision's RandomResizedCrop.get_params: the area fraction, the
    log aspect ratio, the top and left offsets (two-sample KS statistic < 0.025: a p-value of about 1e-5 if they
    were the same distribution), the share of centre-crop fallbacks (within 0.01; the last case, a 2:1 image with
    scale 0.7-1, falls back often) and the flip rate (0.5 +- 0.015)."""
    n = 20000
    i, j, h, w, flip = (t.double().numpy() for t in T.crop_params(n, H, W, scale, torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    ref = np.array([torchvision.transforms.RandomResizedCrop.get_params(torch.empty(1, H, W), list(scale),
                                                                        [3 / 4, 4 / 3]) for _ in range(n)], float)
    ri, rj, rh, rw = ref.T
    for ours, theirs in ((h * w / (H * W), rh * rw / (H * W)), (np.log(w / h), np.log(rw / rh)), (i, ri), (j, rj)):
        assert ks_statistic(ours, theirs) < 0.025
    fallback = lambda hh, ww: np.mean((hh == H) & (ww == min(W, round(H * 4 / 3))) if W / H > 4 / 3 else 0.0)
    assert abs(fallback(h, w) - fallback(rh, rw)) < 0.01
    assert abs((flip < 0).mean() - 0.5) < 0.015


def test_every_random_decision_is_drawn_per_image():
    """Within one batch, images draw their own crop box, flip, jitter on/off, factors and order, grey, blur sigma and
    solarize decision (one shared draw per batch is a known bug of a popular BYOL repo)."""
    g = torch.Generator().manual_seed(0)
    B = 64
    i, j, h, w, flip = T.crop_params(B, 32, 32, (0.08, 1.0), g)
    assert len({(a, b, c, d) for a, b, c, d in zip(i.tolist(), j.tolist(), h.tolist(), w.tolist())}) > B // 2
    assert 0 < (flip < 0).sum() < B
    on, factors, order = T.jitter_params(B, (0.4, 0.4, 0.4, 0.1), 0.8, g)
    assert 0 < on.sum() < B and all(f.unique().numel() == B for f in factors)
    assert len({tuple(o) for o in order.tolist()}) > 10
    x = torch.rand(1, 3, 16, 16, generator=g).expand(B, -1, -1, -1).mul(255).to(torch.uint8)  # one image, B times
    zero, one = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    only = dict(jitter=(0, 0, 0, 0), jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))
    grey = T.augment(x, dict(only, gray_p=0.5), 0, g, 16, (1.0, 1.0), zero, one)
    n_grey = int((grey[:, 0] == grey[:, 1]).flatten(1).all(1).sum())
    sol = T.augment(x, dict(only, solarize_p=(0.5, 0.5)), 0, g, 16, (1.0, 1.0), zero, one)
    n_sol = int((sol.flatten(1).max(1).values <= 0.5).sum())
    big = torch.rand(1, 3, 48, 48, generator=g).expand(B, -1, -1, -1).mul(255).to(torch.uint8)  # blur kernel: 5 px
    blur = T.augment(big, dict(only, blur_p=(1.0, 1.0)), 0, g, 48, (1.0, 1.0), zero, one)
    assert 0 < n_grey < B and 0 < n_sol < B
    assert blur.flatten(1).std(1).unique().numel() > B // 2  # each image its own sigma (std is flip-invariant)


# -----------------------------------------------------------------------------
# data: loaders on files in the real on-disk formats, the validation split


def test_cifar_pickles_and_stl_binaries(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    imgs = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs[name] = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        pickle.dump({"data": imgs[name], "labels": list(rng.integers(0, 10, 20))}, open(base / name, "wb"))
    x, y = load_dataset("cifar10", str(tmp_path), "train")
    assert x.shape == (100, 3, 32, 32) and y.shape == (100,) and x.dtype == torch.uint8
    assert torch.equal(x[20], torch.from_numpy(imgs["data_batch_2"][0].reshape(3, 32, 32)))
    run(["--dataset", "cifar10", "--data-dir", tmp_path, "--width", "4", "--proj-hidden", "32", "--proj-dim", "16",
         "--batch-size", "32", "--max-steps", "2", "--out-dir", tmp_path / "out"])

    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    img = rng.integers(0, 256, (3, 96, 96), dtype=np.uint8)
    for part, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        arr = np.stack([img] * n)
        arr.transpose(0, 1, 3, 2).tofile(stl / f"{part}_X.bin")  # STL-10 stores each channel column-major
        if part != "unlabeled":
            np.full(n, 10, np.uint8).tofile(stl / f"{part}_y.bin")  # labels on disk are 1..10
    x, y = load_dataset("stl10", str(tmp_path), "pretrain")
    assert x.shape == (7, 3, 96, 96) and torch.equal(x[5], torch.from_numpy(img))
    assert y.tolist() == [9, 9, 9, -1, -1, -1, -1]


def test_imagefolder_of_jpegs_streams(tmp_path):
    jpeg_folder(tmp_path, 12)
    run(["--dataset", "imagefolder", "--data-dir", tmp_path, "--img-size", "32", "--workers", "1", "--width", "4",
         "--proj-hidden", "32", "--proj-dim", "16", "--batch-size", "8", "--max-steps", "4", "--log-every", "1",
         "--out-dir", tmp_path / "out"])
    assert len(log_lines(tmp_path / "out")) == 5  # step 0, then 24 images / batch 8: crosses an epoch boundary


@pytest.mark.skipif(not os.path.isdir(FMNIST_SYSTEM_DIR), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package(tmp_path):
    """Read from the Debian package's .gz files, unpacked under --data-dir; three processes unpacking into one empty
    --data-dir at once (reproduce.py --jobs 3 on a fresh machine) all load it (a shared temp file made two fail)."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import data; print(len(data.load_dataset('fashion-mnist', " \
           f"{str(tmp_path)!r}, 'train')[0]))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    assert [p.communicate()[0].strip() for p in procs] == ["60000"] * 3
    assert not list((tmp_path / "FashionMNIST" / "raw").glob("*.tmp"))
    x, y = load_dataset("fashion-mnist", str(tmp_path), "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and sorted(y.unique().tolist()) == list(range(10))
    x, y = load_dataset("fashion-mnist", str(tmp_path), "test")
    assert x.shape == (10000, 1, 28, 28) and y.bincount().tolist() == [1000] * 10


def test_val_split_holds_out_stratified_images_the_run_never_trains_on(tmp_path):
    """--split val: a fixed, class-stratified sixth (at most 10k) of the training split is held out: train.py trains
    on the rest and its kNN monitor reports on the held-out images; eval_linear.py follows the checkpoint's split."""
    x, y = load_dataset("fake", "", "train", 600)
    held = val_mask(y)
    assert torch.equal(held, val_mask(y)) and 95 <= held.sum() <= 105  # the same every time; 600 / 6
    for c in range(10):  # stratified: each class gives its share, within rounding
        assert abs(held[y == c].sum() - (y == c).sum() / 6) <= 0.5
    (xp, yp), (xe, ye) = (load_split("fake", "", role, "val", 600) for role in ("pretrain", "eval"))
    assert torch.equal(xe, x[held]) and torch.equal(xp, x[~held]) and len(xp) + len(xe) == 600
    r = run(TINY + ["--fake-size", "600", "--split", "val", "--max-steps", "2", "--eval-every", "2", "--out-dir",
                    tmp_path / "out"])
    assert f"fake: {600 - int(held.sum())} images" in r.stdout
    ev = tmp_path / "ev.json"
    run(["--ckpt", tmp_path / "out" / "ckpt.pt", "--epochs", "1", "--out", ev], script="eval_linear.py")
    assert json.load(open(ev))["split"] == "val"
    one_line_error(run(TINY + ["--dataset", "stl10", "--split", "val", "--out-dir", tmp_path / "x"], expect_ok=False),
                   "--split val")


# -----------------------------------------------------------------------------
# ablation flags and presets: each does what it says, against a hand computation


def tiny_cfg(*flags):
    return T.parse_config(TINY + list(flags))

def tiny_model(cfg):
    torch.manual_seed(0)
    return T.build_model(cfg, 3)

def test_losses_on_hand_examples():
    p, z = torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert T.l2_loss(p, z).item() == pytest.approx((12.5 + 2.0) / 2)  # 1/2 ||p - z||^2 per row, then the mean
    assert T.cosine_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]])).item() == pytest.approx(2.0)
    assert T.cosine_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_ssl_loss_target_stop_grad_and_symmetry():
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    # --ema 0: the target is the online network's own output
    cfg = tiny_cfg("--predictor", "linear", "--ema", "0")
    model = tiny_model(cfg)
    loss, z1, z2, t1, t2 = T.ssl_loss(model, None, x1, x2, cfg)
    assert torch.equal(t1, z1) and torch.equal(t2, z2) and not t1.requires_grad
    loss.backward()
    g_sg = [p.grad.clone() for p in model.parameters()]
    # --stop-grad 0: the gradient also flows through the target branch: equal to the loss written without detach
    model.zero_grad()
    loss, z1, z2, t1, t2 = T.ssl_loss(model, None, x1, x2, dict(cfg, stop_grad=0))
    assert t1.requires_grad
    loss.backward()
    g_nosg = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    z1, z2, p1, p2 = model(x1, x2)
    (T.cosine_loss(p1, z2) + T.cosine_loss(p2, z1)).backward()
    for a, b in zip(g_nosg, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(g_sg[0], g_nosg[0])
    # --symmetric 0 and --loss l2: one pairing, the l2 loss
    for flags, hand in ((("--symmetric", "0"), lambda p1, p2, t1, t2: T.cosine_loss(p1, t2)),
                        (("--loss", "l2"), lambda p1, p2, t1, t2: T.l2_loss(p1, t2) + T.l2_loss(p2, t1))):
        loss, z1, z2, t1, t2 = T.ssl_loss(model, None, x1, x2, tiny_cfg("--predictor", "linear", "--ema", "0", *flags))
        _, _, p1, p2 = model(x1, x2)
        torch.testing.assert_close(loss, hand(p1, p2, t1, t2))


def test_target_init_copy_or_random():
    cfg = tiny_cfg("--ema", "0.99")
    online = tiny_model(cfg)
    same = T.build_target(online, cfg, 3)
    other = T.build_target(online, dict(cfg, target_init="random"), 3)
    names = [n for n, _ in online.named_parameters() if not n.startswith("predictor.")]
    assert [n for n, _ in same.named_parameters()] == names and [n for n, _ in other.named_parameters()] == names
    assert all(torch.equal(a, b) for a, b in zip(same.parameters(), online.parameters()))
    assert not torch.equal(next(other.parameters()), next(online.parameters()))
    assert not any(p.requires_grad for p in other.parameters())
    assert T.build_target(online, dict(cfg, ema=0.0), 3) is None


def test_predictor_lr_ratio_and_weight_decay_touch_the_predictor_group_only():
    cfg = tiny_cfg("--predictor", "linear", "--wd", "0", "--pred-wd", "0.01", "--pred-lr-ratio", "10", "--lr", "0.1")
    model = tiny_model(cfg)
    opt = T.build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay moves anything
    for g in opt.param_groups:
        g["lr"] = 0.1 * g["lr_mult"]  # what the training loop does with the scheduled lr
    opt.step()
    for n, p in model.named_parameters():
        if n.startswith("predictor."):  # p - lr * ratio * eta_p * p
            torch.testing.assert_close(p, before[n] * (1 - 0.1 * 10 * 0.01))
        else:  # eta_s = 0: the trunk does not move (Table 5's trunk-0 rows)
            assert torch.equal(p, before[n]), n
    assert T.parse_config(TINY + ["--wd", "3e-4"])["pred_wd"] == 3e-4  # default: the trunk's


def test_symmetrize_predictor_by_hand():
    lin = torch.nn.Linear(2, 2, bias=False)
    lin.weight.data = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    T.symmetrize_predictor(lin)
    assert lin.weight.tolist() == [[1.0, 1.0], [1.0, 3.0]]
    mlp = T.mlp(2, 3, 2, 0)
    W1, W2 = mlp[0].weight.detach().clone(), mlp[3].weight.detach().clone()
    T.symmetrize_predictor(mlp)
    torch.testing.assert_close(mlp[0].weight, 0.5 * (W1 + W2.T))
    assert torch.equal(mlp[3].weight, mlp[0].weight.T)


def test_centering_is_the_authors_dyn_zero_mean_by_hand():
    """--center (the authors' dyn_zero_mean, byol_trainer.py at luckmatters@671fca5): EMAs of E[f f^T] and of E[f]
    over both views' samples, and at a set F = F_hat - mu_hat mu_hat^T, then the DirectPred rule; not the EMA of each
    batch's centred covariance (the two differ after the first batch)."""
    g = torch.Generator().manual_seed(0)
    dp = DirectPred(3, rho=0.3, eps=0.1, center=True).double()
    F_ref = mu_ref = None
    for t in range(3):
        f = torch.randn(8, 3, generator=g, dtype=torch.float64) + t  # a mean that moves: the two rules differ
        F_ref = f.T @ f / 8 if F_ref is None else 0.3 * F_ref + 0.7 * f.T @ f / 8
        mu_ref = f.mean(0) if mu_ref is None else 0.3 * mu_ref + 0.7 * f.mean(0)
        dp.update(f)
    torch.testing.assert_close(dp.F_hat, F_ref)
    torch.testing.assert_close(dp.mu_hat, mu_ref)
    s, U = torch.linalg.eigh(F_ref - torch.outer(mu_ref, mu_ref))
    p = (s.clamp(min=0) / s.max()).sqrt() + 0.1
    torch.testing.assert_close(dp.compute_Wp(), U @ torch.diag(p) @ U.T)


def authors_optimal(M, M2, reg, rule):
    """Table 1's plug-in, written as the authors' branches (byol_trainer.py at luckmatters@671fca5, regulate_predictor)
    in plain float64, with torch.linalg.eigh for their torch.eig (removed from torch): "solve" as it ran, with the
    1-D eigenvalue vector (so `inv` is a vector) and solve_direction "left", copied into a (d, d) weight; the least
    squares that branch intends; "minimal_space" with dyn_sym, no dyn_time, no PSD projection."""
    D, Q = torch.linalg.eigh(M)
    d = len(M)
    if rule == "solve-as-run":
        inv = Q @ (D.clamp(0) + reg).pow(-1) @ Q.t()  # (d,): the code's expression, left to right
        w = inv @ M2
        W = torch.zeros(d, d, dtype=M.dtype)
        return W.copy_(w)  # the copy broadcasts the vector into every row
    if rule == "solve":
        return M2 @ torch.linalg.inv(Q @ torch.diag(D.clamp(0) + reg) @ Q.t())
    M2s = (M2 + M2.t()) / 2
    conv = Q.t() @ M2s @ Q
    conv /= (D.clamp(0).view(d, 1) + D.clamp(0).view(1, d) + reg) / 2
    return Q @ conv @ Q.t()


@pytest.mark.parametrize("rule", ["solve-as-run", "solve", "minimal-space"])
def test_optimal_plug_in_is_the_authors_branch_by_hand(rule):
    """--predictor optimal: M = the EMA of E[f f^T], M2 = the EMA of E[z f^T] (z: the target each f's prediction is
    compared with, as the authors' cum_cross_corr: (E[z2 f1^T] + E[z1 f2^T]) / 2), ridge --eps; Wp by each rule."""
    g = torch.Generator().manual_seed(1)
    dp = OptimalPredictor(4, rho=0.3, eps=0.1, optimal_rule=rule).double()
    M = M2 = None
    for t in range(3):
        f1, f2, z1, z2 = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(4))
        dp.update(torch.cat([f1, f2]), torch.cat([z2, z1]))  # train_step's order: z2 is f1's target
        Mb, M2b = (f1.T @ f1 + f2.T @ f2) / 12, (z2.T @ f1 / 6 + z1.T @ f2 / 6) / 2
        M, M2 = (Mb, M2b) if M is None else (0.3 * M + 0.7 * Mb, 0.3 * M2 + 0.7 * M2b)
    torch.testing.assert_close(dp.C_hat, M2)
    W = torch.zeros(4, 4, dtype=torch.float64)
    assert dp.set_predictor(W)
    torch.testing.assert_close(W, authors_optimal(M, M2, 0.1, rule))
    if rule == "solve-as-run":  # every row the same vector: a rank-1 Wp
        assert torch.linalg.matrix_rank(W) == 1 and torch.equal(W[0], W[-1])


def test_the_authors_solve_branch_passes_no_gradient_into_the_network():
    """With the rank-1 Wp of "solve-as-run" every prediction is a multiple of the all-ones vector, so the cosine loss
    depends on f only through the sign of w . f: no gradient reaches the trunk (only weight decay moves it)."""
    cfg = tiny_cfg("--predictor", "optimal")
    model = tiny_model(cfg).double()  # float64: the zero is exact up to rounding
    w = torch.randn(cfg["proj_dim"], dtype=torch.float64)
    with torch.no_grad():
        model.predictor.weight.copy_(w.expand(cfg["proj_dim"], -1))
    x1, x2 = (torch.randn(8, 3, 16, 16, dtype=torch.float64) for _ in range(2))
    loss, *_ = T.ssl_loss(model, None, x1, x2, dict(cfg, ema=0.0))
    loss.backward()
    grads = [p.grad.abs().max().item() for n, p in model.named_parameters() if not n.startswith("predictor.")]
    assert max(grads) < 1e-12 and loss.item() > 0.1  # a loss far from 0, and no gradient into the trunk
    model.zero_grad()  # the least-squares Wp of "solve" (full rank) does pass one
    with torch.no_grad():
        model.predictor.weight.copy_(torch.randn(cfg["proj_dim"], cfg["proj_dim"], dtype=torch.float64))
    T.ssl_loss(model, None, x1, x2, dict(cfg, ema=0.0))[0].backward()
    assert max(p.grad.abs().max().item() for n, p in model.named_parameters() if not n.startswith("predictor.")) > 1e-3


def test_partition_regions_by_hand():
    """Regions: one F_hat each, a row may count in several; the first batch sets every region (one without samples
    to 0), and later a region without samples decays toward 0 (the authors' Accumulator adds a zero matrix)."""
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [1.0, -1.0]])
    dp = PartitionedPredictor(2, 1, rho=0.5)  # 2 regions; a third made for the test
    dp.F_hat, dp.seen = torch.zeros(3, 2, 2), torch.zeros(3, dtype=torch.bool)
    dp.accumulate(f, torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]]))
    F0, F2 = torch.tensor([[5 / 3, 4 / 3], [4 / 3, 5 / 3]]), torch.tensor([[2.5, 1.5], [1.5, 2.5]])
    torch.testing.assert_close(dp.F_hat[0], F0)
    torch.testing.assert_close(dp.F_hat[2], F2)
    assert not dp.F_hat[1].any()
    dp.accumulate(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[0, 1, 0], [1, 0, 0]]))
    torch.testing.assert_close(dp.F_hat[0], 0.5 * F0 + 0.5 * torch.diag(torch.tensor([0.0, 9.0])))
    torch.testing.assert_close(dp.F_hat[1], 0.5 * torch.tensor([[4.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(dp.F_hat[2], 0.5 * F2)


def test_partitioned_predictor_matches_the_authors_rule_by_hand():
    """--partitions n (the feature-dependent Wp of Sec. 5, as the authors' code ran it), recomputed here by hand:
    each view's batch split per projection at the batch mean of r_i . f, per side the EMA of E[f f^T] over both views'
    samples on that side (updated before predicting), Wp_side by the DirectPred rule, p = mean_i Wp_{i, side} f."""
    g = torch.Generator().manual_seed(0)
    pp = PartitionedPredictor(3, 2, rho=0.3, eps=0.1).double()
    R = pp.directions.double()

    def wp(F):  # DirectPred's rule by hand: sqrt of the max-normalised clamped eigenvalues, + eps
        s, U = torch.linalg.eigh(F)
        p = ((s.clamp(min=0) / s.max()).sqrt() + 0.1).clamp(min=1e-4)
        return U @ torch.diag(p) @ U.T

    F_hat = {}
    for step in range(3):
        views = [torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(2)]
        sides = [(v @ R >= (v @ R).mean(0)) for v in views]  # (6, n) True = positive side, per view
        for i in range(2):
            for side in (True, False):
                rows = torch.cat([v[s[:, i] == side] for v, s in zip(views, sides)])
                F = rows.T @ rows / len(rows)
                F_hat[i, side] = F if step == 0 else 0.3 * F_hat[i, side] + 0.7 * F
        preds = pp(*views)
        for v, s, p in zip(views, sides, preds):
            for n in range(6):
                expect = sum(wp(F_hat[i, bool(s[n, i])]) @ v[n] for i in range(2)) / 2
                torch.testing.assert_close(p[n], expect, rtol=1e-6, atol=1e-8)
    assert not list(pp.parameters())  # nothing trained: the Wp are set in closed form every step


def test_presets_set_what_they_say_and_flags_override():
    c = T.parse_config(["--preset", "paper-stl10"])
    assert (c["dataset"], c["arch"], c["proj_hidden"], c["proj_dim"], c["bn_affine"], c["predictor"], c["lr"],
            c["momentum"], c["wd"], c["pred_wd"], c["batch_size"], c["ema"], c["ema_schedule"], c["lr_schedule"],
            c["epochs"], c["target_init"], c["rho"], c["eps"], c["freq"]) == \
        ("stl10", "resnet18", 512, 128, 0, "direct", 0.03, 0.9, 4e-4, 4e-4, 128, 0.996, "const", "const", 100,
         "random", 0.3, 0.1, 1)
    assert T.parse_config(["--preset", "paper-cifar10"])["dataset"] == "cifar10"
    c = T.parse_config(["--preset", "imagenet-lars-300", "--lr", "1.0", "--predictor", "linear"])
    assert (c["arch"], c["optimizer"], c["batch_size"], c["symmetric"], c["epochs"], c["lr"], c["predictor"],
            c["proj_dim"]) == ("resnet50", "lars", 4096, 1, 300, 1.0, "linear", 256)
    c = T.parse_config(["--preset", "imagenet-sgd-60"])
    assert (c["optimizer"], c["batch_size"], c["symmetric"], c["epochs"]) == ("sgd", 256, 0, 60)
    c = T.parse_config(["--preset", "simsiam-cifar"])
    assert (c["ema"], c["predictor"], c["dataset"]) == (0.0, "mlp", "cifar10")
    assert all(config_error(T.parse_config(["--preset", p])) is None for p in T.PRESETS)


@pytest.mark.parametrize("flags", [
    ["--predictor", "linear", "--sym-wp", "1", "--pred-bias", "1"],
    ["--predictor", "mlp", "--sym-wp", "1"],
    ["--partitions", "3", "--jitter", "0.5", "--crop-min", "0.5"],
    ["--predictor", "optimal", "--freq", "2"],
    ["--ema", "0", "--stop-grad", "0", "--loss", "l2", "--symmetric", "0"],
    ["--target-init", "random", "--optimizer", "lars", "--pred-lr-ratio", "5", "--pred-wd", "0"],
])
def test_flag_combinations_train(tmp_path, flags):
    run(TINY + flags + ["--max-steps", "3", "--out-dir", tmp_path])
    logs = log_lines(tmp_path)
    assert len(logs) == 4 and all(np.isfinite(r["loss"]) for r in logs)
    ckpt = load(tmp_path / "ckpt.pt")
    pred = {k[len("predictor."):]: v for k, v in ckpt["online"].items() if k.startswith("predictor.")}
    if "--sym-wp" in flags and "linear" in flags:
        torch.testing.assert_close(pred["weight"], pred["weight"].T, atol=1e-6, rtol=0)
    if "mlp" in flags:
        assert torch.equal(pred["3.weight"], pred["0.weight"].T)
    if "--partitions" in flags:  # 3 projections x 2 sides, each side's F_hat seen and symmetric
        F = pred["F_hat"]
        assert F.shape == (6, 16, 16) and pred["seen"].all() and torch.allclose(F, F.mT, atol=1e-6)


def test_the_authors_linear_head_is_batchnorm_then_a_linear_layer_with_bias(tmp_path):
    """--linear-bn 1 --pred-bias 1: the linear predictor as the authors' default config builds it (MLPHead without a
    hidden layer: BatchNorm1d without affine, then Linear with a bias), checked against the formula by hand; it
    trains, and its Wp is the one the log's diagnostics read."""
    cfg = tiny_cfg("--predictor", "linear", "--linear-bn", "1", "--pred-bias", "1")
    pred = tiny_model(cfg).predictor.train()
    f = torch.randn(8, cfg["proj_dim"], generator=torch.Generator().manual_seed(0)) * 3 + 1
    by_hand = (f - f.mean(0)) / (f.var(0, unbiased=False) + 1e-5).sqrt() @ pred.linear.weight.T + pred.linear.bias
    torch.testing.assert_close(pred(f), by_hand, atol=1e-5, rtol=0)
    assert not pred.bn.affine and pred.weight is pred.linear.weight and not list(pred.bn.parameters())
    assert config_error(tiny_cfg("--predictor", "mlp", "--linear-bn", "1")) == \
        "--linear-bn is an option of --predictor linear only"
    run(TINY + ["--predictor", "linear", "--linear-bn", "1", "--pred-bias", "1", "--max-steps", "3",
                "--out-dir", tmp_path])
    ckpt, logs = load(tmp_path / "ckpt.pt"), log_lines(tmp_path)
    assert {"predictor.bn.running_mean", "predictor.linear.weight", "predictor.linear.bias"} <= set(ckpt["online"])
    assert "align" in logs[-1] and all(np.isfinite(r["loss"]) for r in logs)


def test_lars_keeps_one_momentum_buffer_and_matches_the_formula():
    """LARS (You et al. 2017): d = g + wd p, scaled by the trust ratio 0.001 ||p|| / ||d||, mu = m mu + d, p -= lr mu;
    the momentum buffer is allocated once, not every step."""
    p = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = T.LARS([dict(params=[p], lr_mult=1.0, weight_decay=0.1)], lr=0.5, momentum=0.9)
    mu_ref, p_ref, ptr = torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]), None
    for _ in range(3):
        p.grad = torch.tensor([[1.0, 0.0]])
        opt.step()
        d = p.grad + 0.1 * p_ref
        mu_ref = 0.9 * mu_ref + d * 0.001 * p_ref.norm() / d.norm()
        p_ref = p_ref - 0.5 * mu_ref
        torch.testing.assert_close(p.detach(), p_ref)
        ptr = ptr or opt.state[p]["mu"].data_ptr()
        assert opt.state[p]["mu"].data_ptr() == ptr


# -----------------------------------------------------------------------------
# logs and the collapse diagnostics: effective rank, step 0, the warning line, W&B


def test_effective_rank_by_hand():
    assert effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    assert effective_rank([5.0, 0.0, -1e-9]) == pytest.approx(1.0)  # negative round-off clamped to 0
    assert effective_rank([2.0, 1.0, 1.0]) == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))))
    assert effective_rank([0.0, 0.0]) == 0.0


def test_diagnostics_take_the_rank_of_the_centered_covariance_from_the_running_statistics():
    """feature_stats is an EMA of E[f f^T] and E[f] (rho 0.9), the same for every predictor; diagnostics' erank is
    the effective rank of the centered covariance, erank_uncentered that of E[f f^T]: both against numpy by hand, on
    features with a large mean (where the two differ most)."""
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(256, 8, generator=g) * torch.arange(1, 9) + 5.0  # (2B, d): spread 1..8, mean 5 in every dim
    f2 = torch.randn(256, 8, generator=g) + 1.0
    stats = feature_stats(feature_stats(None, f1), f2)
    a1, a2 = f1.double().numpy(), f2.double().numpy()
    F = 0.9 * a1.T @ a1 / 256 + 0.1 * a2.T @ a2 / 256
    mu = 0.9 * a1.mean(0) + 0.1 * a2.mean(0)
    assert np.allclose(stats[0].numpy(), F, rtol=1e-5) and np.allclose(stats[1].numpy(), mu, rtol=1e-5)

    def erank(m):
        q = np.clip(np.linalg.eigvalsh(m), 0, None)
        q = q[q > 0] / q.sum()
        return math.exp(-(q * np.log(q)).sum())
    d = diagnostics(stats, None, f2)
    assert d["erank"] == pytest.approx(erank(F - np.outer(mu, mu)), rel=1e-4)
    assert d["erank_uncentered"] == pytest.approx(erank(F), rel=1e-4) and d["erank_uncentered"] < d["erank"] - 1


def test_step_0_is_logged_and_the_first_steps_densely(tmp_path):
    """The log starts at step 0 (the random init: loss and diagnostics of the first forward) and has every 10th step
    up to --log-early, then every --log-every, and the last step."""
    run(TINY + ["--log-every", "25", "--log-early", "30", "--max-steps", "60", "--out-dir", tmp_path])
    log = log_lines(tmp_path)
    assert [r["step"] for r in log] == [0, 10, 20, 25, 30, 50, 60]
    assert {"loss", "erank", "erank_uncentered", "z_std", "F_eig"} <= set(log[0]) and "lr" not in log[0]


def test_a_collapsing_run_prints_one_warning_line(tmp_path):
    """No predictor, no EMA, a large lr: the effective rank of F falls to ~1 within a few steps; the run says so once
    (on stdout, with the numbers and where to read on) and goes on to the end. (The Fashion-MNIST learning test checks
    that a healthy run prints nothing.)"""
    r = run(TINY + ["--fake-size", "256", "--predictor", "none", "--ema", "0", "--lr", "0.3", "--log-every", "2",
                    "--max-steps", "16", "--out-dir", tmp_path])
    warn = [line for line in r.stdout.splitlines() if "looks collapsed" in line]
    assert len(warn) == 1 and "effective rank" in warn[0] and "z_std" in warn[0], r.stdout[-2000:]
    assert log_lines(tmp_path)[-1]["step"] == 16 and log_lines(tmp_path)[-1]["erank"] < COLLAPSE_ERANK


def test_the_collapse_warning_fires_once_per_streak_and_notes_a_recovery():
    """CollapseWatch on a hand-made sequence of log lines (L = collapsed-looking, H = healthy; one L by erank, one by
    z_std): a warning at the 3rd L in a row and no more while it stands, none for 2 L broken by an H, a note after 3 H
    in a row, and a new warning for a new streak."""
    L1, L2, H = (1.1, 0.5), (4.0, 0.05), (4.0, 0.5)  # low rank; low z_std; neither
    seq = [L1, L2, H, L1, L2, L1, L1, L1, H, H, L1, H, H, H, H, L2, L2, L2]
    watch = CollapseWatch()
    said = {i: watch.line(i, *v, 16) for i, v in enumerate(seq)}
    said = {i: s.split(":")[0] for i, s in said.items() if s}
    assert said == {5: "warning", 13: "note", 17: "warning"}, said


WANDB_STANDIN = """
import json, os
def _record(*call):
    with open(os.environ["WANDB_CALLS"], "a") as fh:
        fh.write(json.dumps(call) + "\\n")
def init(project=None, name=None, config=None):
    _record("init", project, name, config)
def log(data, step=None):
    _record("log", data, step)
def finish():
    _record("finish")
"""

def test_wandb_logs_what_log_jsonl_holds(tmp_path):
    """--wandb-project: W&B (here a stand-in module that records its calls; no network) gets the config at init, every
    log.jsonl record with its step, and a finish. Without the package: one line saying how to get it."""
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "__init__.py").write_text(WANDB_STANDIN)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), WANDB_CALLS=str(tmp_path / "calls.jsonl"))
    run(TINY + ["--max-steps", "3", "--wandb-project", "dp", "--wandb-run-name", "r1", "--out-dir", tmp_path / "o"],
        env=env)
    calls = [json.loads(line) for line in open(tmp_path / "calls.jsonl")]
    assert calls[0][:3] == ["init", "dp", "r1"] and calls[0][3]["lr"] == 0.03 and calls[-1] == ["finish"]
    assert [c[1] for c in calls if c[0] == "log"] == log_lines(tmp_path / "o")
    assert [c[2] for c in calls if c[0] == "log"] == [0, 1, 2, 3]
    (tmp_path / "wandb" / "__init__.py").write_text("raise ImportError('no wandb here')")
    one_line_error(run(TINY + ["--max-steps", "1", "--wandb-project", "dp", "--out-dir", tmp_path / "o2"], env=env,
                       expect_ok=False), "pip install wandb")


# -----------------------------------------------------------------------------
# real data: training learns


# the known numbers of a short laptop-suite run, torch 2.14.1 on 2 CPU cores of a Xeon, fp32: kNN top-1 on 10k train / 2k
# test images after 300 steps (0.6905 with 2 threads, 0.7065 with 1: at lr 0.03 the thread count's rounding alone
# moves a 300-step run by 1.6 points, hence the tolerance), and its random init's; a change that moves them by more
# than LEARN_TOL fails
LEARN_KNN, LEARN_INIT, LEARN_TOL = 0.6985, 0.6530, 0.03

@pytest.mark.skipif(not os.path.isdir(FMNIST_SYSTEM_DIR), reason="apt-get install dataset-fashion-mnist")
def test_directpred_learns_on_fashion_mnist(tmp_path):
    """The laptop suite's recipe (width-16 ResNet-18, ImageNet stem, crop-min 0.4, constant lr 0.03, fp32) cut to
    300 steps (about a CPU minute), against the same network at its random initialisation: kNN top-1
    (k=200, t=0.1) on 10k train / 2k test images. It must gain more than 2 points, print no collapse warning, and
    land within LEARN_TOL of the known number above (what CPU kernels and a torch release may move it by is far
    below that; a broken augmentation, loss or predictor is not)."""
    r = run(["--dataset", "fashion-mnist", "--data-dir", tmp_path / "data", "--predictor", "direct", "--width", "16",
             "--stem", "imagenet", "--crop-min", "0.4", "--lr", "0.03", "--lr-schedule", "const", "--epochs", "5",
             "--bf16", "0", "--max-steps", "300", "--log-every", "50", "--out-dir", tmp_path / "out"])
    assert "looks collapsed" not in r.stdout
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    (x_tr, y_tr), (x_te, y_te) = [load_dataset("fashion-mnist", str(tmp_path / "data"), s) for s in ("train", "test")]
    mean, std = normalisation("fashion-mnist", "cpu")

    def knn(model):
        f = [extract_features(model.backbone.eval(), d, mean, std, "cpu", torch.autocast("cpu", enabled=False))
             for d in ((x_tr[:10000], y_tr[:10000]), (x_te[:2000], y_te[:2000]))]
        return knn_eval(*f[0], *f[1])

    trained = T.build_model(ckpt["config"], 1)
    trained.load_state_dict(ckpt["online"])
    torch.manual_seed(0)
    acc_trained, acc_random = knn(trained), knn(T.build_model(ckpt["config"], 1))
    print(f"kNN top-1: trained {acc_trained:.4f}, random init {acc_random:.4f}")
    assert acc_trained > acc_random + 0.02, (acc_trained, acc_random)
    if LEARN_KNN is not None:
        assert abs(acc_trained - LEARN_KNN) < LEARN_TOL and abs(acc_random - LEARN_INIT) < LEARN_TOL, \
            (acc_trained, acc_random)


# -----------------------------------------------------------------------------
# bad input: one clear line naming the flag or path, before any work (train.py, eval_linear.py)


@pytest.mark.parametrize("flags, needle", [
    (["--predictor", "linear", "--freq", "2"], "--freq"),
    (["--predictor", "none", "--sym-wp", "1"], "--sym-wp"),
    (["--predictor", "linear", "--exponent", "1"], "--exponent"),
    (["--predictor", "mlp", "--pred-bias", "1"], "--pred-bias"),
    (["--stop-grad", "0"], "--stop-grad 0 needs --ema 0"),
    (["--ema", "0", "--target-init", "random"], "--target-init"),
    (["--jitter", "-1"], "--jitter"),
    (["--crop-min", "0"], "--crop-min"),
    (["--partitions", "3", "--freq", "2"], "--partitions"),
])
def test_meaningless_flag_combinations_name_the_flag(flags, needle):
    err = config_error(T.parse_config(flags))
    assert err and needle in err, err


def test_the_global_batch_must_split_over_the_ranks_and_a_streamed_set_has_no_rank_0_monitor():
    """Checked before the process group starts, for torchrun's number of ranks: the global --batch-size splits
    evenly, >= 2 per rank (BatchNorm); --eval-every on ImageNet under DDP would keep the other ranks waiting."""
    cfg = lambda *flags: T.parse_config(["--batch-size", "128", *flags])
    assert config_error(cfg(), 2) is None and config_error(cfg(), 64) is None
    assert config_error(cfg(), 3) == "--batch-size 128 must split evenly over 3 DDP ranks, >= 2 each"
    assert config_error(cfg(), 128).startswith("--batch-size 128 must split evenly over 128 DDP ranks")
    imagenet = cfg("--dataset", "imagenet", "--eval-every", "100")
    assert config_error(imagenet, 1) is None and config_error(imagenet, 2).startswith("--eval-every runs on rank 0")


@pytest.mark.parametrize("flags, needle", [
    (["--dataset", "imagefolder", "--data-dir", "/nonexistent/x"], "--data-dir '/nonexistent/x'"),
    (["--resume"], "--resume"),
    (["--fake-size", "16"], "--batch-size"),
    (["--stop-grad", "0"], "--stop-grad 0 needs --ema 0"),
])
def test_bad_input_gives_one_line(tmp_path, flags, needle):
    r = run(TINY + ["--out-dir", tmp_path] + flags, expect_ok=False)
    one_line_error(r, needle)
    assert not (tmp_path / "ckpt.pt").exists()


CANDIDATES = (-1, 0, 1, 0.5, 1.5, 4, 10 ** 9, float("nan"), float("inf"))  # values to try against each range


def test_every_declared_range_is_enforced_with_one_line_naming_the_flag():
    """Reads the parser: for every flag with a valid= range, each candidate value its own test rejects must make
    config_error name that flag (so a range declared and not checked, or checked under another name, fails)."""
    P = T.get_parser()
    assert len(P.valid) >= 30
    for dest, (ok, rule) in P.valid.items():
        flag = "--" + dest.replace("_", "-")
        kind = next(a.type for a in P._actions if a.dest == dest)
        bad = [v for v in CANDIDATES if kind is float or isinstance(v, int)
               if not (ok(v) and (kind is int or math.isfinite(v)))]
        assert bad, flag
        for v in bad:
            err = config_error(T.parse_config([flag, str(v)]))
            assert err and err.startswith(flag + " must be " + rule), (flag, v, err)


def test_every_numeric_flag_declares_a_range_and_the_critical_ones_reject_by_hand():
    """A new int / float flag without valid= fails here; a few values are checked by hand, not through the parser."""
    P = T.get_parser()
    numeric = {a.dest for a in P._actions if a.type in (int, float) and a.option_strings and a.choices is None}
    assert numeric - set(P.valid) == set(), numeric - set(P.valid)
    for flag, value in [("--batch-size", 1), ("--rho", 1.0), ("--ema", 1.0), ("--lr", "nan"), ("--lr", 0.0),
                        ("--momentum", 1.0), ("--crop-min", 0.0), ("--offset", 1.0), ("--img-size", 4)]:
        err = config_error(T.parse_config([flag, str(value)]))
        assert err and err.startswith(flag + " must be"), err


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    """The bytes of a real (1-step) train.py checkpoint, made once."""
    out = tmp_path_factory.mktemp("good")
    run(TINY + ["--max-steps", "1", "--out-dir", out])
    return (out / "ckpt.pt").read_bytes()

def make_cifar(root, n, labels=None):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / f, "wb") as fh:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "labels": labels or [0] * n}, fh)

@pytest.mark.parametrize("case", ["batch-1", "lr-nan", "argparse", "device", "cuda", "corrupt-ckpt", "empty-ckpt",
                                  "truncated-ckpt", "not-a-ckpt", "out-dir-file", "out-dir-under-file",
                                  "existing-run", "cifar-labels", "stl-counts", "fmnist-gz", "resume-data-size"])
def test_bad_input_stops_with_one_line_before_any_work(tmp_path, case, good_ckpt):
    """Each: non-zero exit, one stderr line naming the flag or path, no traceback, nothing written to --out-dir."""
    out = tmp_path / "out"
    flags, needle = {
        "batch-1": (["--batch-size", "1"], "--batch-size"), "lr-nan": (["--lr", "nan"], "--lr"),
        "argparse": (["--epochs", "x"], "--epochs"), "device": (["--device", "nonsense"], "--device"),
        "cuda": (["--device", "cuda"], "--device cuda"),
        "out-dir-file": ([], "--out-dir"), "out-dir-under-file": ([], "--out-dir"), "existing-run": ([], "--resume"),
    }.get(case, ([], None))
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ckpt = out / "ckpt.pt"
    if case.endswith("ckpt") or case == "existing-run":
        out.mkdir()
        raw = good_ckpt
        ckpt.write_bytes({"corrupt-ckpt": b"not a checkpoint" * 100, "empty-ckpt": b"", "truncated-ckpt": raw[:5000],
                          "existing-run": raw}.get(case, b""))
        if case == "not-a-ckpt":
            torch.save({"weights": torch.zeros(3)}, ckpt)
        if case != "existing-run":
            flags, needle = ["--resume"], str(ckpt)
    if case == "out-dir-file":
        out.write_text("a file")
    if case == "out-dir-under-file":
        (tmp_path / "f").write_text("a file")
        out = tmp_path / "f" / "out"
    if case == "cifar-labels":
        make_cifar(tmp_path / "d", 64, labels=[0] * 63)
        flags, needle = ["--dataset", "cifar10", "--data-dir", tmp_path / "d"], str(tmp_path / "d")
    if case == "stl-counts":
        base = tmp_path / "d" / "stl10_binary"
        base.mkdir(parents=True)
        for p, n in (("train", 40), ("test", 40), ("unlabeled", 8)):
            np.zeros((n, 3, 96, 96), np.uint8).tofile(base / f"{p}_X.bin")
        for p, n in (("train", 39), ("test", 40)):
            np.ones(n, np.uint8).tofile(base / f"{p}_y.bin")
        flags, needle = ["--dataset", "stl10", "--data-dir", tmp_path / "d"], str(base)
    if case == "fmnist-gz":
        raw = tmp_path / "d" / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(__import__("gzip").compress(os.urandom(20000))[:5000])
        flags, needle = ["--dataset", "fashion-mnist", "--data-dir", tmp_path / "d"], str(raw / "train-images-idx3-ubyte.gz")
        assert not (raw / "train-images-idx3-ubyte").exists()
    if case == "resume-data-size":
        make_cifar(tmp_path / "d1", 64)
        make_cifar(tmp_path / "d2", 96)
        data = TINY[2:] + ["--dataset", "cifar10", "--max-steps", "2"]
        run(data + ["--data-dir", tmp_path / "d1", "--out-dir", out])
        flags, needle = data + ["--data-dir", tmp_path / "d2", "--resume"], "--data-dir"
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    one_line_error(run(TINY + ["--out-dir", out] + flags, expect_ok=False), needle)
    after = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    assert after == before  # nothing created, nothing replaced
    if case == "fmnist-gz":
        assert not list((tmp_path / "d").rglob("*-ubyte")) and not list((tmp_path / "d").rglob("*.tmp"))


def test_corrupt_image_in_an_imagefolder_is_named(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "val"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                PIL.Image.new("RGB", (40, 40), (60 * i, 30, 90 * c)).save(root / split / f"c{c}" / f"{i}.jpg")
    bad = root / "train" / "c1" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    r = run(["--dataset", "imagefolder", "--data-dir", root, "--img-size", "32", "--width", "4", "--proj-hidden", "32",
             "--proj-dim", "16", "--batch-size", "8", "--workers", "1", "--max-steps", "2", "--out-dir", tmp_path / "o"],
            expect_ok=False)
    one_line_error(r, f"error: --data-dir: cannot decode image {bad}")
    assert not (tmp_path / "o" / "ckpt.pt").exists()


@pytest.mark.parametrize("flags, needle", [(["--knn-k", "0"], "--knn-k"), (["--knn-t", "0"], "--knn-t"),
                                           (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
                                           (["--lr", "-1"], "--lr"), (["--out", "/proc/no/such.json"], "--out"),
                                           (["--baseline", "pixels,nope"], "--baseline"),
                                           (["--baseline", "pixels,pixels"], "--baseline")])
def test_eval_linear_bad_input_gives_one_line(tmp_path, flags, needle):
    one_line_error(run(["--dataset", "fake", "--baseline", "pixels", *flags], script="eval_linear.py", expect_ok=False),
                   needle)


def test_eval_linear_several_baselines_give_each_ones_numbers_side_by_side(tmp_path, good_ckpt):
    """--baseline none,random,pixels: each baseline's result file holds exactly what it holds when probed alone
    (the same seed, the same probe), and one last line puts the three side by side."""
    (tmp_path / "ckpt.pt").write_bytes(good_ckpt)
    ckpt = ["--ckpt", tmp_path / "ckpt.pt", "--epochs", "2"]
    r = run(ckpt + ["--baseline", "none,random,pixels"], script="eval_linear.py")
    together = {b: load_json(tmp_path / f"eval_fast_{b}_fake.json") for b in ("none", "random", "pixels")}
    for b in together:
        run(ckpt + ["--baseline", b, "--out", tmp_path / f"alone_{b}.json"], script="eval_linear.py")
        alone = load_json(tmp_path / f"alone_{b}.json")
        assert {k: v for k, v in alone.items() if k != "seconds"} == \
            {k: v for k, v in together[b].items() if k != "seconds"}, b
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("linear top-1 / kNN top-1") and all(
        f"{label} {100 * together[b]['top1']:.2f}" in last for b, label in
        (("none", "trained"), ("random", "random init"), ("pixels", "raw pixels")))
    one_line_error(run(ckpt + ["--baseline", "none,random", "--out", tmp_path / "x.json"], script="eval_linear.py",
                       expect_ok=False), "--out")


# -----------------------------------------------------------------------------
# reliability: never train on or save nan, never overwrite or mix a run, stop cleanly


def test_divergence_stops_with_one_line_and_keeps_the_last_finite_checkpoint(tmp_path):
    """L2 loss at lr 5 blows up after a few steps: the run stops at its next check with one line naming the step,
    and ckpt.pt is the last finite one (written before the divergence), never a nan one."""
    r = run(TINY + ["--loss", "l2", "--lr", "5", "--ckpt-every", "2", "--max-steps", "60", "--out-dir", tmp_path],
            expect_ok=False)
    one_line_error(r, "error: training diverged")  # the loss, F_hat or (checked before saving) a weight went nan/inf
    msg = r.stderr.strip()
    bad, good = int(msg.split(" step ")[1].split()[0]), int(msg.split("last good checkpoint: step ")[1].split()[0])
    ckpt = load(tmp_path / "ckpt.pt")
    assert 2 <= good < bad and ckpt["step"] == good, msg
    assert plumbing.nonfinite(ckpt["online"]) is None and plumbing.nonfinite(ckpt["target"]) is None
    nan = {**ckpt, "online": {k: v.float() * float("nan") if v.is_floating_point() else v for k, v in ckpt["online"].items()}}
    torch.save(nan, tmp_path / "nan.pt")
    one_line_error(run(["--ckpt", tmp_path / "nan.pt"], script="eval_linear.py", expect_ok=False), "holds nan/inf weights")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_is_exact(tmp_path, sig):
    flags = TINY + ["--predictor", "direct", "--ckpt-every", "1000", "--epochs", "10"]  # 40 steps, ckpt at the end
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, flags + ["--out-dir", tmp_path / "a"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    while not (tmp_path / "a" / "log.jsonl").exists() or len(log_lines(tmp_path / "a")) < 5:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), f"error: stopped by {sig.name} at step ")
    msg = err.strip()
    k = int(msg.split("at step ")[1].split(";")[0])
    assert 5 <= k < 40 and load(tmp_path / "a" / "ckpt.pt")["step"] == k
    run(flags + ["--out-dir", tmp_path / "a", "--resume"])
    run(flags + ["--out-dir", tmp_path / "b"])
    a, b = load(tmp_path / "a" / "ckpt.pt"), load(tmp_path / "b" / "ckpt.pt")
    assert a["step"] == b["step"] == 40
    for key in ("online", "target"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    assert [r["step"] for r in log_lines(tmp_path / "a")] == list(range(0, 41))  # no duplicate after the resume


def test_a_checkpoint_in_another_layout_is_refused_in_one_line(tmp_path):
    """A checkpoint whose state a module cannot load (here DirectPred's F_hat as (1, d, d), the layout before the
    closed-form predictors were split into their own classes) stops --resume with one line naming the path, the
    state and the mismatch, not a traceback."""
    flags = TINY + ["--max-steps", "2", "--out-dir", tmp_path]
    run(flags)
    ckpt = load(tmp_path / "ckpt.pt")
    ckpt["directpred"]["F_hat"] = ckpt["directpred"]["F_hat"][None]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    one_line_error(run(flags + ["--max-steps", "4", "--resume"], expect_ok=False), "holds directpred in another layout")


def test_resume_after_a_kill_drops_log_lines_past_the_checkpoint_and_a_second_run_is_locked_out(tmp_path):
    flags = TINY + ["--ckpt-every", "10", "--epochs", "100"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, flags + ["--out-dir", tmp_path])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    while not (tmp_path / "ckpt.pt").exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    # a second run in the same out-dir while the first one writes it: refused (the lock), nothing touched
    one_line_error(run(flags + ["--out-dir", tmp_path, "--resume"], expect_ok=False), "another run is writing")
    while log_lines(tmp_path)[-1]["step"] % 10 != 5:  # kill it half-way between two checkpoints
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    k = load(tmp_path / "ckpt.pt")["step"]
    assert max(r["step"] for r in log_lines(tmp_path)) > k  # the log ran past the checkpoint
    run(flags + ["--out-dir", tmp_path, "--resume", "--max-steps", k + 3])
    assert [r["step"] for r in log_lines(tmp_path)] == list(range(0, k + 4))


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_leaves_no_tmp(tmp_path):
    """A write that fails (here: over a file-size limit, EFBIG; disk full, ENOSPC, takes the same path) stops the
    run with one line naming the path; the previous checkpoint is intact and no .tmp is left behind."""
    run(TINY + ["--max-steps", "2", "--out-dir", tmp_path])
    before = (tmp_path / "ckpt.pt").read_bytes()

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, len(before) // 2))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing

    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, TINY + ["--max-steps", "4", "--resume",
                        "--out-dir", tmp_path])], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       preexec_fn=small_files)
    one_line_error(r, f"error: cannot write the checkpoint {tmp_path / 'ckpt.pt'}")
    assert (tmp_path / "ckpt.pt").read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def rank_pid(r, out_dir):
    """The pid of the train.py process writing out_dir whose environment has RANK=r (not LOCAL_RANK=r alone)."""
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes()
            if b"train.py" in cmd and str(out_dir).encode() + b"\0" in cmd + b"\0" and \
                    b"\0RANK=%d\0" % r in b"\0" + (p / "environ").read_bytes():
                return int(p.name)
        except OSError:  # not a process, or one that ended meanwhile
            pass


def test_ddp_stalled_rank_ends_the_job_with_one_line(tmp_path):
    """Rank 1 is frozen (SIGSTOP) mid-run: rank 0's next collective times out after --ddp-timeout and the job ends
    with rank 0's one-line error instead of hanging. The timeout (15 s) is far above a step on a loaded 2-core machine
    (one thread per rank), so only the frozen rank can trip it."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
            *map(str, TINY + ["--fake-size", "256", "--epochs", "1000", "--ddp-timeout", "15", "--out-dir", tmp_path])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    while not (tmp_path / "log.jsonl").exists() or len(log_lines(tmp_path)) < 3:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    rank0, rank1 = rank_pid(0, tmp_path), rank_pid(1, tmp_path)
    os.kill(rank1, signal.SIGSTOP)
    t0 = time.time()
    while Path(f"/proc/{rank0}").exists() and time.time() - t0 < 90:  # rank 0 must give up on its own...
        time.sleep(0.2)
    waited = time.time() - t0
    os.kill(rank1, signal.SIGCONT)  # ...then the frozen rank may go (torchrun would wait 30 s to SIGKILL it)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and 15 <= waited < 60, waited
    assert "error: rank 0: a DDP collective failed after waiting up to 15 s (--ddp-timeout)" in err, err[-3000:]


# -----------------------------------------------------------------------------
# the flagship path on the CPU: torchrun over a streamed set, per-rank crops, restarts, several nodes


def differing(a, b, name="ckpt"):
    """The names of the tensors (and other values) that differ between two nested checkpoint objects."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [n for k in sorted(set(a) | set(b), key=str) for n in differing(a.get(k), b.get(k), f"{name}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [n for i, (x, y) in enumerate(zip(a, b)) for n in differing(x, y, f"{name}[{i}]")]
    if torch.is_tensor(a) and torch.is_tensor(b):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [name]
    return [] if type(a) is type(b) and a == b else [name]


def same_run(a, b):
    """Every tensor of two checkpoints (networks, optimizer, DirectPred, diagnostics, RNG) and their step equal; the
    config is left out (its free flags differ: --out-dir, --resume, --workers, --max-steps)."""
    diff = differing({k: v for k, v in a.items() if k != "config"}, {k: v for k, v in b.items() if k != "config"})
    assert not diff, f"{len(diff)} differ: {diff[:8]}"


def jpeg_folder(root, n=24, same=False):
    """An ImageFolder on disk: train/ and val/, two classes of n JPEGs each (40 x 52), random or one image copied."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                PIL.Image.fromarray(img if same else rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) \
                    .save(root / split / c / f"{i}.jpg")
    return root


def test_streamed_crops_are_each_ranks_own_and_replay(tmp_path):
    """64 copies of one JPEG, streamed to 2 ranks: no crop of rank 0 equals any of rank 1's (they drew the same 32
    when the workers seeded from the global RNG); each sample's crops come from (seed, epoch, its place in the
    epoch), so the same seed replays them, with no workers or 2, and from a later batch on (a resume) as well."""
    import data as D
    ds = load_dataset("imagefolder", str(jpeg_folder(tmp_path, 32, same=True)), "pretrain")
    ds.transform = D.TwoCrops(24, (0.08, 1.0))

    def crops(rank, seed=0, workers=2, start=0, epoch=0):
        torch.manual_seed(0)  # seed_all: the same global RNG on every rank
        return torch.cat([x for x, _ in D.epoch_batches(ds, 32, epoch, seed, rank, 2, "cpu", start=start,
                                                        workers=workers)])  # (32, 2, 3, 24, 24): 2 batches
    a, b = crops(0), crops(1)
    views = lambda x: [v for c in x for v in c]
    assert len(a) == len(b) == 32
    assert not any(torch.equal(u, v) for u in views(a) for v in views(b))
    assert len({v.numpy().tobytes() for v in views(a)}) == 64  # and no two of one rank's alike
    assert torch.equal(a, crops(0)) and torch.equal(a, crops(0, workers=0)) and torch.equal(a[16:], crops(0, start=1))
    assert not torch.equal(a, crops(0, seed=1)) and not torch.equal(a, crops(0, epoch=1))


def test_streamed_resume_under_torchrun_is_exact(tmp_path):
    """torchrun, 2 ranks, an ImageFolder streamed through DataLoader workers: 8 steps straight against 3 steps, then
    --resume to 8 (crossing an epoch) with another number of workers: every tensor of the checkpoint equal (277 of 320
    differed when the crops came from the workers' global RNG)."""
    data = jpeg_folder(tmp_path / "data")
    flags = ["--dataset", "imagefolder", "--data-dir", data, "--img-size", "32", "--width", "4", "--proj-hidden", "32",
             "--proj-dim", "16", "--batch-size", "8", "--log-every", "1", "--bf16", "0", "--ema", "0.99"]
    run(flags + ["--workers", "2", "--max-steps", "8", "--out-dir", tmp_path / "a"], nproc=2)
    run(flags + ["--workers", "2", "--max-steps", "3", "--out-dir", tmp_path / "b"], nproc=2)
    run(flags + ["--workers", "1", "--max-steps", "8", "--out-dir", tmp_path / "b", "--resume"], nproc=2)
    a, b = load(tmp_path / "a" / "ckpt.pt"), load(tmp_path / "b" / "ckpt.pt")
    assert a["step"] == b["step"] == 8 and a["n_train"] == 48
    same_run(a, b)


def test_a_rank_killed_under_max_restarts_comes_back_and_ends_as_an_uninterrupted_run(tmp_path):
    """torchrun --max-restarts 1 with --resume auto: the job starts fresh (no checkpoint yet); while it runs a second
    job in the same --out-dir is refused (the lock); rank 1 is SIGKILLed; torchrun restarts both ranks, which resume
    from the last checkpoint (the restarted rank 0 gets the lock), and the job ends with the checkpoint and the log of
    an uninterrupted run."""
    flags = TINY + ["--fake-size", "256", "--ema", "0.99", "--epochs", "8", "--ckpt-every", "8", "--resume", "auto"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
                str(ROOT / "train.py")]
    job = subprocess.Popen(launcher + [*map(str, flags + ["--out-dir", tmp_path / "a"])], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    while not (tmp_path / "a" / "ckpt.pt").exists() or log_lines(tmp_path / "a")[-1]["step"] < 11:
        assert job.poll() is None, job.communicate()
        time.sleep(0.05)
    ranks = [rank_pid(r, tmp_path / "a") for r in (0, 1)]
    for pid in ranks:  # held still while a second job tries the out-dir
        os.kill(pid, signal.SIGSTOP)
    one_line_error(run(flags + ["--out-dir", tmp_path / "a"], expect_ok=False), "another run is writing")
    os.kill(ranks[1], signal.SIGKILL)
    os.kill(ranks[0], signal.SIGCONT)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, out[-2000:] + err[-3000:]
    assert "steps 0 -> 64" in out and re.search(r"steps [1-9]\d* -> 64", out), out[-2000:]  # fresh, then resumed
    run(flags + ["--out-dir", tmp_path / "b"], nproc=2)
    a, b = load(tmp_path / "a" / "ckpt.pt"), load(tmp_path / "b" / "ckpt.pt")
    assert a["step"] == b["step"] == 64
    same_run(a, b)
    assert [r["step"] for r in log_lines(tmp_path / "a")] == list(range(65))


def test_a_restarted_attempt_keeps_its_keys_apart_and_several_nodes_on_a_shared_store_are_told_how(monkeypatch):
    """torchrun's shared store outlives a restart: on one node (one torchrun, which numbers the attempts) an
    attempt's keys go under its own prefix, so the failed attempt's are never read; several nodes' torchruns number
    their attempts apart, so a restart there stops with one line naming the setting that gives a fresh store."""
    import torch.distributed as dist
    base = dist.HashStore()
    base.set_timeout(datetime.timedelta(seconds=5))  # a missing key fails fast
    base.set("0/rank_1", "the dead rank's address")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    store = plumbing.attempt_store(base)
    assert not store.check(["0/rank_1"])
    store.set("0/rank_1", "the new address")
    assert base.get("attempt_1/0/rank_1") == b"the new address" and base.get("0/rank_1") == b"the dead rank's address"
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    with pytest.raises(plumbing.RunError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        plumbing.attempt_store(base)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first attempt has no stale keys
    plumbing.attempt_store(base)


def test_two_nodes_of_one_rank_equal_one_node_of_two_ranks(tmp_path):
    """The multi-node form (the README's): two torchrun processes, 1 rank each, meeting through a c10d rendezvous on
    localhost, end with the checkpoint of a --standalone 2-rank run. One thread a rank on both sides (torchrun sets
    OMP_NUM_THREADS=1 only with --nproc_per_node > 1; other thread counts sum in another order)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flags = [*map(str, TINY + ["--fake-size", "256", "--ema", "0.99", "--max-steps", "12"])]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")  # as documented
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
                               str(ROOT / "train.py"), *flags, "--out-dir", str(tmp_path / "a")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(2)]
    for node in nodes:
        out, err = node.communicate(timeout=300)
        assert node.returncode == 0, out[-2000:] + err[-3000:]
    run(flags + ["--out-dir", tmp_path / "b"], nproc=2, env=env)
    same_run(load(tmp_path / "a" / "ckpt.pt"), load(tmp_path / "b" / "ckpt.pt"))


def test_resume_auto_needs_every_rank_to_see_the_checkpoint(tmp_path):
    """--resume auto where rank 0 finds a checkpoint and rank 1 does not (an --out-dir on a disk the nodes do not
    share): one line, before any step, instead of ranks that run different steps."""
    run(TINY + ["--max-steps", "2", "--out-dir", tmp_path])
    wrapper = tmp_path / "rank1_sees_none.py"  # rank 1 looks for ckpt.pt and finds nothing
    wrapper.write_text("import os, runpy, sys\nsys.path.insert(0, sys.argv[1])\n"
                       "hide = lambda real: lambda p: real(p) and not (str(p).endswith('ckpt.pt') and os.environ['RANK'] == '1')\n"
                       "os.path.isfile, os.path.exists = hide(os.path.isfile), hide(os.path.exists)\n"
                       "sys.argv = sys.argv[1:]\nsys.argv[0] = os.path.join(sys.argv[0], 'train.py')\n"
                       "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(wrapper), str(ROOT), *map(str, TINY + ["--max-steps", "4", "--resume", "auto",
                                                                   "--out-dir", tmp_path])],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and "error: --resume: some ranks find a checkpoint" in r.stderr, r.stderr[-3000:]
    assert load(tmp_path / "ckpt.pt")["step"] == 2


def test_tf32_settings_leave_the_legacy_readers_working():
    """After the CUDA speed paths (TF32 on, or off with --deterministic 1) and inside full_fp32, code that reads the
    TF32 flags the old way (allow_tf32, get_float32_matmul_precision) gets an answer, not a 'mix of legacy and new
    APIs' error; full_fp32 restores what it found."""
    from directpred import full_fp32
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        for det, tf32 in ((0, True), (1, False)):
            plumbing.precision_and_layout("cuda", bf16="0", channels_last="0", deterministic=det)
            assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
            with full_fp32("cuda"):
                assert torch.backends.cuda.matmul.allow_tf32 is False
                assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cuda.matmul.allow_tf32 is tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = False
        torch.use_deterministic_algorithms(False)


# -----------------------------------------------------------------------------
# precision and speed paths on the CPU (bf16 autocast, channels_last, compile)


def test_precision_and_layout_change_the_layout_not_the_numbers():
    """The speed paths are layouts, not other computations: one step's loss and every gradient of the laptop
    network (width 16, where --channels-last auto turns channels_last on) in channels_last equal the contiguous
    layout's to fp32 rounding; --bf16 1 is autocast to bf16 and moves the loss by bf16's rounding only (< 2%)."""
    cfg = T.parse_config(["--dataset", "fashion-mnist", "--width", "16", "--stem", "imagenet", "--proj-dim", "16"])
    x1, x2 = torch.rand(2, 8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, (bf16, cl) in {"fp32": ("0", "0"), "cl": ("0", "auto"), "bf16": ("1", "0")}.items():
        ctx, fmt = plumbing.precision_and_layout("cpu", bf16, cl, width=cfg["width"])
        torch.manual_seed(0)
        online = T.build_model(cfg, 1).to(memory_format=fmt)
        with ctx:
            loss = T.ssl_loss(online, online, x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt),
                              cfg)[0]
        loss.backward()
        out[name] = (fmt, loss.item(), [p.grad.clone() for p in online.parameters() if p.grad is not None])
    assert out["cl"][0] == torch.channels_last and out["fp32"][0] == torch.contiguous_format
    assert out["cl"][1] == pytest.approx(out["fp32"][1], rel=1e-5)
    gmax = max(g.norm() for g in out["fp32"][2])  # (a bias before BatchNorm has a gradient of 0 plus rounding)
    assert all((a - b).norm() <= 1e-3 * b.norm() + 1e-5 * gmax for a, b in zip(out["cl"][2], out["fp32"][2]))
    assert out["bf16"][1] == pytest.approx(out["fp32"][1], rel=0.02) and out["bf16"][1] != out["fp32"][1]


def test_bf16_auto_times_copies_and_picks_the_faster_precision():
    """bf16_if_faster times forward + backward passes of copies: the run's own weights, BN statistics and gradients
    are left as they were, and its choice is the faster of the two timings it reports."""
    cfg = T.parse_config(["--dataset", "fake", "--width", "8", "--proj-hidden", "32", "--proj-dim", "16"])
    online = T.build_model(cfg, 3)
    target = T.build_target(online, cfg, 3)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (online, target)]
    use_bf16, line = plumbing.bf16_if_faster(online, target, lambda o, t, x: T.ssl_loss(o, t, x, x, cfg)[0],
                                             torch.rand(8, 3, 16, 16), n=2)
    for m, sd in zip((online, target), before):
        assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in online.parameters())
    fp32, bf16 = (float(w) for w in re.findall(r"(\d+) ms in", line))
    assert line.endswith("bf16" if use_bf16 else "fp32") and (bf16 <= fp32 if use_bf16 else fp32 <= bf16)


BF16_STANDIN = """
import os, runpy, sys
import plumbing
# this CPU as the test says it is, and bf16_if_faster's verdict forced, each call counted
plumbing.cpu_has_bf16 = lambda: os.environ["HAS_BF16"] == "1"
def forced(*args, **kwargs):
    with open(os.environ["TIMED"], "a") as fh:
        fh.write("timed\\n")
    return os.environ["FASTER"] == "bf16", "--bf16 auto: forced " + os.environ["FASTER"]
plumbing.bf16_if_faster = forced
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_forced(tmp_path, args, has_bf16, faster, timed, kill=False):
    """train.py with --bf16 auto through BF16_STANDIN; kill: SIGKILL it at a random moment after its next new
    checkpoint (or let it finish if it ends first). Returns its stdout, or None if it was killed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HAS_BF16=str(int(has_bf16)), FASTER=faster, TIMED=str(timed))
    standin = tmp_path / "standin.py"
    standin.write_text(BF16_STANDIN)
    p = subprocess.Popen([sys.executable, str(standin), str(ROOT / "train.py"), *map(str, args)], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill:
        ckpt = Path(args[args.index("--out-dir") + 1]) / "ckpt.pt"
        seen = ckpt.stat().st_ino if ckpt.exists() else None
        while p.poll() is None and (not ckpt.exists() or ckpt.stat().st_ino == seen):
            time.sleep(0.005)  # each checkpoint is a new file renamed over the old one: a new inode
        time.sleep(random.uniform(0, 0.2))
        if p.poll() is None:
            p.kill()
            p.communicate()
            return None
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return out


@pytest.mark.parametrize("has_bf16, first, later", [(True, "bf16", "fp32"), (True, "fp32", "bf16"),
                                                    (False, "bf16", "bf16")],
                         ids=["bf16 CPU, bf16 faster at the start", "bf16 CPU, fp32 faster at the start", "no bf16 CPU"])
def test_bf16_auto_is_decided_once_and_a_run_killed_at_random_resumes_bitwise(tmp_path, has_bf16, first, later):
    """--bf16 auto (the default) times the precisions at the run's start only: the choice goes into the checkpoint's
    config and the log's first record, and every --resume reuses it without timing again, even where the timing would
    now go the other way. A run SIGKILLed at random moments and resumed ends bitwise equal to an uninterrupted one."""
    random.seed(f"{has_bf16}{first}")
    flags = [f for f in TINY if f not in ("--bf16", "0")] + ["--ema", "0.99", "--max-steps", "12", "--ckpt-every", "2"]
    expect = "1" if has_bf16 and first == "bf16" else "0"
    run_forced(tmp_path, flags + ["--out-dir", tmp_path / "straight"], has_bf16, first, tmp_path / "timed_straight")
    run_forced(tmp_path, flags + ["--out-dir", tmp_path / "killed"], has_bf16, first, tmp_path / "timed_killed",
               kill=True)
    out = None
    for kill in (True, False):  # resumed (timing would now pick `later`), killed again, resumed to the end
        out = out or run_forced(tmp_path, flags + ["--out-dir", tmp_path / "killed", "--resume"], has_bf16, later,
                                tmp_path / "timed_killed", kill=kill)
    a, b = load(tmp_path / "straight" / "ckpt.pt"), load(tmp_path / "killed" / "ckpt.pt")
    assert a["step"] == b["step"] == 12 and a["config"]["bf16"] == b["config"]["bf16"] == expect
    assert log_lines(tmp_path / "killed")[0]["bf16"] == expect
    for key in ("online", "target"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k}"
    assert torch.equal(a["directpred"]["F_hat"], b["directpred"]["F_hat"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert "reused from the checkpoint" in out
    for timed in ("timed_straight", "timed_killed"):  # timed once per run, at its start, on a CPU with bf16 only
        assert ((tmp_path / timed).read_text() if (tmp_path / timed).exists() else "") == ("timed\n" if has_bf16 else "")


def test_bf16_channels_last_cpu_training_resumes_bitwise_and_saves_plain_keys(tmp_path):
    """The GPU user's paths, run on the CPU: bf16 autocast + channels_last (width 16), DirectPred with partitions off,
    EMA. Losses finite, F_hat fp32, checkpoint keys without wrapper prefixes, and a resume equal bit for bit to an
    uninterrupted run (CPU autocast is deterministic)."""
    flags = TINY + ["--width", "16", "--img-size", "16", "--bf16", "1", "--channels-last", "1", "--ema", "0.99",
                    "--epochs", "2"]
    run(flags + ["--max-steps", "6", "--out-dir", tmp_path / "straight"])
    run(flags + ["--max-steps", "3", "--out-dir", tmp_path / "split"])
    run(flags + ["--max-steps", "6", "--out-dir", tmp_path / "split", "--resume"])
    a, b = load(tmp_path / "straight" / "ckpt.pt"), load(tmp_path / "split" / "ckpt.pt")
    assert all(np.isfinite(r["loss"]) for r in log_lines(tmp_path / "straight"))
    assert a["directpred"]["F_hat"].dtype == torch.float32
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in a["online"])
    for key in ("online", "target"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k}"


def test_ddp_in_bf16_keeps_the_ranks_identical(tmp_path):
    """Two gloo ranks under bf16 autocast: the same weights and the same F_hat on both (F_hat all-reduced in fp32)."""
    run(TINY + ["--fake-size", "256", "--bf16", "1", "--ema", "0.99", "--max-steps", "3", "--save-every-rank",
                "--sync-bn", "0", "--out-dir", tmp_path], nproc=2)
    a, b = load(tmp_path / "ckpt_rank0.pt"), load(tmp_path / "ckpt_rank1.pt")
    names = {n for n, _ in T.build_model(a["config"], 3).named_parameters()}
    assert all(torch.equal(a["online"][k], b["online"][k]) for k in names)
    assert torch.equal(a["directpred"]["F_hat"], b["directpred"]["F_hat"]) and a["directpred"]["F_hat"].dtype == torch.float32


def test_compiled_partitioned_forward_compiles_once():
    """--compile 1 --partitions n: the forward holds no Python counter, so later steps reuse the first graph (a
    counter bumped inside it made Dynamo recompile every step, then give up after 8)."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):  # counts compilations, runs the traced graph as is
        graphs.append(gm)
        return gm.forward

    model = tiny_model(tiny_cfg("--partitions", "3"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 3, 16, 16)
    compiled(x, x)
    first = len(graphs)
    for _ in range(4):
        compiled(x, x)
    assert len(graphs) == first, len(graphs)
    torch._dynamo.reset()


# -----------------------------------------------------------------------------
# eval_linear.py: the probe's protocols, the baselines, the features, torchrun


def test_features_are_taken_at_the_training_crop_size():
    """--img-size on an in-memory set: the views are resized to it, so extract_features (the probe, the kNN
    monitor) must resize too. Reference: torchvision's bilinear resize of the same images, then the backbone."""
    backbone = tiny_model(tiny_cfg()).backbone.eval()
    x, y = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8), torch.arange(6)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    f, _ = extract_features(backbone, (x, y), mean, std, "cpu", torch.autocast("cpu", enabled=False), size=24)
    with torch.no_grad():
        ref = backbone((TF.resize(x.float() / 255, [24, 24], antialias=False) - mean) / std)
    torch.testing.assert_close(f, ref)
    f, _ = extract_features(backbone, (x, y), mean, std, "cpu", torch.autocast("cpu", enabled=False))
    with torch.no_grad():
        torch.testing.assert_close(f, backbone((x.float() / 255 - mean) / std))  # no size: as stored


def test_random_bn_baseline_takes_each_bn_layers_statistics_from_the_training_images():
    """--baseline random-bn: each BN layer's running mean / var become the average over the batches of its input's
    per-channel mean / unbiased variance in train mode (the network as it is at step 0 of training). Reference:
    forward hooks on a copy of the network record every BN layer's input batch by batch; the first layer's input is
    also computed by hand (conv1 of the normalised images). The BN momentum and the train / eval mode come back."""
    import eval_linear
    backbone = tiny_model(tiny_cfg()).backbone.eval()
    ref = copy.deepcopy(backbone).train()
    x, y = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8), torch.zeros(64, dtype=torch.long)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    eval_linear.reestimate_bn(backbone, (x, y), mean=mean, std=std, device="cpu",
                              ctx=torch.autocast("cpu", enabled=False), batch_size=16)
    bns = {n: m for n, m in ref.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    seen = {n: [] for n in bns}
    for n, m in bns.items():
        m.register_forward_hook(lambda m, inp, out, n=n: seen[n].append(inp[0]))
    with torch.no_grad():
        for i in range(0, 64, 16):
            ref((x[i:i + 16].float() / 255 - mean) / std)
        by_hand = [ref.conv1((x[i:i + 16].float() / 255 - mean) / std) for i in range(0, 64, 16)]
    first = next(iter(bns))
    torch.testing.assert_close(torch.stack(seen[first]), torch.stack(by_hand))
    got = dict(backbone.named_modules())
    assert len(bns) > 10 and not backbone.training
    for n in bns:
        torch.testing.assert_close(got[n].running_mean, torch.stack([b.mean((0, 2, 3)) for b in seen[n]]).mean(0))
        torch.testing.assert_close(got[n].running_var, torch.stack([b.var((0, 2, 3)) for b in seen[n]]).mean(0))
        assert got[n].num_batches_tracked == 4 and got[n].momentum == bns[n].momentum == 0.1


def test_eval_linear_paper_protocol_reports_the_best_test_epoch(tmp_path, good_ckpt):
    """--protocol paper: batch 128, the best test epoch (the authors' optimistic number) with the final one beside
    it, both read back from the recorded curve of every epoch's test top-1; the fast protocol reports the final
    epoch (its top-1 is the paper protocol's last epoch only up to the batch size, so it is not compared)."""
    (tmp_path / "ckpt.pt").write_bytes(good_ckpt)
    run(["--ckpt", tmp_path / "ckpt.pt", "--protocol", "paper", "--out", tmp_path / "p.json"], script="eval_linear.py")
    p = json.load(open(tmp_path / "p.json"))
    curve = p["test_curve"]  # 50 epochs; the maximum picked here by hand, the first one on a tie
    best = max(range(len(curve)), key=lambda e: (curve[e], -e))
    assert p["batch_size"] == 128 and len(curve) == 50
    assert p["top1"] == curve[best] and p["best_epoch"] == best + 1 and p["top1_final"] == curve[-1]
    run(["--ckpt", tmp_path / "ckpt.pt", "--out", tmp_path / "f.json"], script="eval_linear.py")
    f = json.load(open(tmp_path / "f.json"))
    assert f["batch_size"] == 256 and "best_epoch" not in f and f["knn_top1"] == p["knn_top1"]


@pytest.mark.skipif(not os.path.isdir(FMNIST_SYSTEM_DIR), reason="apt-get install dataset-fashion-mnist")
def test_supervised_baseline_trains_the_runs_network_and_beats_its_random_init(tmp_path):
    """--baseline supervised: the checkpoint's network from its random init, trained with labels for the run's
    number of steps (--max-steps 200 here), then probed. On Fashion-MNIST (a width-4 net, batch 64) its probe must
    beat the same network's random-init probe by SUPERVISED_MARGIN: measured once (torch 2.14.1, fast probe) at
    75.80 against 62.52, so a baseline that did not train, or trained on the wrong labels, fails."""
    run(["--dataset", "fashion-mnist", "--data-dir", tmp_path / "data", "--width", "4", "--proj-hidden", "32",
         "--proj-dim", "16", "--batch-size", "64", "--max-steps", "200", "--bf16", "0", "--device", "cpu",
         "--out-dir", tmp_path])
    top1 = {}
    for baseline in ("supervised", "random"):
        r = run(["--ckpt", tmp_path / "ckpt.pt", "--baseline", baseline, "--out", tmp_path / f"{baseline}.json"],
                script="eval_linear.py")
        top1[baseline] = json.load(open(tmp_path / f"{baseline}.json"))
        assert top1[baseline]["baseline"] == baseline and ("200/200" in r.stdout) == (baseline == "supervised")
    assert top1["supervised"]["supervised_steps"] == 200
    assert top1["supervised"]["top1"] > top1["random"]["top1"] + SUPERVISED_MARGIN, top1


SUPERVISED_MARGIN = 0.05  # 5 of the 13.3 points measured


SHARD_WRAPPER = """
import runpy, sys, time
sys.path.insert(0, sys.argv[1])
import data
extract = data.extract_features
data.extract_features = lambda *a, **k: (time.sleep(4), extract(*a, **k))[1]  # a slow feature pass
sys.argv = ["eval_linear.py", *sys.argv[2:]]
runpy.run_path(sys.path[0] + "/eval_linear.py", run_name="__main__")
"""

def test_eval_linear_under_torchrun_shards_the_features_so_no_rank_waits(tmp_path, good_ckpt):
    """torchrun eval_linear.py --protocol augmented with a feature pass slower than --ddp-timeout: every rank extracts
    its shard at the same time, so the job completes (when rank 0 alone extracted, the other ranks waited in a
    collective past the timeout and the job died); its kNN equals the one-process kNN of the same checkpoint."""
    (tmp_path / "ckpt.pt").write_bytes(good_ckpt)
    (tmp_path / "slow.py").write_text(SHARD_WRAPPER)
    args = ["--ckpt", tmp_path / "ckpt.pt", "--device", "cpu", "--out", tmp_path / "r.json"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(tmp_path / "slow.py"), str(ROOT), *map(str, args), "--protocol", "augmented",
                        "--batch-size", "32", "--epochs", "1", "--ddp-timeout", "3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "RESULT" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    knn_ddp = json.load(open(tmp_path / "r.json"))["knn_top1"]
    run(args, script="eval_linear.py")
    assert json.load(open(tmp_path / "r.json"))["knn_top1"] == knn_ddp


# -----------------------------------------------------------------------------
# the README's DirectPred snippet, run with directpred.py alone


SNIPPET_CHECK = """
F_prev, f = dp.F_hat.clone().double(), torch.cat([online(x1), online(x2)]).detach().double()
dp.update(f.float())  # one more update: the EMA by hand, from the batch's f
assert torch.allclose(dp.F_hat.double(), 0.3 * F_prev + 0.7 * f.T @ f / len(f), atol=1e-5)
s, U = torch.linalg.eigh(F_prev)  # the Wp of the last step, by the rule, from the F_hat it was set from
s = s.clamp(min=0) / s.clamp(min=0).max()
assert torch.allclose(predictor.weight.double(), U @ torch.diag(s.sqrt() + 0.1) @ U.T, atol=1e-5)
print("snippet ok", dp.n_sets)
"""

def test_the_readme_directpred_snippet_runs_with_directpred_py_alone(tmp_path):
    """The README's "Use DirectPred in your code" block, run with directpred.py copied alone into an empty directory
    (it must not need the rest of the repo), then checked: its F_hat is the rho-EMA of E[f f^T] (one more update
    by hand) and its Wp is U diag(sqrt(s / max s) + eps) U^T of the F_hat it was set from (eigh by hand, float64)."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Use DirectPred in your code"):]
    code = block[block.index("```python\n") + len("```python\n"):block.index("\n```\n")]
    assert 10 <= len(code.splitlines()) <= 20  # short enough to read at a glance
    shutil.copy(ROOT / "directpred.py", tmp_path)
    (tmp_path / "snippet.py").write_text(code + "\n" + SNIPPET_CHECK)
    r = subprocess.run([sys.executable, "snippet.py"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0 and "snippet ok 20" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


# -----------------------------------------------------------------------------
# CUDA (skipped without a GPU; `python -m paper.gpu` runs them last, each with a timeout)


@CUDA
def test_cuda_training_paths_bf16_channels_last_compile(tmp_path):
    """On CUDA: bf16 autocast, channels_last, --compile 1, data resident on the GPU, batched augmentation, eigh on
    CUDA. Losses finite, F_hat fp32, and the saved weights (no wrapper prefixes) load into torchvision."""
    run(["--dataset", "fake", "--fake-size", "64", "--batch-size", "32", "--stem", "imagenet", "--compile", "1",
         "--max-steps", "4", "--log-every", "1", "--device", "cuda", "--out-dir", tmp_path])
    assert all(np.isfinite(r["loss"]) and r["mem_gb"] > 0 for r in log_lines(tmp_path))
    ckpt = load(tmp_path / "ckpt.pt")
    assert ckpt["directpred"]["F_hat"].dtype == torch.float32
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["online"])
    torchvision_resnet18(ckpt)


@CUDA
@pytest.mark.parametrize("deterministic", [1, 0])
def test_cuda_resume(tmp_path, deterministic):
    """On CUDA a resume is bit for bit with --deterministic 1; without it (cuDNN autotuning, TF32, non-deterministic
    weight-gradient kernels) it is close, and the test prints how close."""
    flags = TINY[:-2] + ["--device", "cuda", "--width", "16", "--ema", "0.99", "--epochs", "2",
                         "--deterministic", str(deterministic)]
    run(flags + ["--max-steps", "6", "--out-dir", tmp_path / "a"])
    run(flags + ["--max-steps", "3", "--out-dir", tmp_path / "b"])
    run(flags + ["--max-steps", "6", "--out-dir", tmp_path / "b", "--resume"])
    a, b = load(tmp_path / "a" / "ckpt.pt")["online"], load(tmp_path / "b" / "ckpt.pt")["online"]
    gap = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    print(f"--deterministic {deterministic}: largest weight difference after a resume {gap:.3g}")
    assert gap == 0 if deterministic else gap < 1e-2


@CUDA
def test_cuda_directpred_equals_the_cpu_float64_reference():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(256, 32, generator=g) @ torch.diag(torch.logspace(0, -2, 32))
    dp = DirectPred(32).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        dp.update(f.cuda())
    W = torch.zeros(32, 32, device="cuda")
    dp.set_predictor(W)
    F = f.double().T @ f.double() / 256
    s, U = torch.linalg.eigh(F)
    p = (s.clamp(min=0) / s.max()).sqrt() + 0.1
    torch.testing.assert_close(W.cpu().double(), U @ torch.diag(p) @ U.T, atol=1e-4, rtol=0)


@CUDA
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_cuda_ddp_nccl_ranks_hold_identical_weights(tmp_path):
    run(TINY[:-2] + ["--device", "cuda", "--fake-size", "256", "--ema", "0.99", "--max-steps", "3",
                     "--save-every-rank", "--out-dir", tmp_path], nproc=2)
    a, b = load(tmp_path / "ckpt_rank0.pt"), load(tmp_path / "ckpt_rank1.pt")
    assert all(torch.equal(a["online"][k], b["online"][k]) for k in a["online"])  # SyncBN: BN statistics too
