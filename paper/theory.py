"""
The linear-network theory of non-contrastive SSL, simulated in seconds on a CPU: the L2 loss of
Tian, Chen, Ganguli (ICML 2021, arXiv 2102.06810, Sec. 3-4, Appendix D) and the cosine (feature-normalised)
loss of Bao (arXiv 2309.16109).

    python -m paper.theory fig3           # (p, s) phase portraits, eta = 0 / 0.01 / 1 (Fig. 3), into out/theory
    python -m paper.theory fig4           # p-dot against p on the invariant parabola (Fig. 4)
    python -m paper.theory fig5           # eta and beta sweeps of the matrix model, symmetric Wp (Fig. 5)
    python -m paper.theory thm2           # ||W|| with / without stop-gradient, without predictor
    python -m paper.theory thm3           # ||[F, Wp]|| against Theorem 3's bound
    python -m paper.theory l2-vs-cosine   # the same model under both losses, and an eta sweep
    python -m paper.theory all            # every figure above (the repo's own copies: --out-dir paper/assets)
    python -m paper.theory simulate --predictor direct --loss cosine --out-dir out/toy   # one run -> out/toy/log.jsonl
    python -m paper.theory plot out/toy/log.jsonl         # Fig. 2 diagnostics of any train.py or theory.py log

The model (Tian et al., Lemma 1): x ~ N(0, X), two views x1, x2 = x + noise of covariance X' (isotropic:
X = I, X' = sigma2 I). Online f = W x (W: n2 x n1), prediction p = Wp f (Wp: n2 x n2), target z = Wa x (Wa: the
EMA of W, or W itself for SimSiam), behind a stop-gradient. Two ways to run it, which agree (test_smoke.py):
- flow: the exact expected gradient. L2 loss: autograd of the expected loss in closed form,
  E 1/2 ||A x1 - B x2||^2 = 1/2 tr(A S A^T) - tr(A X B^T) + 1/2 tr(B S B^T), A = Wp W, B = Wa, S = X + X',
  whose gradient is Lemma 1's right-hand side (lemma1_rhs). Cosine loss: no closed form; the gradient is averaged
  over a large sample fixed at the start (Monte-Carlo, --mc-samples).
- sgd: fresh mini-batches of samples through autograd, with train.py's own loss functions.
Both take Euler steps of size --lr: W <- W - lr (dL/dW + eta W), Wp <- Wp - lr (alpha_p dL/dWp + eta Wp) (Lemma 1's
weight decay eta on both, alpha_p on the predictor's gradient), Wa <- ema Wa + (1 - ema) W, where the paper's
continuous EMA rate beta is 1 - ema = lr * beta (lr 0.01, ema 0.996 -> beta 0.4). Time is t = step * lr.
Lemma 1's loss is one pairing (p1 against z2): --symmetric 1 sums both pairings as train.py does, which doubles
the loss gradient (the same flow at twice the speed, with eta halved).

The closed-form predictor is directpred.py's DirectPred, the same code that train.py runs.
Nothing here is needed for training; train.py does not import this file.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

from directpred import CLOSED_FORM, diagnostics, effective_rank
from plumbing import FRACTION, POSITIVE, ArgumentParser, RunError, at_least, range_error
from train import cosine_loss, l2_loss

# -----------------------------------------------------------------------------
# config: knobs named as train.py's where the idea is the same


def get_parser():
    P = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = P.add_argument
    a("what", choices=["simulate", "plot", "fig3", "fig4", "fig5", "thm2", "thm3", "l2-vs-cosine", "all"],
      help="a run of the matrix model, a plot of a log.jsonl, or one of the figures")
    a("log", nargs="?", default=None, help="plot: the log.jsonl of a train.py or theory.py run")
    # model and data
    a("--n1", type=int, default=20, valid=at_least(1), help="input dimension (x)")
    a("--n2", type=int, default=10, valid=at_least(1), help="output dimension (f = W x), the predictor is n2 x n2")
    a("--sigma2", type=float, default=0.5, valid=at_least(0), help="augmentation noise variance: X' = sigma2 I (Lemma 1)")
    a("--data-cov", default="", help="non-isotropic data: the n1 diagonal entries of X, comma-separated "
      "(Appendix D); default: X = I")
    a("--aug-cov", default="", help="non-isotropic augmentation: the n1 diagonal entries of X' (default sigma2 I)")
    a("--w-init", type=float, default=1.0, valid=POSITIVE, help="W(0) entries ~ N(0, w_init^2 / n1)")
    a("--wp-init", type=float, default=0.1, valid=at_least(0), help="Wp(0) entries ~ N(0, wp_init^2 / n2) (trained predictors)")
    # predictor, target, loss: as train.py
    a("--predictor", default="linear", choices=["none", "linear", "direct", "directcopy"],
      help="none: Wp = I; linear: trained; direct/directcopy: set in closed form (directpred.py)")
    a("--sym-wp", type=int, default=0, choices=[0, 1], help="Wp <- (Wp + Wp^T)/2 after every step (Table 3)")
    a("--pred-lr-ratio", type=float, default=1.0, valid=(POSITIVE[0], "> 0 (alpha_p)"),
      help="alpha_p: the predictor's relative learning rate (Fig. 6)")
    a("--rho", type=float, default=0.3, valid=FRACTION, help="DirectPred: EMA rate of F_hat")
    a("--eps", type=float, default=0.1, valid=at_least(0), help="DirectPred: added to p_j after max-normalisation")
    a("--freq", type=int, default=1, valid=at_least(1), help="DirectPred: set Wp every freq steps, gradient steps in between")
    a("--ema", type=float, default=0.0, valid=FRACTION,
      help="target EMA momentum gamma_a (0 = SimSiam: Wa = W); 1 - ema = lr * beta")
    a("--stop-grad", type=int, default=1, choices=[0, 1], help="0: gradient also flows through the target "
      "(needs --ema 0; Theorem 2)")
    a("--loss", default="l2", choices=["l2", "cosine"], help="l2: 1/2 ||p - z||^2 (Tian); cosine: 2 - 2 cos(p, z) (Bao)")
    a("--symmetric", type=int, default=0, choices=[0, 1], help="sum both pairings (train.py); 0: Lemma 1's one")
    # optimisation
    a("--mode", default="flow", choices=["flow", "sgd"], help="flow: expected gradient; sgd: sampled mini-batches")
    a("--lr", type=float, default=0.01, valid=POSITIVE, help="Euler step / SGD learning rate alpha (t = step * lr)")
    a("--wd", type=float, default=0.0, valid=(at_least(0)[0], ">= 0 (eta)"),
      help="weight decay eta (continuous time; the step applies lr * eta)")
    a("--steps", type=int, default=3000, valid=at_least(1))
    a("--batch-size", type=int, default=256, valid=at_least(2), help="sgd: samples per step")
    a("--mc-samples", type=int, default=8192, valid=at_least(2), help="flow with the cosine loss: the fixed Monte-Carlo sample")
    a("--seed", type=int, default=0, valid=at_least(0))
    a("--log-every", type=int, default=50, valid=at_least(1), help="steps between log records")
    a("--out-dir", default="out/theory", help="figures (PNG) and simulate's log.jsonl")
    return P


def config(**overrides):
    """The default config dict (every flag), with overrides: config(loss="cosine", wd=0.2)."""
    cfg = vars(get_parser().parse_args(["simulate"]))
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise KeyError(f"unknown knob(s): {sorted(unknown)}")
    return {**cfg, **overrides}


def config_error(cfg):
    """The first out-of-range knob or meaningless combination, as one line naming the flag, or None."""
    err = range_error(cfg, get_parser().valid)  # each flag's range, declared with the flag
    if err:
        return err
    for flag in ("data-cov", "aug-cov"):
        text = cfg[flag.replace("-", "_")]
        if text:
            try:
                v = [float(t) for t in text.split(",")]
            except ValueError:
                return f"--{flag} must be {cfg['n1']} comma-separated numbers, got {text!r}"
            if len(v) != cfg["n1"] or not all(math.isfinite(e) and e >= 0 for e in v):
                return f"--{flag} must be {cfg['n1']} finite entries >= 0 (a diagonal covariance is PSD), got {text!r}"
    if not cfg["stop_grad"] and cfg["ema"] > 0:
        return "--stop-grad 0 needs --ema 0 (an EMA target has no gradient to stop)"
    if cfg["predictor"] == "none" and cfg["sym_wp"]:
        return "--sym-wp needs a predictor (--predictor is none)"
    return None


class Diverged(RuntimeError):
    """A simulation reached NaN/inf: the message names the step and the knob most likely at fault."""


# -----------------------------------------------------------------------------
# the eigenmode dynamics (Sec. 4, Eqs. 11-13): W_a = tau W, X = I, X' = sigma2 I, Wp aligned with F = W W^T


def mode_rhs(p, s, tau=1.0, sigma2=0.0, eta=0.0, alpha_p=1.0):
    """One eigenmode j, with p = p_j (eigenvalue of Wp) and s = s_j (eigenvalue of F), L2 loss. Returns (dp/dt, ds/dt):
        dp/dt = alpha_p s [tau - (1 + sigma2) p] - eta p,   ds/dt = 2 p s [tau - (1 + sigma2) p] - 2 eta s."""
    g = tau - (1 + sigma2) * p
    return alpha_p * s * g - eta * p, 2 * p * s * g - 2 * eta * s


def integrate_modes(p0, s0, t_end, dt=0.01, tau0=1.0, beta=None, sigma2=0.0, eta=0.0, alpha_p=1.0, record_every=10):
    """RK4 integration of mode_rhs from arrays of starts p0, s0 (any shape). beta None: SimSiam, tau = tau0 fixed;
    beta > 0: BYOL, tau' = beta (1 - tau) - tau s'/(2 s) (Eq. 13) from tau0. Returns (t, p, s, tau), each
    (records, *shape), sampled every record_every steps and at the end."""
    p, s = np.asarray(p0, dtype=float), np.asarray(s0, dtype=float)
    tau = np.full_like(p, tau0)

    def rhs(p, s, tau):
        dp, ds = mode_rhs(p, s, tau, sigma2, eta, alpha_p)
        dtau = np.zeros_like(tau) if beta is None else beta * (1 - tau) - tau * ds / (2 * s)
        return np.stack([dp, ds, dtau])

    y, n = np.stack([p, s, tau]), int(round(t_end / dt))
    out, ts = [y], [0.0]
    for k in range(1, n + 1):
        k1 = rhs(*y)
        k2 = rhs(*(y + dt / 2 * k1))
        k3 = rhs(*(y + dt / 2 * k2))
        k4 = rhs(*(y + dt * k3))
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if k % record_every == 0 or k == n:
            out.append(y)
            ts.append(k * dt)
    if not np.isfinite(y).all():
        raise Diverged(f"the eigenmode ODE reached nan/inf by t = {t_end}: lower dt (now {dt})")
    out = np.stack(out)  # (records, 3, *shape)
    return np.array(ts), out[:, 0], out[:, 1], out[:, 2]


def invariant(p, s, alpha_p=1.0):
    """s - p^2 / alpha_p: equals c e^{-2 eta t} along any trajectory, c = s(0) - p(0)^2 / alpha_p (whatever tau does).
    (The paper prints c = p(0)^2/alpha_p - s(0); with its own Eqs. 11-12 the sign is this one.)"""
    return s - p ** 2 / alpha_p


def eta_critical(tau=1.0, sigma2=0.0):
    """Above this weight decay the only fixed point is collapse: eta_c = tau^2 / (4 (1 + sigma2))."""
    return tau ** 2 / (4 * (1 + sigma2))


def fixed_points(tau=1.0, sigma2=0.0, eta=0.0):
    """Non-zero fixed points on the parabola s = p^2 / alpha_p: (p_minus (unstable), p_plus (stable)) =
    [tau -+ sqrt(tau^2 - 4 eta (1 + sigma2))] / (2 (1 + sigma2)), or None when eta > eta_c. On the parabola the
    flow is dp/dt = -(1 + sigma2) p (p - p_minus) (p - p_plus) (independent of alpha_p)."""
    disc = tau ** 2 - 4 * eta * (1 + sigma2)
    if disc < 0:
        return None
    r = math.sqrt(disc)
    return (tau - r) / (2 * (1 + sigma2)), (tau + r) / (2 * (1 + sigma2))


def parabola_rhs(p, tau=1.0, sigma2=0.0, eta=0.0):
    """dp/dt on the invariant parabola s = p^2 / alpha_p (where every trajectory ends up when eta > 0): Fig. 4."""
    return -p * ((1 + sigma2) * p ** 2 - tau * p + eta)


# -----------------------------------------------------------------------------
# the matrix model (Lemma 1): W, Wp, Wa trained by expected-gradient flow or by SGD


def lemma1_rhs(W, Wp, Wa, X, Xp, eta=0.0, alpha_p=1.0):
    """Lemma 1's gradient flow of the L2 loss (one pairing, stop-gradient on Wa), in closed form. Returns
    (dW/dt, dWp/dt): dWp/dt = alpha_p (-Wp W (X + X') + Wa X) W^T - eta Wp, dW/dt = Wp^T (-Wp W (X + X') + Wa X) - eta W."""
    R = -Wp @ W @ (X + Xp) + Wa @ X
    return Wp.T @ R - eta * W, alpha_p * R @ W.T - eta * Wp


def covariances(cfg):
    """X (data) and X' (augmentation), float64 (n1, n1): the flags' diagonals, or I and sigma2 I."""
    n1 = cfg["n1"]
    X = torch.diag(torch.tensor([float(v) for v in cfg["data_cov"].split(",")], dtype=torch.float64)) \
        if cfg["data_cov"] else torch.eye(n1, dtype=torch.float64)
    Xp = torch.diag(torch.tensor([float(v) for v in cfg["aug_cov"].split(",")], dtype=torch.float64)) \
        if cfg["aug_cov"] else cfg["sigma2"] * torch.eye(n1, dtype=torch.float64)
    return X, Xp


def draw_views(n, X, Xp, gen):
    """n pairs of views (x1, x2), each (n, n1): x ~ N(0, X), x_i = x + e_i with e_i ~ N(0, X') (diagonal X, X')."""
    n1 = X.shape[0]
    sx, se = X.diagonal().sqrt(), Xp.diagonal().sqrt()
    x = torch.randn(n, n1, generator=gen, dtype=torch.float64) * sx
    return [x + torch.randn(n, n1, generator=gen, dtype=torch.float64) * se for _ in range(2)]


def expected_l2(A, B, X, S):
    """E 1/2 ||A x1 - B x2||^2 with E[x1 x1^T] = E[x2 x2^T] = S = X + X' and E[x1 x2^T] = X."""
    return 0.5 * torch.trace(A @ S @ A.T) - torch.trace(A @ X @ B.T) + 0.5 * torch.trace(B @ S @ B.T)


def sampled_loss(A, B, x1, x2, loss):
    """train.py's loss on samples: p = A x1 against z = B x2, rows (N, n2)."""
    return (cosine_loss if loss == "cosine" else l2_loss)(x1 @ A.T, x2 @ B.T)


def lambda_min_K(F, Wp, tau, sigma2, eta, alpha_p):
    """Theorem 3's K = (1 + sigma2) [(alpha_p/2) F + Wp^2 - tau/(1 + sigma2) Wp] + (3/2) eta I, symmetric part of Wp."""
    Wp = 0.5 * (Wp + Wp.T)
    K = (1 + sigma2) * (alpha_p / 2 * F + Wp @ Wp - tau / (1 + sigma2) * Wp) + 1.5 * eta * torch.eye(len(F), dtype=F.dtype)
    return torch.linalg.eigvalsh(K)[0].item()


def init_weights(cfg, gen):
    """The matrix model at t = 0: W random (scale --w-init), Wp random (--wp-init; I without a predictor;
    symmetrised with --sym-wp), DirectPred's state for the closed-form predictors, the EMA target a copy of W (None
    for SimSiam). Returns (W, Wp, Wa, dp, train_wp); W, and Wp where it is trained, require grad."""
    n1, n2, f64 = cfg["n1"], cfg["n2"], dict(dtype=torch.float64)
    W = (torch.randn(n2, n1, generator=gen, **f64) * cfg["w_init"] / math.sqrt(n1)).requires_grad_()
    Wp = torch.eye(n2, **f64) if cfg["predictor"] == "none" else \
        torch.randn(n2, n2, generator=gen, **f64) * cfg["wp_init"] / math.sqrt(n2)
    if cfg["sym_wp"]:
        Wp = 0.5 * (Wp + Wp.T)
    dp = None
    if cfg["predictor"] in ("direct", "directcopy"):
        dp = CLOSED_FORM[cfg["predictor"]](n2, cfg["rho"], cfg["eps"], cfg["freq"]).double()
    train_wp = cfg["predictor"] == "linear" or (dp is not None and cfg["freq"] > 1)  # freq 1: Wp is never learned
    Wp.requires_grad_(train_wp)
    Wa = W.detach().clone() if cfg["ema"] > 0 else None  # the EMA target starts as a copy (BYOL)
    return W, Wp, Wa, dp, train_wp


def model_loss(cfg, W, Wp, Wa, X, S, x1=None, x2=None):
    """The loss of the matrix model: the L2 loss in expectation (closed form) without views, else the sampled loss
    (L2 or cosine) of the views x1, x2; the target Wa (W for SimSiam) behind a stop-gradient unless --stop-grad 0."""
    B = W if Wa is None else Wa
    if cfg["stop_grad"]:
        B = B.detach()
    A = Wp @ W
    if x1 is None:
        L = expected_l2(A, B, X, S)
        return 2 * L if cfg["symmetric"] else L  # both pairings have the same expectation
    L = sampled_loss(A, B, x1, x2, cfg["loss"])
    return L + sampled_loss(A, B, x2, x1, cfg["loss"]) if cfg["symmetric"] else L


@torch.no_grad()
def model_record(cfg, step, loss, W, Wp, Wa, S, probe):
    """One record of a simulation: step, t, loss, ||W||_F^2, ||Wp||_F^2, tau_hat = <Wa, W> / ||W||^2,
    ||[F, Wp]||_F and lambda_min(K) (F = W W^T, the reduced dynamics'), and directpred.py's Fig. 2 diagnostics of the
    predictor input correlation (probe: a fixed sample of inputs, for z_std)."""
    F = W @ W.T  # the reduced dynamics' F (X = I)
    f = probe @ W.T  # (512, n2) online features of a fixed sample
    F_in = W @ S @ W.T  # E[f f^T] over both views: DirectPred's F
    tau_hat = 1.0 if Wa is None else (torch.sum(Wa * W) / torch.sum(W * W).clamp(min=1e-300)).item()
    return {"step": step, "t": step * cfg["lr"], "loss": loss, "W_norm2": torch.sum(W * W).item(),
            "Wp_norm2": torch.sum(Wp * Wp).item(), "tau_hat": tau_hat,
            "comm": torch.linalg.matrix_norm(F @ Wp - Wp @ F).item(),  # ||[F, Wp]||_F (Theorem 3)
            "lambda_min_K": lambda_min_K(F, Wp, tau_hat, cfg["sigma2"], cfg["wd"], cfg["pred_lr_ratio"]),
            **diagnostics((F_in, torch.zeros_like(F_in[0])), Wp if cfg["predictor"] != "none" else None, f)}


def simulate(cfg, log=None):
    """Run the matrix model for cfg["steps"] Euler / SGD steps. Returns (records, final) with final = {"W", "Wp",
    "Wa"} (float64 tensors; Wa None for SimSiam) and records (model_record) every --log-every steps (and at 0 and
    the end). log: an open file that gets one JSON line per record.
    Raises Diverged on NaN/inf, naming the step and the knob most likely at fault."""
    err = config_error(cfg)
    if err:
        raise ValueError(err)
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    lr, eta, ap = cfg["lr"], cfg["wd"], cfg["pred_lr_ratio"]
    X, Xp = covariances(cfg)
    S = X + Xp  # E[x1 x1^T]
    W, Wp, Wa, dp, train_wp = init_weights(cfg, gen)
    mc = draw_views(cfg["mc_samples"], X, Xp, gen) if cfg["loss"] == "cosine" and cfg["mode"] == "flow" else None
    probe = draw_views(512, X, Xp, torch.Generator().manual_seed(cfg["seed"] + 1))[0]  # z_std's fixed sample
    S_half = S.diagonal().sqrt()  # rows of sqrt(n1) (W S^1/2)^T have mean outer product W S W^T = E[f f^T]
    records = []

    def record(step, loss):
        rec = model_record(cfg, step, loss, W, Wp, Wa, S, probe)
        if log is not None:
            log.write(json.dumps(rec) + "\n")
        records.append(rec)

    for step in range(cfg["steps"]):
        x1, x2 = draw_views(cfg["batch_size"], X, Xp, gen) if cfg["mode"] == "sgd" else (mc or (None, None))
        loss = model_loss(cfg, W, Wp, Wa, X, S, x1, x2)
        if step == 0:
            record(0, loss.item())
        if dp is not None:  # before the gradient step, as in train.py: statistics of both views' f
            f = torch.cat([x1 @ W.T, x2 @ W.T]) if x1 is not None else math.sqrt(cfg["n1"]) * (W * S_half).T
            dp.update(f.detach())
        grads = torch.autograd.grad(loss, [W, Wp] if train_wp else [W])
        with torch.no_grad():
            W.sub_(lr * (grads[0] + eta * W))
            if train_wp:
                Wp.sub_(lr * (ap * grads[1] + eta * Wp))
            if cfg["sym_wp"]:
                Wp.copy_(0.5 * (Wp + Wp.T))
            if dp is not None:
                dp.set_predictor(Wp)
            if Wa is not None:  # 1 - ema = lr * beta
                Wa.lerp_(W, 1 - cfg["ema"])
        if not (torch.isfinite(loss) and torch.isfinite(W).all() and torch.isfinite(Wp).all()):
            knob = "--lr" if cfg["lr"] * max(1.0, ap) > 0.05 else "--pred-lr-ratio" if ap > 1 else "--w-init"
            raise Diverged(f"the simulation diverged (nan/inf) at step {step + 1}: lower {knob} "
                           f"(--lr {cfg['lr']}, --pred-lr-ratio {ap})")
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]:
            record(step + 1, model_loss(cfg, W, Wp, Wa, X, S, x1, x2).item())
    return records, {"W": W.detach(), "Wp": Wp.detach(), "Wa": Wa}


def surviving_modes(F_eig, rel=1e-2):
    """Modes of F whose eigenvalue is at least rel times the largest: n2 when none collapsed (scale-free)."""
    s = np.asarray(F_eig, dtype=float)
    return int((s >= rel * s.max()).sum()) if s.max() > 0 else 0


# -----------------------------------------------------------------------------
# figures: matplotlib is imported only here, where a figure is drawn


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RunError("figures need matplotlib: pip install matplotlib")
    return plt


def save(fig, out_dir, name):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    pyplot().close(fig)
    print(f"wrote {path}")
    return path


def fig3(out_dir, sigma2=0.0, alpha_p=1.0, tau=1.0):
    """(p, s) phase portraits at tau = 1, alpha_p = 1 for eta = 0, 0.01, 1: flow lines, the parabola
    s = p^2 / alpha_p, fixed points (filled = stable, open = unstable)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    pg, sg = np.meshgrid(np.linspace(-0.6, 1.6, 60), np.linspace(0, 2, 60))
    for ax, eta in zip(axes, (0.0, 0.01, 1.0)):
        dp, ds = mode_rhs(pg, sg, tau, sigma2, eta, alpha_p)
        ax.streamplot(pg, sg, dp, ds, density=1.1, color="0.6", linewidth=0.7)
        pp = np.linspace(-0.6, 1.6, 200)
        ax.plot(pp, pp ** 2 / alpha_p, "C0", label="s = p^2 / alpha_p (invariant, c = 0)")
        if eta == 0:  # every point with p = tau/(1+sigma2), and the axis s = 0, are fixed
            ax.axvline(tau / (1 + sigma2), color="C2", label="p = tau/(1+sigma2): fixed")
        else:
            ax.plot(0, 0, "o", color="C3", label="collapse (stable)")
            fp = fixed_points(tau, sigma2, eta)
            if fp:
                ax.plot(fp[0], fp[0] ** 2 / alpha_p, "o", mfc="white", color="C3", label="p- (unstable)")
                ax.plot(fp[1], fp[1] ** 2 / alpha_p, "o", color="C2", label="p+ (stable)")
        ax.set(xlim=(-0.6, 1.6), ylim=(0, 2), xlabel="p (eigenvalue of Wp)", ylabel="s (eigenvalue of F)",
               title=f"eta = {eta} (eta_c = {eta_critical(tau, sigma2):.3g})")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Eigenmode flow (Eqs. 11-12), tau = {tau}, alpha_p = {alpha_p}, sigma2 = {sigma2}")
    return save(fig, out_dir, "fig3_phase.png")


def fig4(out_dir, sigma2=0.0, tau=1.0):
    """dp/dt against p on the parabola for eta = 0, 0 < eta < eta_c, eta > eta_c, with its roots."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    p = np.linspace(-0.2, 1.2, 300)
    ec = eta_critical(tau, sigma2)
    for i, eta in enumerate((0.0, 0.5 * ec, 1.5 * ec)):
        ax.plot(p, parabola_rhs(p, tau, sigma2, eta), f"C{i}", label=f"eta = {eta:.3g}")
        roots = [0.0] + list(fixed_points(tau, sigma2, eta) or [])
        ax.plot(roots, [0] * len(roots), "o", color=f"C{i}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="p", ylabel="dp/dt on s = p^2/alpha_p", title=f"Roots 0, p-, p+; eta_c = {ec:.3g} (sigma2 = {sigma2})")
    ax.legend()
    return save(fig, out_dir, "fig4_pdot.png")


def fig5(out_dir):
    """The matrix model with symmetric Wp (L2, EMA, lr 0.01, beta 0.4, eta 0.04 = the paper's Fig. 5 setting),
    sweeping eta (beta 0.4) and beta (eta 0.04): lambda_min(K), eigenvalues of Wp and of F over time."""
    plt = pyplot()
    lr = 0.01
    base = dict(predictor="linear", sym_wp=1, steps=4000, log_every=40, lr=lr)
    sweeps = {"eta (beta = 0.4)": [dict(wd=w, ema=1 - lr * 0.4) for w in (0.0, 0.04, 0.1, 0.2)],
              "beta (eta = 0.04)": [dict(wd=0.04, ema=1 - lr * b) for b in (0.04, 0.4, 4.0)]}
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    for col, (name, runs) in enumerate(sweeps.items()):
        for i, o in enumerate(runs):
            recs = simulate(config(**base, **o))[0]
            t = [r["t"] for r in recs]
            label = f"eta = {o['wd']}" if col == 0 else f"beta = {(1 - o['ema']) / lr:.3g}"
            axes[0, col].plot(t, [r["lambda_min_K"] for r in recs], f"C{i}", label=label)
            for key, row in (("Wp_eig", 1), ("F_eig", 2)):
                e = np.array([r[key] for r in recs]).clip(1e-6 if key == "F_eig" else None)
                axes[row, col].plot(t, e, f"C{i}", lw=0.8, label=[label] + [None] * (e.shape[1] - 1))
        axes[0, col].axhline(0, color="k", lw=0.5)
        axes[0, col].set(title=f"sweep over {name}", ylabel="lambda_min(K) (Theorem 3)")
        axes[1, col].set(ylabel="eigenvalues of Wp")
        axes[2, col].set(ylabel="eigenvalues of F = E[f f^T]", xlabel="t = step x lr", yscale="log", ylim=(1e-4, None))
        axes[0, col].legend(fontsize=8)
    fig.suptitle(f"Matrix model, L2, symmetric Wp, EMA (sigma2 = 0.5, n1 = 20, n2 = 10; eta_c = {eta_critical(1, 0.5):.3g})")
    return save(fig, out_dir, "fig5_sweeps.png")


def thm2(out_dir):
    """||W||_F over time: stop-gradient with a trained linear predictor, without stop-gradient, without predictor."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, o) in enumerate([("stop-grad, linear Wp (SimSiam)", {}), ("no stop-grad", dict(stop_grad=0)),
                                    ("no predictor (Wp = I)", dict(predictor="none"))]):
        recs = simulate(config(wd=0.01, steps=3000, log_every=30, **o))[0]
        ax.plot([r["t"] for r in recs], [math.sqrt(r["W_norm2"]) for r in recs], f"C{i}", label=label)
    ax.set(xlabel="t", ylabel="||W||_F", yscale="log", title="Theorem 2: both controls collapse (L2, sigma2 = 0.5, eta = 0.01)")
    ax.legend()
    return save(fig, out_dir, "thm2_collapse.png")


def thm3_config():
    """A run where K stays positive definite: SimSiam, L2, symmetric Wp, alpha_p = 2, eta = 0.05 (< eta_c)."""
    return config(predictor="linear", sym_wp=1, pred_lr_ratio=2.0, wd=0.05, wp_init=1.0, n1=40, n2=8, lr=0.005,
                  steps=2000, log_every=20)


def thm3(out_dir):
    """||[F, Wp]||_F over time against the bound e^{-2 l0 t} ||[F(0), Wp(0)]||_F, l0 = min_t lambda_min(K)."""
    plt = pyplot()
    recs = simulate(thm3_config())[0]
    t = np.array([r["t"] for r in recs])
    comm = np.array([r["comm"] for r in recs])
    l0 = min(r["lambda_min_K"] for r in recs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(t, comm, label="||[F, Wp]||_F")
    axes[0].plot(t, comm[0] * np.exp(-2 * l0 * t), "--", label=f"bound, l0 = {l0:.3g}")
    axes[0].set(yscale="log", xlabel="t", title="Theorem 3: eigenspace alignment")
    axes[0].legend()
    axes[1].plot(t, [r["lambda_min_K"] for r in recs])
    axes[1].set(xlabel="t", ylabel="lambda_min(K)", title="K stays positive definite")
    return save(fig, out_dir, "thm3_alignment.png")


def l2_vs_cosine_config(loss, wd, **o):
    """The comparison's setting: SimSiam with a trained linear predictor, the same init and knobs for both losses."""
    return config(**{**dict(loss=loss, wd=wd, predictor="linear", lr=0.01, steps=3000, log_every=30, mc_samples=2048), **o})


def l2_vs_cosine(out_dir):
    """The same model under the L2 and the cosine loss: eigenvalues of F over time and ||W||_F^2 against
    ||W(0)||_F^2 e^{-2 eta t} at eta = 0.3 > eta_c (1/6), and a sweep over eta across eta_c of ||W||_F^2 at the end
    (L2's collapse: the norm) and of the effective rank of F / tr F (what the scale-blind cosine loss sees)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
    eta, ec = 0.3, eta_critical(1.0, 0.5)
    for col, loss in enumerate(("l2", "cosine")):
        recs = simulate(l2_vs_cosine_config(loss, eta))[0]
        t = np.array([r["t"] for r in recs])
        e = np.array([r["F_eig"] for r in recs])
        axes[0, col].plot(t, e / e.sum(1, keepdims=True), lw=0.8)
        axes[0, col].set(title=f"{loss}: eigenvalues of F / tr F, eta = {eta} > eta_c = {ec:.3g}", xlabel="t")
        axes[1, 0].plot(t, [r["W_norm2"] for r in recs], f"C{col}", label=f"{loss}: ||W||_F^2")
    axes[1, 0].plot(t, recs[0]["W_norm2"] * np.exp(-2 * eta * t), "k--", lw=0.8, label="||W(0)||^2 e^{-2 eta t}")
    axes[1, 0].set(yscale="log", xlabel="t", title="norm: the cosine loss is scale-blind, weight decay alone shrinks W")
    axes[1, 0].legend(fontsize=8)
    etas = [0.0, 0.1, 0.15, 0.2, 0.3, 0.5]
    for i, loss in enumerate(("l2", "cosine")):
        ends = [simulate(l2_vs_cosine_config(loss, w, log_every=3000, mc_samples=1024))[0] for w in etas]
        axes[1, 1].plot(etas, [r[-1]["W_norm2"] / r[0]["W_norm2"] for r in ends], f"C{i}o-", label=loss)
        axes[1, 2].plot(etas, [effective_rank(r[-1]["F_eig"]) for r in ends], f"C{i}o-", label=loss)
    for ax in axes[1, 1:]:
        ax.axvline(ec, color="k", ls="--", lw=0.8, label="eta_c (L2)")
        ax.set_xlabel("eta (weight decay)")
        ax.legend()
    axes[1, 1].set(yscale="log", ylabel="||W||_F^2 / ||W(0)||_F^2 at t = 30", title="norm at the end")
    axes[1, 2].set(ylabel="effective rank of F / tr F at t = 30", title="spread of the modes (scale-free)")
    axes[0, 2].axis("off")
    fig.suptitle("L2 (Tian et al.) vs cosine (Bao) loss: linear SimSiam, sigma2 = 0.5, n1 = 20, n2 = 10")
    return save(fig, out_dir, "l2_vs_cosine.png")


def plot_log(path, out=None, title=None):
    """The paper's Fig. 2 panels from a log.jsonl of train.py or theory.py: eigenvalues of F_hat and of Wp over
    steps (log scale), alignment cos(u_j, Wp u_j), asymmetry ||Wp - Wp^T|| / ||Wp||, the effective rank of F_hat
    and z_std (the two collapse signals)."""
    plt = pyplot()
    try:
        recs = [r for r in (json.loads(line) for line in open(path)) if "F_eig" in r]
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"plot: cannot read {path} as a log.jsonl ({e})")
    if not recs:
        raise RunError(f"plot: {path} has no record with the Fig. 2 diagnostics (F_eig)")
    step = [r["step"] for r in recs]
    fig, axes = plt.subplots(1, 6, figsize=(26, 3.8))
    axes[0].plot(step, np.clip(np.array([r["F_eig"] for r in recs]), 1e-12, None), lw=0.7)
    axes[0].set(yscale="log", title="eigenvalues of F_hat")
    with_wp = [r for r in recs if "Wp_eig" in r]
    if with_wp:
        ws = [r["step"] for r in with_wp]
        axes[1].plot(ws, np.array([r["Wp_eig"] for r in with_wp]), lw=0.7)
        align = np.array([r["align"] for r in with_wp])
        k = min(8, align.shape[1])
        for j in range(k):
            axes[2].plot(ws, align[:, j], lw=0.8, label=f"u_{j + 1}")
        axes[2].legend(fontsize=6, ncol=2)
        axes[3].plot(ws, [r["asym"] for r in with_wp])
    axes[1].set(title="eigenvalues of Wp (real part)")
    axes[2].set(title="alignment cos(u_j, Wp u_j), top eigenvectors", ylim=(-1.05, 1.05))
    axes[3].set(title="asymmetry ||Wp - Wp^T|| / ||Wp||")
    axes[4].plot(step, [effective_rank(r["F_eig"]) for r in recs])
    axes[4].set(title=f"effective rank of F_hat (of {len(recs[0]['F_eig'])}; 1: collapsed)", yscale="log")
    axes[5].plot(step, [r["z_std"] for r in recs])
    axes[5].set(title="z_std (1: spread, 0: collapsed)", ylim=(0, 1.1))
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(title or path)  # the log it was drawn from, unless the caller names the run
    out = out or os.path.join(os.path.dirname(os.path.abspath(path)), "fig2_diagnostics.png")
    return save(fig, os.path.dirname(out), os.path.basename(out))


FIGURES = {"fig3": fig3, "fig4": fig4, "fig5": fig5, "thm2": thm2, "thm3": thm3, "l2-vs-cosine": l2_vs_cosine}

# -----------------------------------------------------------------------------
def main():
    torch.set_num_threads(1)  # matrices of 20 x 10: extra threads only add synchronisation (and fight other jobs)
    cfg = vars(get_parser().parse_args())
    err = config_error(cfg)
    if err:
        raise RunError(f"{err}")
    if cfg["what"] == "plot":
        if not cfg["log"]:
            raise RunError("plot needs a log.jsonl: python -m paper.theory plot out/run/log.jsonl")
        plot_log(cfg["log"])
        return
    pyplot()  # fail on a missing matplotlib before any work
    try:
        if cfg["what"] == "simulate":
            os.makedirs(cfg["out_dir"], exist_ok=True)
            path = os.path.join(cfg["out_dir"], "log.jsonl")
            with open(path, "w") as log:
                recs = simulate(cfg, log)[0]
            r = recs[-1]
            print(f"wrote {path}: t = {r['t']:g}, loss {r['loss']:.4g}, ||W||^2 {r['W_norm2']:.4g}, "
                  f"eigenvalues of F {np.round(r['F_eig'], 4).tolist()}")
            plot_log(path)
        else:
            for name, fn in FIGURES.items():
                if cfg["what"] in (name, "all"):
                    fn(cfg["out_dir"])
    except Diverged as e:
        raise RunError(f"{e}")


if __name__ == "__main__":
    try:
        main()
    except RunError as e:  # a bad flag, path or file: one line on stderr, no traceback
        sys.exit(f"error: {e}")
